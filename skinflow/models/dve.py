"""Dynamic Vision Encoder: FDLinear layers in the MLPs of chosen Qwen2.5-VL vision blocks.

SkinFlow replaces the MLP linears of blocks 8/16/24/32 (1-based) of Qwen2.5-VL-7B's vision tower, which are
exactly its full-attention blocks (``vision_config.fullatt_block_indexes``). ``blocks: full_attention`` picks
those for any size; a list of 0-based indices picks others. The vision blocks' MLPs receive no sequence
boundaries, so a forward pre-hook on the vision tower turns ``grid_thw`` into per-image ``cu_seqlens`` and
hands them to every FDLinear before the blocks run. (Window attention permutes tokens only within an image,
so each image's tokens stay one contiguous segment and its token mean is unchanged.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from skinflow.errors import ConfigError
from skinflow.models.fdlinear import FDLinear, dve_head_parameters
from skinflow.models.unwrap import bare_model

MLP_LINEARS = ("gate_proj", "up_proj", "down_proj")


@dataclass
class DVESpec:
    """Dynamic Vision Encoder settings.

    Args:
        enabled: replace the chosen vision MLP linears by FDLinear.
        blocks: ``full_attention`` (the model's full-attention blocks) or a list of 0-based block indices.
        linears: which of gate_proj / up_proj / down_proj to replace.
        num_groups: K, frequency groups per layer (the paper reports 64 and d/2; 64 here).
        reduction: head width as a fraction of the layer's input width.
        min_channels: lower bound of the head width.
        trainable: train the DVE heads (also under LoRA, which freezes everything else).
        train_spectrum: train the stored spectrum (the converted base weight); ``None`` follows the base model:
            trained under full fine-tuning, frozen under LoRA or ``freeze_vision``.
    """

    enabled: bool = False
    blocks: Literal["full_attention"] | list[int] = "full_attention"
    linears: list[str] = field(default_factory=lambda: list(MLP_LINEARS))
    num_groups: int = 64
    reduction: float = 1 / 16
    min_channels: int = 16
    trainable: bool = True
    train_spectrum: bool | None = None


def vision_tower(model: nn.Module) -> nn.Module:
    """The Qwen2.5-VL vision tower inside a (possibly PEFT-wrapped) model."""
    base = bare_model(model)
    return base.model.visual


def dve_block_indices(spec: DVESpec, vision_config) -> list[int]:
    if spec.blocks == "full_attention":
        return list(vision_config.fullatt_block_indexes)
    if isinstance(spec.blocks, str):
        raise ConfigError(f"dve.blocks must be 'full_attention' or a list of block indices, got {spec.blocks!r}")
    bad = [i for i in spec.blocks if not 0 <= i < vision_config.depth]
    if bad:
        raise ConfigError(f"dve.blocks {bad} outside the vision tower's {vision_config.depth} blocks")
    return list(spec.blocks)


def tower_grid_thw(args: tuple, kwargs: dict) -> torch.Tensor:
    """The ``grid_thw`` a forward pre-hook on the vision tower sees (``visual(hidden_states, grid_thw)``)."""
    return kwargs.get("grid_thw", args[1] if len(args) > 1 else None)


def _per_image_boundaries(module: nn.Module, args: tuple, kwargs: dict) -> None:
    grid_thw = tower_grid_thw(args, kwargs)
    counts = grid_thw.prod(dim=-1)
    cu = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    for layer in module.modules():
        if isinstance(layer, FDLinear):
            layer.cu_seqlens = cu


def attach_dve(model: nn.Module, spec: DVESpec) -> list[str]:
    """Replace the chosen linears by FDLinear (in place); returns the replaced modules' names."""
    if not spec.enabled:
        return []
    bad = sorted(set(spec.linears) - set(MLP_LINEARS))
    if bad:
        raise ConfigError(f"dve.linears {bad} are not vision MLP linears {MLP_LINEARS}")
    visual = vision_tower(model)
    replaced = []
    for i in dve_block_indices(spec, visual.config):
        mlp = visual.blocks[i].mlp
        for name in spec.linears:
            setattr(mlp, name, FDLinear.from_linear(getattr(mlp, name), spec.num_groups, spec.reduction, spec.min_channels))
            replaced.append(f"visual.blocks.{i}.mlp.{name}")
    visual.register_forward_pre_hook(_per_image_boundaries, with_kwargs=True)
    return replaced


def set_dve_trainable(model: nn.Module, spec: DVESpec, base_trainable: bool) -> None:
    """Heads trainable per ``spec.trainable``; spectrum and bias per ``spec.train_spectrum`` (default: like the
    base model's vision weights). Call after LoRA wrapping, which freezes everything it did not add."""
    spectrum = base_trainable if spec.train_spectrum is None else spec.train_spectrum
    for layer in model.modules():
        if isinstance(layer, FDLinear):
            for name, param in layer.named_parameters():
                param.requires_grad_(spectrum if name in ("spectrum", "bias") else spec.trainable)


def dve_parameter_count(spec: DVESpec, vision_config) -> int:
    """Parameters the DVE adds to a vision tower, from shapes alone (no model needed)."""
    hidden, inter = vision_config.hidden_size, vision_config.intermediate_size
    shapes = {"gate_proj": (hidden, inter), "up_proj": (hidden, inter), "down_proj": (inter, hidden)}
    per_block = sum(dve_head_parameters(*shapes[name], spec.num_groups, spec.reduction, spec.min_channels) for name in spec.linears)
    return per_block * len(dve_block_indices(spec, vision_config))
