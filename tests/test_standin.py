"""The real-checkout path on a stand-in laid out as Qwen2.5-VL-3B-Instruct: tokenizer, chat template, processor,
generation config, stop ids, and sampler/scorer agreement under the checkpoint's generation config."""

import json

import numpy as np
import pytest
import torch
from transformers import GenerationConfig

from skinflow.data.collate import VisionLanguageCollator
from skinflow.data.formats import Target
from skinflow.models.backbone import BackboneSpec, LoRASpec, build_backbone
from skinflow.models.standin import ADDED_TOKENS, FIRST_ADDED_ID, GENERATION_CONFIG, VOCAB_SIZE
from skinflow.rl.grpo import token_logprobs


def standin_spec(folder, **kwargs) -> BackboneSpec:
    return BackboneSpec(preset="qwen2.5-vl-3b", pretrained_path=str(folder), **kwargs)


def test_the_folder_is_laid_out_as_the_public_checkout(qwen_standin):
    names = {p.name for p in qwen_standin.iterdir()}
    assert {"config.json", "generation_config.json", "preprocessor_config.json", "chat_template.json", "tokenizer.json",
            "tokenizer_config.json", "vocab.json", "merges.txt", "model.safetensors.index.json"} <= names
    shards = sorted(n for n in names if n.startswith("model-0000"))
    assert len(shards) >= 2 and all(n.endswith(".safetensors") for n in shards)
    config = json.loads((qwen_standin / "config.json").read_text())
    assert config["model_type"] == "qwen2_5_vl" and config["vocab_size"] == VOCAB_SIZE and config["tie_word_embeddings"]
    assert config["rope_scaling"]["mrope_section"] == [16, 24, 24]
    assert config["hidden_size"] // config["num_attention_heads"] == 128  # the public head_dim
    assert json.loads((qwen_standin / "generation_config.json").read_text()) == GENERATION_CONFIG
    assert len(json.loads((qwen_standin / "vocab.json").read_text())) == FIRST_ADDED_ID


def test_real_tokenizer_chat_template_and_processor_load_from_the_folder(qwen_standin):
    model, processor = build_backbone(standin_spec(qwen_standin))
    tok = processor.tokenizer
    assert len(tok) == FIRST_ADDED_ID + len(ADDED_TOKENS) and tok.padding_side == "left"
    assert tok("Hello, world")["input_ids"] == [9707, 11, 1879]  # Qwen2's BPE
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>", "<|image_pad|>"]) == [151643, 151645, 151655]
    assert processor.image_token_id == model.config.image_token_id == 151655
    prompt = processor.chat_prompt("Describe the lesion.", "You are a dermatologist.")
    assert prompt == ("<|im_start|>system\nYou are a dermatologist.<|im_end|>\n<|im_start|>user\n"
                      "<|vision_start|><|image_pad|><|vision_end|>Describe the lesion.<|im_end|>\n<|im_start|>assistant\n")
    # the folder's min/max pixels: a 140 x 196 image is 10 x 14 patches, 35 merged tokens
    vision = processor.images([np.zeros((140, 196, 3), dtype=np.uint8)])
    assert vision["image_grid_thw"].tolist() == [[1, 10, 14]]
    expanded = processor.expand_image_tokens(prompt, vision["image_grid_thw"][0])
    assert tok(expanded)["input_ids"].count(151655) == 35
    assert processor.image_processor.size["shortest_edge"] == 3136
    # the checkpoint's generation config is kept but never applied; generation stops on both of its EOS ids
    assert model.checkpoint_generation_config.repetition_penalty == 1.05
    assert model.generation_config.repetition_penalty is None and model.generation_config.top_k is None
    assert model.generation_config.eos_token_id == [151645, 151643]


