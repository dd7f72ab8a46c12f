"""A convolutional stem for the tiny preset's vision tower (``TinySize.stem: conv``).

Qwen2.5-VL embeds each 14-px patch on its own with one linear map (a Conv3d whose kernel is the patch). Trained from
random init on 1,041 photographs that tower stays at about two thirds of a small CNN (``docs/results.md``, "Real
photographs"); the hybrid ViT of Dosovitskiy et al. (2021) and the convolutional stems of Xiao et al. (2021) replace
the patchify step by a few overlapping convolutions over the whole image, whose feature map then enters the
transformer as its tokens. ``ConvStem`` does that inside the stock tower: it stands in for ``visual.patch_embed``,
rebuilds each image from the processor's patch rows, runs the convolutions, pools the map to the patch grid and
hands back one row per patch in the processor's order, so positions, windows, the merger and everything after are
Qwen2.5-VL's own.

The stem normalises with BatchNorm, as the CNN baseline does: with GroupNorm the same stem learned far more slowly
(training loss after 4 epochs of the stem and a linear head: 3.02 against 2.83; LayerNorm per position or no norm:
2.98). Batch statistics bring two duties, both kept here: a checkpoint carries the running statistics beside the
trainable weights (``skinflow.stages.base.trainable_state_keys``), and a stem whose statistics are frozen
(``freeze_batch_statistics``: the RL stages, which score in train mode what they sampled in eval mode; or a stem
that does not train) normalises with its running statistics in train mode too.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from skinflow.models.dve import tower_grid_thw


def rows_to_images(rows: torch.Tensor, grid_thw: torch.Tensor, channels: int, temporal: int, patch: int,
                   merge: int) -> list[torch.Tensor]:
    """The processor's patch rows back to images: one (frames, channels, H, W) tensor per grid entry, the temporal
    patch averaged (an image's two temporal copies are equal). Rows run over (t, h / merge, w / merge, merge, merge);
    each row is (channel, temporal patch, patch, patch)."""
    out, offset = [], 0
    for t, h, w in grid_thw.tolist():
        block = rows[offset:offset + t * h * w].reshape(t, h // merge, w // merge, merge, merge, channels, temporal,
                                                           patch, patch).mean(6)
        offset += t * h * w
        # (t, bh, bw, mh, mw, c, py, px) -> (t, c, bh, mh, py, bw, mw, px)
        out.append(block.permute(0, 5, 1, 3, 6, 2, 4, 7).reshape(t, channels, h * patch, w * patch))
    if offset != rows.shape[0]:
        raise ValueError(f"grid_thw covers {offset} patch rows, pixel_values has {rows.shape[0]}")
    return out


def grid_to_rows(features: torch.Tensor, merge: int) -> torch.Tensor:
    """A (frames, dim, h, w) map, one cell per patch, to (frames * h * w, dim) rows in the processor's patch order."""
    t, dim, h, w = features.shape
    cells = features.reshape(t, dim, h // merge, merge, w // merge, merge)
    return cells.permute(0, 2, 4, 3, 5, 1).reshape(t * h * w, dim)


class ConvStem(nn.Module):
    """Overlapping convolutions over the whole image in place of the per-patch linear embedding.

    A 5 x 5 stride-2 convolution, then one 3 x 3 conv-BatchNorm-ReLU stage per width, max-pooling after a stage while
    the stride stays within the patch (two pools at patch 14: stride 8), an average pool to the patch grid and a
    1 x 1 projection to the tower's width. ``grid_thw`` is set by a forward pre-hook on the tower
    (``attach_conv_stem``) before each call, as ``patch_embed`` is called with the rows alone.
    """

    def __init__(self, patch_size: int, temporal_patch_size: int, merge_size: int, embed_dim: int,
                 widths: tuple[int, ...] = (64, 128, 256), in_channels: int = 3):
        super().__init__()
        self.patch_size, self.temporal_patch_size, self.merge_size = patch_size, temporal_patch_size, merge_size
        self.in_channels, self.embed_dim = in_channels, embed_dim
        layers: list[nn.Module] = [nn.Conv2d(in_channels, widths[0] // 2, 5, stride=2, padding=2, bias=False),
                                   nn.BatchNorm2d(widths[0] // 2), nn.ReLU(inplace=True)]
        channels, stride = widths[0] // 2, 2
        for width in widths:
            layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True)]
            if stride * 2 <= patch_size:
                layers.append(nn.MaxPool2d(2))
                stride *= 2
            channels = width
        self.stride = stride
        self.features = nn.Sequential(*layers)
        self.proj = nn.Conv2d(channels, embed_dim, 1)
        self.grid_thw: torch.Tensor | None = None
        self.frozen_statistics = False

    def train(self, mode: bool = True) -> ConvStem:
        super().train(mode)
        if self.frozen_statistics or not any(p.requires_grad for p in self.parameters()):
            for layer in self.modules():
                if isinstance(layer, nn.modules.batchnorm._BatchNorm):
                    layer.eval()
        return self

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.grid_thw is None:
            raise RuntimeError("ConvStem needs the batch's grid_thw: attach it with attach_conv_stem")
        dtype = self.proj.weight.dtype
        images = rows_to_images(hidden_states.to(dtype), self.grid_thw, self.in_channels, self.temporal_patch_size,
                                self.patch_size, self.merge_size)
        out: list[torch.Tensor | None] = [None] * len(images)
        shapes: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            shapes.setdefault(tuple(image.shape[-2:]), []).append(i)
        for (height, width), members in shapes.items():  # images of one size run as one batch
            frames = [images[i].shape[0] for i in members]
            maps = self.features(torch.cat([images[i] for i in members]))
            maps = self.proj(F.adaptive_avg_pool2d(maps, (height // self.patch_size, width // self.patch_size)))
            for i, part in zip(members, maps.split(frames)):
                out[i] = grid_to_rows(part, self.merge_size)
        return torch.cat(out)  # type: ignore[arg-type]


def freeze_batch_statistics(module: nn.Module) -> int:
    """Every ``ConvStem`` in ``module`` normalises with its running statistics from now on, in train mode too, and
    stops updating them; returns how many stems there were."""
    stems = [layer for layer in module.modules() if isinstance(layer, ConvStem)]
    for stem in stems:
        stem.frozen_statistics = True
        stem.train(stem.training)
    return len(stems)


def _set_grid(module: nn.Module, args: tuple, kwargs: dict) -> None:
    module.patch_embed.grid_thw = tower_grid_thw(args, kwargs)


def attach_conv_stem(visual: nn.Module, widths: tuple[int, ...] = (64, 128, 256)) -> ConvStem:
    """Replace ``visual.patch_embed`` by a ``ConvStem`` of the same patch geometry and width (in place)."""
    old = visual.patch_embed
    stem = ConvStem(old.patch_size, old.temporal_patch_size, visual.spatial_merge_size, old.embed_dim, tuple(widths),
                    old.in_channels).to(dtype=old.proj.weight.dtype, device=old.proj.weight.device)
    visual.patch_embed = stem
    visual.register_forward_pre_hook(_set_grid, with_kwargs=True)
    return stem
