"""Rollout plumbing: repeat each image G times, cut sampled sequences into masked completions.

Shapes: B images, G completions per image, T completion tokens, N = B * G (see ``skinflow.rl``).
Sequences are ordered image-major: rows b*G .. b*G + G - 1 belong to image b, so ``x.view(B, G, ...)`` regroups.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def repeat_images(pixel_values: torch.Tensor, grid_thw: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Repeat each image's patch rows ``group`` times, image-major.

    pixel_values (sum_b t_b*h_b*w_b, D), grid_thw (B, 3) -> (G * rows, D), (B*G, 3).

    >>> pv, grid = repeat_images(torch.arange(6.0)[:, None], torch.tensor([[1, 1, 2], [1, 2, 2]]), 2)
    >>> pv.squeeze(1).tolist(), grid[:, 2].tolist()
    ([0.0, 1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 2.0, 3.0, 4.0, 5.0], [2, 2, 2, 2])
    """
    chunks = pixel_values.split(grid_thw.prod(dim=-1).tolist())
    return torch.cat([c for c in chunks for _ in range(group)]), grid_thw.repeat_interleave(group, dim=0)


def completion_mask(tokens: torch.Tensor, eos_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, T) sampled tokens -> (mask (N, T) bool: up to and including the first eos, clipped (N,) bool: no eos).

    >>> m, c = completion_mask(torch.tensor([[5, 2, 7], [5, 6, 7]]), eos_id=2)
    >>> m.int().tolist(), c.tolist()
    ([[1, 1, 0], [1, 1, 1]], [False, True])
    """
    is_eos = tokens == eos_id
    before_eos = (is_eos.int().cumsum(dim=1) - is_eos.int()) == 0  # no eos strictly before t
    return before_eos, ~is_eos.any(dim=1)


@dataclass
class Rollout:
    """G sampled completions for each of B images, with what the loss needs. Tensors are flat over N = B*G."""

    prompt_ids: torch.Tensor  # (N, Lp) left-padded
    prompt_mask: torch.Tensor  # (N, Lp)
    pixel_values: torch.Tensor  # (G * patches, D)
    image_grid_thw: torch.Tensor  # (N, 3)
    completion_ids: torch.Tensor  # (N, T), pad after the first eos
    completion_mask: torch.Tensor  # (N, T) bool
    clipped: torch.Tensor  # (N,) bool: hit max_new_tokens without eos
    texts: list[str]  # (N,)
    group: int

    @property
    def images(self) -> int:
        return self.completion_ids.shape[0] // self.group

    def select(self, rows: torch.Tensor) -> "Rollout":
        """The sequences ``rows`` (indices into N), with their images' patches."""
        counts = self.image_grid_thw.prod(dim=-1)
        chunks = self.pixel_values.split(counts.tolist())
        idx = rows.tolist()
        return Rollout(
            self.prompt_ids[rows], self.prompt_mask[rows], torch.cat([chunks[i] for i in idx]), self.image_grid_thw[rows],
            self.completion_ids[rows], self.completion_mask[rows], self.clipped[rows], [self.texts[i] for i in idx], 1,
        )
