"""The real-checkout path on a stand-in laid out as Qwen2.5-VL-3B-Instruct: tokenizer, chat template, processor,
generation config, stop ids, and sampler/scorer agreement under the checkpoint's generation config."""

import json

import numpy as np
import pytest
import torch

from skinflow.models.backbone import BackboneSpec, LoRASpec, build_backbone
from skinflow.models.dve import DVESpec
from skinflow.models.standin import ADDED_TOKENS, FIRST_ADDED_ID, GENERATION_CONFIG, VOCAB_SIZE, mixed_prompt_batch


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


def test_sampler_and_scorer_agree_under_the_checkpoints_generation_config(qwen_standin):
    """Trained LoRA adapters with dropout 0.05, the public generation config (repetition penalty 1.05, top-k 1),
    prompts of different lengths, left-padded, temperatures 0.7 and 1.3: the sampler's and the scorer's
    log-probabilities agree to 1e-4. With the checkpoint's generation config merged in, or LoRA dropout left on
    while scoring (the kit before this check), they do not."""
    from skinflow.stages.grpo import GRPOStage

    torch.manual_seed(0)
    stage = GRPOStage(standin_spec(qwen_standin, lora=LoRASpec(r=4, dropout=0.05)), group_size=3, max_new_tokens=10)
    base = stage.model.get_base_model()
    with torch.no_grad():
        for p in stage.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))  # trained adapters (LoRA B starts at zero)
        base.model.language_model.norm.weight.mul_(30.0)  # a peaked next-token distribution, as a trained model's
    batch = mixed_prompt_batch(stage.processor)
    assert len(set(batch["prompt_mask"].sum(1).tolist())) == 3  # three prompt lengths, left-padded
    stage.train()
    for temperature in (0.7, 1.3):
        stage.hparams.temperature = temperature
        sampler, scorer, mask = stage.sampler_and_scorer_logprobs(batch)
        assert mask.sum() > 10
        assert (sampler[mask] - scorer[mask]).abs().max() < 1e-4, temperature
    neutral = base.generation_config
    base.generation_config = base.checkpoint_generation_config  # what generate merged in before the fix
    sampler, scorer, mask = stage.sampler_and_scorer_logprobs(batch)
    assert (sampler[mask] - scorer[mask]).abs().max() > 0.05
    base.generation_config = neutral
    for layer in stage.model.modules():
        if isinstance(layer, torch.nn.Dropout):
            layer.p = 0.05  # LoRA dropout as configured, active in the train-mode scoring pass
    sampler, scorer, mask = stage.sampler_and_scorer_logprobs(batch)
    assert (sampler[mask] - scorer[mask]).abs().max() > 0.05


def standin_args(folder) -> list[str]:
    """CLI overrides that put any tiny experiment config on the stand-in checkout, with LoRA and the DVE."""
    return [
        "--model.init_args.backbone.preset=qwen2.5-vl-3b", f"--model.init_args.backbone.pretrained_path={folder}",
        '--model.init_args.backbone.lora={"r": 4, "alpha": 8, "dropout": 0.05}',
        "--model.init_args.backbone.dve.enabled=true", "--model.init_args.backbone.dve.num_groups=8",
        "--data.init_args.batch_size=2", "--data.init_args.eval_batch_size=4", "--data.init_args.image_size=112",
    ]


def test_warmup_stage1_stage2_pipeline_on_the_standin_with_lora_and_dve(qwen_standin, tmp_path, monkeypatch):
    """``python -m skinflow pipeline`` with a pipeline file that names the folder: every stage loads the checkout,
    LoRA adapters and DVE heads train and hand over, each stage is a child MLflow run, Stage I's KL starts at 0."""
    import yaml
    from mlflow import MlflowClient

    from skinflow.pipeline import pipeline_command
    from tests.conftest import REPO
    from tests.test_pipeline import COMMON, FAST

    stages = [("warmup", "warmup_tiny_synthetic"), ("stage1", "stage1_tiny_synthetic"), ("stage2", "stage2_tiny_synthetic")]
    pipeline = {"experiment_name": "standin", "run_name": "qwen2.5-vl-3b-standin", "stages": [
        {"name": name, "config": str(REPO / f"configs/experiment/{config}.yaml"), "test": name == "stage2",
         "args": [*COMMON, *FAST[name], *standin_args(qwen_standin), "--model.init_args.max_new_tokens=6",
                  *(["--model.init_args.group_size=2", "--model.init_args.lr=1e-3"] if name != "warmup" else
                    ["--model.init_args.lr=1e-2"])]}
        for name, config in stages]}
    path = tmp_path / "standin.yaml"
    path.write_text(yaml.safe_dump(pipeline))
    monkeypatch.chdir(tmp_path)
    result = pipeline_command(["--config", str(path)])
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    assert list(result["children"]) == ["warmup", "stage1", "stage2"]
    for name, run_id in result["children"].items():
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and run.data.params["backbone/pretrained_path"] == str(qwen_standin), name
    stage1 = client.get_run(result["children"]["stage1"]).data.metrics
    kl = [m.value for m in client.get_metric_history(result["children"]["stage1"], "rl/kl")]
    assert kl[0] < 1e-7  # the reference is the warmup's policy, adapters and DVE heads included
    assert "val/reward/caption_fields" in stage1
    assert "test/graded_top1" in client.get_run(result["children"]["stage2"]).data.metrics
    # the handed-over checkpoints hold adapters and DVE heads only, and they moved in the warmup
    checkpoint = torch.load(result["checkpoints"]["warmup"], map_location="cpu", weights_only=False)
    names = set(checkpoint["state_dict"])
    assert names and all("lora_" in n or "visual" in n for n in names)
    assert any("lora_B" in n and checkpoint["state_dict"][n].abs().sum() > 0 for n in names)
    assert checkpoint["backbone_identity"]["pretrained_path"] == str(qwen_standin)


