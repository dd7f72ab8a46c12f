"""Rollout plumbing: share each image between its G completions, cut sampled sequences into masked completions.

Shapes: B images, G completions per image, T completion tokens, N = B * G (see ``skinflow.rl``).
Sequences are ordered image-major: rows b*G .. b*G + G - 1 belong to image b, so ``x.view(B, G, ...)`` regroups.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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


def shared_image_features(
    encode: Callable[[torch.Tensor, torch.Tensor], Sequence[torch.Tensor]],
    pixel_values: torch.Tensor, grid_thw: torch.Tensor, image_index: torch.Tensor,
) -> tuple[torch.Tensor, ...]:
    """Encode each distinct image that ``image_index`` names once; return one feature tensor per sequence.

    pixel_values (sum_b patches_b, D) and grid_thw (B, 3) hold the B images; image_index (n,) names the image of
    each sequence. ``encode(pixels, grid)`` returns one tensor per image it was given. The n returned tensors
    share storage (and autograd history) between sequences of the same image, so the vision encoder runs once
    per image instead of G times, and its gradient is the sum over the image's sequences, exactly as if each
    sequence had carried its own copy.

    >>> calls = []
    >>> def encode(px, grid):
    ...     calls.append(len(grid))
    ...     return px.split(grid.prod(-1).tolist())
    >>> feats = shared_image_features(encode, torch.arange(3.0)[:, None], torch.tensor([[1, 1, 1], [1, 1, 2]]),
    ...                               torch.tensor([1, 1, 0, 1]))
    >>> [f.squeeze(1).tolist() for f in feats], calls
    ([[1.0, 2.0], [1.0, 2.0], [0.0], [1.0, 2.0]], [2])
    """
    used = image_index.unique().tolist()  # sorted distinct images
    chunks = pixel_values.split(grid_thw.prod(dim=-1).tolist())
    features = encode(torch.cat([chunks[i] for i in used]), grid_thw[used])
    by_image = dict(zip(used, features, strict=True))
    return tuple(by_image[i] for i in image_index.tolist())


def completion_mask(tokens: torch.Tensor, eos_ids: int | Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, T) sampled tokens -> (mask (N, T) bool: up to and including the first stop token, clipped (N,) bool:
    no stop token). ``eos_ids``: one id or several (Qwen2.5-VL-Instruct stops on ``<|im_end|>`` and
    ``<|endoftext|>``).

    >>> m, c = completion_mask(torch.tensor([[5, 2, 7], [5, 6, 7], [9, 9, 4]]), eos_ids=[2, 9])
    >>> m.int().tolist(), c.tolist()
    ([[1, 1, 0], [1, 1, 1], [1, 0, 0]], [False, True, False])
    """
    stops = torch.tensor([eos_ids] if isinstance(eos_ids, int) else list(eos_ids), device=tokens.device)
    is_eos = torch.isin(tokens, stops)
    before_eos = (is_eos.int().cumsum(dim=1) - is_eos.int()) == 0  # no eos strictly before t
    return before_eos, ~is_eos.any(dim=1)


@dataclass
class Rollout:
    """G sampled completions for each of B images, with what the loss needs. Sequence tensors are flat over N = B*G;
    the images are kept once each (``image_index`` names each sequence's image), so the vision encoder can run
    once per image (``shared_image_features``)."""

    prompt_ids: torch.Tensor  # (N, Lp) left-padded
    prompt_mask: torch.Tensor  # (N, Lp)
    pixel_values: torch.Tensor  # (sum_b patches_b, D): the B images, once each
    image_grid_thw: torch.Tensor  # (B, 3)
    image_index: torch.Tensor  # (N,) long: the image of each sequence (b for rows b*G .. b*G + G - 1)
    completion_ids: torch.Tensor  # (N, T), pad after the first eos
    completion_mask: torch.Tensor  # (N, T) bool
    clipped: torch.Tensor  # (N,) bool: hit max_new_tokens without eos
    texts: list[str]  # (N,)

    @property
    def sequence_grid_thw(self) -> torch.Tensor:
        """(N, 3): each sequence's image grid (Qwen2.5-VL builds the 3-D rotary positions from it)."""
        return self.image_grid_thw[self.image_index]

    def select(self, rows: torch.Tensor) -> "Rollout":
        """The sequences ``rows`` (indices into N); the images stay as they are."""
        return Rollout(
            self.prompt_ids[rows], self.prompt_mask[rows], self.pixel_values, self.image_grid_thw, self.image_index[rows],
            self.completion_ids[rows], self.completion_mask[rows], self.clipped[rows], [self.texts[i] for i in rows.tolist()],
        )