def mixed_batch(processor, sides=((140, 140), (112, 168), (168, 112))):
    """Images of different sizes under different prompts: left-padded prompts of different lengths."""
    rng = np.random.default_rng(0)
    caption = {"colour": "red", "location": "elbow", "shape": "round"}
    items = [{"image": rng.integers(0, 256, (*side, 3), dtype=np.uint8),
              "target": Target("psoriasis", "inflammatory", "non-neoplastic", 3, f"img{i}", caption)}
             for i, side in enumerate(sides)]
    collate = VisionLanguageCollator(processor, prompt="mixed", seed=1)
    return collate(items)


def sampled_and_scored(stage, batch, seed=0):
    """(sampler log-probs, scorer log-probs, mask) of one rollout: the sampler's from ``generate``'s processed
    scores with the rollout's own arguments, the scorer's from the training forward."""
    inputs = stage.model_inputs(batch["prompt_ids"], batch["prompt_mask"], batch["pixel_values"], batch["image_grid_thw"])
    torch.manual_seed(seed)
    rollout = stage.rollout(batch)
    stage.model.eval()
    torch.manual_seed(seed)
    out = stage.model.generate(**inputs, **stage.sampling_kwargs(), output_scores=True, return_dict_in_generate=True)
    stage.model.train()
    T = rollout.completion_ids.shape[1]
    assert torch.equal(out.sequences[:, -T:][rollout.completion_mask], rollout.completion_ids[rollout.completion_mask])
    sampler = token_logprobs(torch.stack(out.scores, 1)[:, :T], rollout.completion_ids)
    with torch.no_grad():
        scorer = token_logprobs(stage.completion_logits(stage.model, rollout), rollout.completion_ids,
                                stage.hparams.temperature)
    return sampler, scorer, rollout.completion_mask


@pytest.mark.parametrize("temperature", [0.7, 1.3])
def test_sampler_and_scorer_agree_under_the_checkpoints_generation_config(qwen_standin, temperature):
    """Trained LoRA adapters with dropout 0.05, the public generation config (repetition penalty 1.05, top-k 1),
    prompts of different lengths, left-padded: the sampler's and the scorer's log-probabilities agree to 1e-4."""
    from skinflow.stages.grpo import GRPOStage

    torch.manual_seed(0)
    stage = GRPOStage(standin_spec(qwen_standin, lora=LoRASpec(r=4, dropout=0.05)), group_size=3, max_new_tokens=12,
                      temperature=temperature)
    with torch.no_grad():
        for p in stage.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))  # trained adapters (LoRA B starts at zero)
        stage.model.get_base_model().model.language_model.norm.weight.mul_(30.0)  # peaked, as a trained model is
    batch = mixed_batch(stage.processor)
    assert len(set(batch["prompt_mask"].sum(1).tolist())) == 3  # three prompt lengths, left-padded
    stage.train()
    sampler, scorer, mask = sampled_and_scored(stage, batch)
    assert mask.sum() > 10
    gap = (sampler[mask] - scorer[mask]).abs().max()
    assert gap < 1e-4
    # the same check fails with the checkpoint's generation config merged in, as before the fix ...
    base = stage.model.get_base_model()
    base.generation_config = base.checkpoint_generation_config
    sampler, scorer, mask = sampled_and_scored(stage, batch)
    penalised = (sampler[mask] - scorer[mask]).abs().max()
    # ... and with LoRA dropout left on while scoring
    base.generation_config = GenerationConfig(**{k: base.checkpoint_generation_config.to_dict()[k]
                                                 for k in ("eos_token_id", "pad_token_id", "bos_token_id")})
    for layer in stage.model.modules():
        if isinstance(layer, torch.nn.Dropout):
            layer.p = 0.05
    sampler, scorer, mask = sampled_and_scored(stage, batch)
    dropped = (sampler[mask] - scorer[mask]).abs().max()
    print(f"T={temperature}: max |dlogp| fixed {gap:.2e}, with the checkpoint's generation config {penalised:.3f}, "
          f"with LoRA dropout {dropped:.3f}")
    assert penalised > 0.05 and dropped > 0.05
