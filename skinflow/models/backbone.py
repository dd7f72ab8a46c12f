"""Backbone builder: one function returns ``(model, processor)`` for a preset, a local folder or a hub id.

Presets:

- ``tiny``: a random-init Qwen2.5-VL of about a million parameters, built from a config, with the shipped
  tokenizer (``skinflow/assets/tiny_tokenizer``). Needs nothing from the network. With ``pretrained_path``
  it loads a tiny model saved earlier instead.
- ``qwen2.5-vl-3b`` / ``qwen2.5-vl-7b``: the public architecture configs of Qwen2.5-VL-3B/7B-Instruct. Weights
  come from ``pretrained_path`` (a local folder or a hub id). Random weights only with ``random_init: true``,
  for benchmarks and shape checks.

Plain ``nn.Module`` code: no Lightning import here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Literal, get_args
from pathlib import Path

import torch
from transformers import AutoTokenizer, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from skinflow.errors import ConfigError
from skinflow.models.dve import DVESpec, attach_dve, set_dve_trainable
from skinflow.models.generation import neutral_generation_config
from skinflow.models.processor import VisionLanguageProcessor
from skinflow.models.stem import attach_conv_stem
from skinflow.models.tiny_tokenizer import ASSET_DIR as TINY_TOKENIZER_DIR

# LoRA goes on the language model's attention and MLP projections, never on the vision tower.
LANGUAGE_LINEARS = r".*language_model\.layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|o_proj)|mlp\.(gate_proj|up_proj|down_proj))"

_QWEN_VISION = dict(
    depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, patch_size=14, spatial_merge_size=2,
    temporal_patch_size=2, window_size=112, fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2,
)
_QWEN_IDS = dict(image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653)
_QWEN_ROPE = {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]}

# Public architecture configs (config.json of Qwen/Qwen2.5-VL-{3B,7B}-Instruct), so shapes need no download.
PRESET_CONFIGS: dict[str, dict] = {
    "qwen2.5-vl-7b": dict(
        vision_config=dict(_QWEN_VISION, out_hidden_size=3584),
        text_config=dict(
            vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
            num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=128000, rms_norm_eps=1e-6,
            rope_parameters=_QWEN_ROPE, bos_token_id=151643, eos_token_id=151645, pad_token_id=151643,
        ),
        tie_word_embeddings=False, **_QWEN_IDS,
    ),
    "qwen2.5-vl-3b": dict(
        vision_config=dict(_QWEN_VISION, out_hidden_size=2048),
        text_config=dict(
            vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
            num_attention_heads=16, num_key_value_heads=2, max_position_embeddings=128000, rms_norm_eps=1e-6,
            rope_parameters=_QWEN_ROPE, bos_token_id=151643, eos_token_id=151645, pad_token_id=151643,
            tie_word_embeddings=True,
        ),
        tie_word_embeddings=True, **_QWEN_IDS,
    ),
}
Preset = Literal["tiny", "qwen2.5-vl-7b", "qwen2.5-vl-3b"]  # ``backbone.preset`` choices (``--help`` lists them)
DType = Literal["float32", "bfloat16", "float16"]
PRESETS = get_args(Preset)
assert PRESETS == ("tiny", *PRESET_CONFIGS), "Preset lists every preset config"


@dataclass
class TinySize:
    """Shape of the tiny preset (defaults: 1.7 M parameters).

    ``rope_theta`` is 20, not the usual 10,000: Qwen2.5-VL's 3-D rotary positions give the image's height and width
    axes the lowest frequencies of each head (``mrope_section`` [t, h, w] takes them in that order), and the tiny
    preset's merged grids are 4-5 tokens a side. At 10,000 the width axis then turned by at most 0.013 rad across
    the whole image (height: 0.4 rad), so the model could hardly tell where in the image a token sits: the
    standalone synthetic warmup scored test top-1 0.484 with 3-D positions against 0.632 with 1-D ones. At 20 the
    width axis turns up to 0.6 rad and the same warmup scores 0.632 with 3-D positions. (Pretrained Qwen2.5-VL
    keeps its own theta; its grids are 16+ tokens a side and its heads learned them.)

    ``patch_size`` (14, Qwen2.5-VL's) sets the tower's patches and the image processor's grid alike: at 7 a 112-px
    image is 16 x 16 patches, 8 x 8 merged tokens in the prompt instead of 4 x 4 (about twice the step time).

    ``stem`` ``conv`` replaces the tower's per-patch linear embedding by overlapping convolutions over the whole
    image (``skinflow.models.stem.ConvStem``, channel ``stem_widths``), pooled to the same patch grid: the tiny
    preset's real-photograph recipe. ``patch`` (the default) is Qwen2.5-VL's own.
    """

    text_hidden: int = 128
    text_layers: int = 2
    text_heads: int = 4
    vision_hidden: int = 128
    vision_depth: int = 4
    vision_heads: int = 4
    rope_theta: float = 20.0
    patch_size: int = 14
    stem: Literal["patch", "conv"] = "patch"
    stem_widths: list[int] = field(default_factory=lambda: [64, 128, 256])


@dataclass
class LoRASpec:
    """LoRA adapters (PEFT) on the language model's linear layers."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: str = LANGUAGE_LINEARS


@dataclass
class BackboneSpec:
    """Which vision-language backbone to build and what of it trains.

    Args:
        preset: ``tiny``, ``qwen2.5-vl-3b`` or ``qwen2.5-vl-7b``.
        pretrained_path: local folder or hub id holding weights (and tokenizer/processor files).
        random_init: build a non-tiny preset with random weights (benchmarks, shape checks).
        dtype: parameter dtype, ``float32``, ``bfloat16`` or ``float16``.
        lora: LoRA adapters on the language layers; ``None`` trains the full model.
        freeze_vision: freeze the vision tower (LoRA runs always freeze the base model).
        gradient_checkpointing: recompute activations in backward.
        tiny: shape of the tiny preset.
        seed: seed of the random initialisation.
        dve: Dynamic Vision Encoder (FDLinear in the vision MLPs); off by default.
    """

    preset: Preset = "tiny"
    pretrained_path: str | None = None
    random_init: bool = False
    dtype: DType = "float32"
    lora: LoRASpec | None = None
    freeze_vision: bool = False
    gradient_checkpointing: bool = False
    tiny: TinySize = field(default_factory=TinySize)
    seed: int = 0
    dve: DVESpec = field(default_factory=DVESpec)


def spec_from_dict(values: dict) -> BackboneSpec:
    """The inverse of ``dataclasses.asdict(spec)`` (a checkpoint's ``backbone_identity["spec"]``).

    >>> spec_from_dict(asdict(BackboneSpec(lora=LoRASpec(r=4)))).lora.r
    4
    """
    values = dict(values)
    lora = values.pop("lora", None)
    return BackboneSpec(**values | {"lora": LoRASpec(**lora) if lora is not None else None,
                                    "tiny": TinySize(**values.get("tiny", {})), "dve": DVESpec(**values.get("dve", {}))})


def tiny_config(size: TinySize, tokenizer) -> Qwen2_5_VLConfig:
    half = size.text_hidden // size.text_heads // 2  # mrope_section (t, h, w) must sum to head_dim / 2
    rest = half - half // 4
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=size.text_hidden, intermediate_size=2 * size.text_hidden,
            num_hidden_layers=size.text_layers, num_attention_heads=size.text_heads,
            num_key_value_heads=max(1, size.text_heads // 2), max_position_embeddings=1024,
            rope_parameters={"rope_type": "default", "rope_theta": size.rope_theta,
                             "mrope_section": [half // 4, rest // 2, rest - rest // 2]},
            bos_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(
            depth=size.vision_depth, hidden_size=size.vision_hidden, intermediate_size=2 * size.vision_hidden,
            num_heads=size.vision_heads, out_hidden_size=size.text_hidden, window_size=56, patch_size=size.patch_size,
            fullatt_block_indexes=[i for i in range(size.vision_depth) if i % 2 == 1],
        ),
        tie_word_embeddings=False,
    )
    return align_token_ids(config, tokenizer)


def mrope_axis_span(config: Qwen2_5_VLConfig, side: int) -> dict[str, float]:
    """The largest rotation (radians) the height and width axes of Qwen2.5-VL's 3-D rotary positions make across an
    image ``side`` merged tokens wide: the axis's highest frequency times (side - 1). ``mrope_section`` [t, h, w]
    hands each axis a contiguous block of a head's frequency pairs, lowest frequencies last, so a small theta or a
    narrow grid can leave the width axis nearly blind to where a token sits (see ``TinySize``).

    >>> span = mrope_axis_span(tiny_config(TinySize(rope_theta=10000.0), AutoTokenizer.from_pretrained(TINY_TOKENIZER_DIR)), 5)
    >>> round(span["h"], 3), round(span["w"], 3)
    (0.4, 0.013)
    """
    text = config.text_config
    rope = text.rope_parameters
    t, h, _ = rope["mrope_section"]
    pairs = text.hidden_size // text.num_attention_heads // 2
    frequency = lambda i: rope["rope_theta"] ** (-2 * i / (2 * pairs))  # noqa: E731  pair i of a head
    return {"h": frequency(t) * (side - 1), "w": frequency(t + h) * (side - 1)}


def align_token_ids(config: Qwen2_5_VLConfig, tokenizer) -> Qwen2_5_VLConfig:
    """Point the config's special-token ids at ``tokenizer``'s (random-init models built beside any tokenizer)."""
    ids = tokenizer.convert_tokens_to_ids
    config.image_token_id, config.video_token_id = ids("<|image_pad|>"), ids("<|video_pad|>")
    config.vision_start_token_id, config.vision_end_token_id = ids("<|vision_start|>"), ids("<|vision_end|>")
    text = config.text_config
    text.bos_token_id, text.eos_token_id, text.pad_token_id = ids("<|endoftext|>"), ids("<|im_end|>"), tokenizer.pad_token_id
    return config


def preset_config(spec: BackboneSpec, tokenizer=None) -> Qwen2_5_VLConfig:
    """The architecture config of ``spec`` without touching weights or the network."""
    if spec.preset == "tiny":
        return tiny_config(spec.tiny, tokenizer or load_tokenizer(spec))
    if spec.preset not in PRESET_CONFIGS:
        raise ConfigError(f"unknown backbone preset {spec.preset!r}; choose one of {', '.join(PRESETS)}")
    config = Qwen2_5_VLConfig(**json.loads(json.dumps(PRESET_CONFIGS[spec.preset])))
    return align_token_ids(config, tokenizer) if tokenizer is not None else config


def load_tokenizer(spec: BackboneSpec):
    if spec.pretrained_path is None:
        return AutoTokenizer.from_pretrained(TINY_TOKENIZER_DIR)
    return AutoTokenizer.from_pretrained(spec.pretrained_path)


def build_processor(spec: BackboneSpec) -> VisionLanguageProcessor:
    """Tokenizer plus PIL image processor (from ``pretrained_path`` when it has one)."""
    tokenizer = load_tokenizer(spec)
    tokenizer.padding_side = "left"
    path = spec.pretrained_path
    # a hub id, or a local folder that has an image-processor file; else the default Qwen2-VL settings
    if path is not None and (not Path(path).exists() or (Path(path) / "preprocessor_config.json").exists()):
        return VisionLanguageProcessor(tokenizer, Qwen2VLImageProcessorPil.from_pretrained(path))
    if spec.preset == "tiny" and path is None:  # the tiny tower's patch size decides the image processor's grid
        return VisionLanguageProcessor(tokenizer, Qwen2VLImageProcessorPil(patch_size=spec.tiny.patch_size))
    return VisionLanguageProcessor(tokenizer, Qwen2VLImageProcessorPil())


def build_model(spec: BackboneSpec, tokenizer=None, device: str | torch.device | None = None) -> torch.nn.Module:
    """The model alone. ``device="meta"`` builds shapes only (no memory, no weights, no download). With a
    ``tokenizer`` the checkpoint's generation config is neutralised (kept as ``model.checkpoint_generation_config``)
    and generation stops on the tokenizer's and the checkpoint's EOS ids."""
    dtype = getattr(torch, spec.dtype)
    if spec.tiny.stem == "conv" and (spec.preset != "tiny" or spec.pretrained_path is not None):
        raise ConfigError("backbone.tiny.stem: conv is for the randomly initialised tiny preset; a pretrained or "
                          f"non-tiny backbone (preset {spec.preset!r}, pretrained_path {spec.pretrained_path!r}) "
                          "keeps its own patch embedding")
    meta = device is not None and torch.device(device).type == "meta"
    if spec.pretrained_path is not None and not meta:
        try:
            model = Qwen2_5_VLForConditionalGeneration.from_pretrained(spec.pretrained_path, dtype=dtype)
        except OSError as err:
            raise OSError(
                f"could not load backbone weights from pretrained_path={spec.pretrained_path!r} (a local folder or "
                f"hub id; hub ids need network access or a filled HF cache): {err}"
            ) from err
    elif spec.preset != "tiny" and not (spec.random_init or meta):
        raise ConfigError(
            f"backbone preset {spec.preset!r} needs weights: set pretrained_path (local folder or hub id), "
            "or random_init: true for a randomly initialised model"
        )
    else:
        config = preset_config(spec, tokenizer)
        torch.manual_seed(spec.seed)
        # no device given: the ambient one (``with torch.device("cuda")`` builds a 7B shape on the GPU directly)
        with contextlib.nullcontext() if device is None else torch.device(device):
            model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype)
            if spec.tiny.stem == "conv":  # tiny only: refused above otherwise
                attach_conv_stem(model.model.visual, spec.tiny.stem_widths)
    if spec.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if tokenizer is not None:  # generate applies only what the kit passes (``skinflow.models.generation``)
        neutral_generation_config(model, tokenizer)
    return model


def apply_finetuning(model: torch.nn.Module, spec: BackboneSpec) -> torch.nn.Module:
    """LoRA (base frozen, adapters trainable) or full training, with the vision tower frozen if asked; DVE
    parameters then follow ``spec.dve``."""
    if spec.lora is not None:
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=spec.lora.r, lora_alpha=spec.lora.alpha, lora_dropout=spec.lora.dropout,
            target_modules=spec.lora.target_modules,
        )
        model = get_peft_model(model, config)
    elif spec.freeze_vision:
        for param in model.model.visual.parameters():
            param.requires_grad_(False)
    if spec.dve.enabled:
        set_dve_trainable(model, spec.dve, base_trainable=spec.lora is None and not spec.freeze_vision)
    return model


def check_pretrained_path(path: str) -> None:
    """Refuse, in one line, a ``pretrained_path`` that cannot load: a folder that does not exist, one missing its
    config, tokenizer or a weight shard (named), or a hub id while the hub is offline with nothing cached. Checked
    before anything loads (transformers' own errors run to a hundred lines and more)."""
    folder = Path(path).expanduser()
    looks_local = folder.is_absolute() or path.startswith((".", "~")) or path.count("/") != 1
    if not folder.exists():
        if looks_local:
            raise ConfigError(f"pretrained_path={path!r}: no such folder")
        if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
            from huggingface_hub import try_to_load_from_cache

            if not isinstance(try_to_load_from_cache(path, "config.json"), str):
                raise ConfigError(f"pretrained_path={path!r} is a hub id, the hub is offline (HF_HUB_OFFLINE=1) and it is "
                                  "not in the local cache: download it where there is network, or give a local folder")
        return
    if not folder.is_dir():
        raise ConfigError(f"pretrained_path={path!r} is a file, not a checkpoint folder")
    needed = ["config.json"]
    if not (folder / "tokenizer.json").is_file() and not (folder / "vocab.json").is_file():
        needed.append("tokenizer.json")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        needed += sorted(set(json.loads(index.read_text()).get("weight_map", {}).values()))
    elif not any((folder / name).is_file() for name in ("model.safetensors", "pytorch_model.bin")):
        needed.append("model.safetensors")
    missing = [name for name in needed if not (folder / name).is_file()]
    if missing:
        raise ConfigError(f"pretrained_path={path!r} is not a complete checkpoint folder: {missing[0]} is missing"
                          + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))


