"""A stand-in for a Hugging Face download of ``Qwen/Qwen2.5-VL-3B-Instruct``, small enough to train on a CPU.

``build_standin(folder)`` writes a folder laid out as the real checkout, file for file:

- ``config.json`` in the public file's (transformers 4.x, flat) format: model type, the special-token ids, the
  vision config with ``fullatt_block_indexes``, window size, spatial merge, patch and temporal patch sizes,
  ``rope_scaling`` with the public ``mrope_section`` [16, 24, 24] (so heads keep the public head_dim 128),
  ``vocab_size`` 151,936 and tied embeddings (as in the 3B; the 7B unties them and pads to 152,064), at a
  depth and width a 2-core CPU trains (``StandinSize``);
- ``generation_config.json`` and ``preprocessor_config.json`` with the public values (``GENERATION_CONFIG``,
  ``PREPROCESSOR_CONFIG``);
- the real tokenizer: Qwen's 151,643 BPE ranks (``qwen.tiktoken``, shipped in the ``dashscope`` package,
  Apache-2.0) converted by transformers' ``TikTokenConverter`` with Qwen2's pre-tokenizer, the 22 official added
  tokens from id 151643 on, and the official chat template (``tokenizer.json``, ``vocab.json``, ``merges.txt``,
  ``tokenizer_config.json``, ``chat_template.json``);
- random weights, ``save_pretrained`` as sharded safetensors with an index.

The vocabulary source is a test extra (``pip install -e ".[dev]"`` brings ``dashscope`` and ``tiktoken``),
never a runtime dependency: nothing in the kit imports this module. Run it by hand with
``python -m skinflow.models.standin OUT_DIR``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

# generation_config.json of Qwen/Qwen2.5-VL-{3B,7B}-Instruct (near-greedy sampling and a repetition penalty)
GENERATION_CONFIG = {
    "bos_token_id": 151643, "pad_token_id": 151643, "do_sample": True, "eos_token_id": [151645, 151643],
    "repetition_penalty": 1.05, "temperature": 0.1, "top_p": 0.001, "top_k": 1, "transformers_version": "4.37.0",
}
# preprocessor_config.json of the same checkouts
PREPROCESSOR_CONFIG = {
    "min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
    "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2_5_VLProcessor",
}
# (token, special) from id 151643 on, as in the checkouts' tokenizer_config.json "added_tokens_decoder"
ADDED_TOKENS = [
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True), ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True), ("<|box_start|>", True), ("<|box_end|>", True), ("<|quad_start|>", True),
    ("<|quad_end|>", True), ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False), ("</tool_call>", False),
    ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False), ("<|fim_pad|>", False),
    ("<|repo_name|>", False), ("<|file_sep|>", False),
]
FIRST_ADDED_ID = 151643
VOCAB_SIZE = 151936  # the 3B's embedding rows: 151,665 tokens padded
# the chat template of Qwen2-VL / Qwen2.5-VL Instruct (chat_template.json)
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in "
    "content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] "
    "== 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content "
    "%}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}"
)


@dataclass
class StandinSize:
    """Depth and width of the stand-in (defaults: about 40 M parameters, 39 M of them the tied embedding).

    Text heads keep the public head_dim 128 (``hidden / heads``), so the public ``mrope_section`` applies."""

    hidden: int = 256
    layers: int = 2
    heads: int = 2
    kv_heads: int = 1
    vision_hidden: int = 128
    vision_depth: int = 4
    vision_heads: int = 2


def qwen_tiktoken_path() -> Path:
    """``qwen.tiktoken`` inside the installed ``dashscope`` package (a test extra)."""
    try:
        import dashscope
    except ImportError as err:
        raise ImportError("the Qwen2.5-VL stand-in needs the dashscope package for Qwen's BPE ranks (a test extra: "
                          'pip install -e ".[dev]")') from err
    path = Path(dashscope.__file__).parent / "resources" / "qwen.tiktoken"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: this dashscope version does not ship Qwen's BPE ranks")
    return path


def config_json(size: StandinSize) -> dict:
    """config.json in the public 3B file's layout and fields, at ``size``."""
    return {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"], "attention_dropout": 0.0,
        "bos_token_id": 151643, "eos_token_id": 151645, "vision_start_token_id": 151652, "vision_end_token_id": 151653,
        "vision_token_id": 151654, "image_token_id": 151655, "video_token_id": 151656, "hidden_act": "silu",
        "hidden_size": size.hidden, "initializer_range": 0.02, "intermediate_size": 2 * size.hidden,
        "max_position_embeddings": 128000, "max_window_layers": 70, "model_type": "qwen2_5_vl",
        "num_attention_heads": size.heads, "num_hidden_layers": size.layers, "num_key_value_heads": size.kv_heads,
        "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": True,
        "torch_dtype": "bfloat16", "transformers_version": "4.41.2", "use_cache": True, "use_sliding_window": False,
        "vision_config": {
            "depth": size.vision_depth, "hidden_act": "silu", "hidden_size": size.vision_hidden,
            "intermediate_size": 2 * size.vision_hidden, "num_heads": size.vision_heads, "in_chans": 3,
            "out_hidden_size": size.hidden, "patch_size": 14, "spatial_merge_size": 2, "spatial_patch_size": 14,
            "window_size": 112, "tokens_per_second": 2, "temporal_patch_size": 2,
            # the public files name every 8th block of 32; the same spacing at this depth
            "fullatt_block_indexes": [i for i in range(size.vision_depth) if i % 2 == 1],
        },
        "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
        "vocab_size": VOCAB_SIZE,
    }