def stage_checkpoint(path, spec, seed=0):
    """A stage checkpoint (trainable weights + identity, as the pipeline hands over) with trained-looking weights;
    returns (path, stage)."""
    from skinflow.stages.warmup import WarmupStage

    torch.manual_seed(seed)
    stage = WarmupStage(spec)
    with torch.no_grad():
        for p in stage.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))
    checkpoint = {}
    stage.on_save_checkpoint(checkpoint)  # trainable weights + identity, as the pipeline hands over
    torch.save(checkpoint, path)
    return path, stage


def forward_logits(model, batch):
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], pixel_values=batch["pixel_values"],
                     image_grid_thw=batch["image_grid_thw"],
                     mm_token_type_ids=(batch["input_ids"] == 151655).int()).logits


def test_export_round_trip_adapter_merged_and_dve(qwen_standin, tmp_path, capsys):
    """``export`` on the stand-in: the PEFT adapter on the stock base and the merged folder give the stage's logits
    (LoRA only); with the DVE, ``load_exported`` gives the stage's logits and the stock load is the static base."""
    from peft import PeftModel
    from transformers import Qwen2_5_VLForConditionalGeneration

    from skinflow.cli import main
    from skinflow.export import load_exported

    ckpt, stage = stage_checkpoint(tmp_path / "lora.ckpt", standin_spec(qwen_standin, lora=LoRASpec(r=4, dropout=0.05)))
    stage.eval()
    batch = mixed_prompt_batch(stage.processor)
    ours = forward_logits(stage.model, batch)
    main(["export", "--ckpt", str(ckpt), "--out", str(tmp_path / "out"), "--merge"])
    assert {"adapter", "model"} <= {p.name for p in (tmp_path / "out").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (tmp_path / "out/adapter").iterdir()}
    base = Qwen2_5_VLForConditionalGeneration.from_pretrained(qwen_standin, dtype=torch.float32)
    adapter = PeftModel.from_pretrained(base, tmp_path / "out/adapter").eval()
    merged = Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path / "out/model", dtype=torch.float32).eval()
    adapter_gap = (forward_logits(adapter, batch) - ours).abs().max()
    merged_gap = (forward_logits(merged, batch) - ours).abs().max()
    assert json.loads((tmp_path / "out/model/generation_config.json").read_text())["repetition_penalty"] == 1.05
    # with the DVE: its heads are exported beside the model and only skinflow's loader applies them
    ckpt, stage = stage_checkpoint(tmp_path / "dve.ckpt", standin_spec(
        qwen_standin, lora=LoRASpec(r=4), dve=DVESpec(enabled=True, num_groups=8)))
    stage.eval()
    ours_dve = forward_logits(stage.model, batch)
    main(["export", "--ckpt", str(ckpt), "--out", str(tmp_path / "dve"), "--merge"])
    dve_gap = (forward_logits(load_exported(tmp_path / "dve").eval(), batch) - ours_dve).abs().max()
    stock = Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path / "dve/model", dtype=torch.float32).eval()
    with capsys.disabled():
        print(f"export round trip max |dlogit|: adapter {adapter_gap:.1e}, merged {merged_gap:.1e}, DVE {dve_gap:.1e}")
    assert adapter_gap < 1e-4 and merged_gap < 1e-4 and dve_gap < 1e-4
    assert (forward_logits(stock, batch) - ours_dve).abs().max() > 1e-3  # without the per-image gains it differs
    assert "dve" in capsys.readouterr().out


def test_export_names_a_bad_checkpoint(tmp_path):
    from skinflow.cli import main

    bad = tmp_path / "broken.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit, match=r"broken\.ckpt could not be read"):
        main(["export", "--ckpt", str(bad), "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match=r"missing\.ckpt not found"):
        main(["export", "--ckpt", str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "o")])


def test_generation_stops_on_every_eos_id_of_the_checkout(qwen_standin):
    """The checkout stops on <|im_end|> and <|endoftext|>: a model that wants <|endoftext|> (151643) ends after one
    token, where the tokenizer's EOS alone would run to ``max_new_tokens``."""
    from skinflow.rl.rollout import completion_mask
    from skinflow.stages.grpo import GRPOStage

    stage = GRPOStage(standin_spec(qwen_standin), group_size=2, max_new_tokens=5)
    batch = mixed_prompt_batch(stage.processor, sides=((112, 112), (112, 140)))
    inputs = stage.model_inputs(batch["prompt_ids"], batch["prompt_mask"], batch["pixel_values"], batch["image_grid_thw"])
    wants_endoftext = {"sequence_bias": {(151643,): 100.0}}
    out = stage.model.generate(**inputs, **stage.sampling().generate_kwargs(), **wants_endoftext)
    tokens = out[:, batch["prompt_ids"].shape[1]:]
    mask, clipped = completion_mask(tokens, stage.stop_token_ids)
    assert tokens.shape[1] == 1 and (tokens[:, 0] == 151643).all() and mask.sum(1).tolist() == [1] * 4
    kwargs = {**stage.sampling().generate_kwargs(), "eos_token_id": stage.processor.tokenizer.eos_token_id}
    assert stage.model.generate(**inputs, **kwargs, **wants_endoftext).shape[1] == batch["prompt_ids"].shape[1] + 5