def build_backbone(spec: BackboneSpec) -> tuple[torch.nn.Module, VisionLanguageProcessor]:
    """``(model, processor)`` for ``spec``, with LoRA/freezing applied."""
    if spec.pretrained_path is not None:
        check_pretrained_path(spec.pretrained_path)
    processor = build_processor(spec)
    model = build_model(spec, processor.tokenizer)
    attach_dve(model, spec.dve)
    return apply_finetuning(model, spec), processor


def backbone_identity(spec: BackboneSpec, model: torch.nn.Module) -> dict:
    """What a checkpoint records about the backbone it was trained on (preset, path, config hash)."""
    config = getattr(model, "config", None)
    text = config.to_json_string(use_diff=False) if config is not None else ""
    architecture = {k: v for k, v in json.loads(text or "{}").items() if k not in ("transformers_version", "_name_or_path", "dtype", "torch_dtype")}
    architecture["dve"] = asdict(spec.dve) if spec.dve.enabled else None  # FDLinear changes the architecture
    if spec.tiny.stem == "conv":  # so does the convolutional stem (absent: the stock one)
        architecture["stem"] = {"kind": "conv", "widths": list(spec.tiny.stem_widths)}
    cleaned = json.dumps(architecture, sort_keys=True)
    return {
        "preset": spec.preset, "pretrained_path": spec.pretrained_path,
        "config_sha256": hashlib.sha256(cleaned.encode()).hexdigest(), "spec": asdict(spec),
    }


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