def qwen_tokenizer(tiktoken_file: Path):
    """Qwen2's fast tokenizer from the BPE ranks: transformers' tiktoken conversion, Qwen2's pre-tokenizer and NFC
    normaliser (``Qwen2Tokenizer``), the official added tokens from id 151643 and the chat template."""
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer
    from transformers.convert_slow_tokenizer import TikTokenConverter
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    vocab, merges = TikTokenConverter(str(tiktoken_file), pattern=PRETOKENIZE_REGEX).extract_vocab_merges_from_model(
        str(tiktoken_file))
    if len(vocab) != FIRST_ADDED_ID:
        raise ValueError(f"{tiktoken_file} holds {len(vocab)} ranks, not Qwen's {FIRST_ADDED_ID}")
    # the added tokens enter the vocabulary at their official ids before the tokenizer registers its own
    vocab.update({token: FIRST_ADDED_ID + i for i, (token, _) in enumerate(ADDED_TOKENS)})
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, eos_token="<|im_end|>",
                               pad_token="<|endoftext|>", model_max_length=131072, errors="replace")
    tokenizer.add_tokens([AddedToken(t, special=s, normalized=False) for t, s in ADDED_TOKENS])
    tokenizer.chat_template = CHAT_TEMPLATE
    ids = tokenizer.convert_tokens_to_ids([t for t, _ in ADDED_TOKENS])
    if ids != list(range(FIRST_ADDED_ID, FIRST_ADDED_ID + len(ADDED_TOKENS))):
        raise AssertionError(f"added tokens landed at ids {ids[:3]}..., not from {FIRST_ADDED_ID}")
    return tokenizer


def write_vocab_and_merges(tokenizer, folder: Path) -> None:
    """``vocab.json`` (the 151,643 ranks) and ``merges.txt``, the slow-tokenizer files a download also holds."""
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    vocab = {t: i for t, i in model["vocab"].items() if i < FIRST_ADDED_ID}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")


def build_standin(folder: str | Path, size: StandinSize | None = None, seed: int = 0,
                  max_shard_size: str = "60MB") -> Path:
    """Write the stand-in checkout into ``folder`` (created); returns it."""
    import torch
    from transformers import AutoConfig, Qwen2_5_VLForConditionalGeneration

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    size = size or StandinSize()
    tokenizer = qwen_tokenizer(qwen_tiktoken_path())
    tokenizer.save_pretrained(folder)
    (folder / "chat_template.jinja").unlink(missing_ok=True)  # the checkout carries it in the files below
    write_vocab_and_merges(tokenizer, folder)
    (folder / "config.json").write_text(json.dumps(config_json(size), indent=2))
    config = AutoConfig.from_pretrained(folder)  # the legacy flat layout, read as a real download is read
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch.float32)
    model.save_pretrained(folder, max_shard_size=max_shard_size)
    # save_pretrained rewrites config.json in its own layout and writes a generation config from the model
    # config: put the checkout's own files back, exactly as downloaded
    (folder / "config.json").write_text(json.dumps(config_json(size), indent=2))
    (folder / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG, indent=2))
    (folder / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR_CONFIG, indent=2))
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}, indent=2))
    config_file = folder / "tokenizer_config.json"
    tokenizer_config = json.loads(config_file.read_text())
    tokenizer_config["chat_template"] = CHAT_TEMPLATE  # the public tokenizer_config.json carries it too
    config_file.write_text(json.dumps(tokenizer_config, indent=2))
    return folder


def mixed_prompt_batch(processor, sides=((140, 140), (112, 168), (168, 112)), seed: int = 0) -> dict:
    """A collated batch of random images of different sizes under the warmup, caption and diagnosis prompts, so
    prompts of different lengths are left-padded (the case where positions and padding can go wrong)."""
    import numpy as np

    from skinflow.data.collate import VisionLanguageCollator
    from skinflow.data.formats import Target

    rng = np.random.default_rng(seed)
    caption = {"colour": "red", "location": "elbow", "shape": "round"}
    items = [{"image": rng.integers(0, 256, (*side, 3), dtype=np.uint8),
              "target": Target("psoriasis", "inflammatory", "non-neoplastic", 3, f"img{i}", caption)}
             for i, side in enumerate(sides)]
    return VisionLanguageCollator(processor, prompt="mixed", seed=1)(items)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m skinflow.models.standin OUT_DIR")
    print(build_standin(sys.argv[1]))
