r"""Field-level credit: per-token advantages for a reward that is a mean over caption fields.

GRPO gives every token of a completion the same advantage, the centred total reward. For ``caption_fields`` that
total is the mean of eight field terms, so the tokens of the ``colour`` line are pushed by how the other seven
fields happened to be sampled as much as by their own: noise that grows with the number of fields. Field-level
credit (fine-grained rewards in the sense of Wu et al. 2023, "Fine-Grained Human Feedback Gives Better Rewards
for Language Model Training") gives each field line the advantage of its own term.

Shapes: B images, G completions, T completion tokens, F caption fields (legend in ``skinflow.rl``). For
completion i of image b with total reward R, field terms s_f (NaN where the reference has no field f), n
reference fields and caption reward weight w:

    c_{b,i,f} = w (s_{b,i,f} - mean_i s_{b,.,f}) / n     (0 where the reference has no field f)
    A_{b,i}   = R_{b,i} - mean_i R_{b,.}                (the sequence advantage, as in ``group_advantages``)
    rest      = A - sum_f c_f                           (the other rewards' share, and free-text references')
    A_{b,i,t} = rest + sum_{f without a line} c_f + c_{field(t)}

where field(t) is the field whose caption line holds token t (no term for tokens outside every line: tags,
end-of-sequence). A field the completion never wrote has no tokens to credit, so its term stays on every token,
as in GRPO. Mean-only (Dr. GRPO): a group's total can tie while its fields differ, so there is no std to divide by.

The sum over fields of the per-token terms is the sequence advantage, so the expected update is GRPO's when the
fields are sampled independently; what is dropped is the credit one line gets for the other lines' luck. It is
biased where an earlier line changes the distribution of a later one (the caption is written left to right).

Measured on the tiny demo's Stage I (``configs/model/stage1_tiny.yaml``): no better than sequence credit over
three seeds, but it kept a learning rate of 2e-4 from wrecking the policy (validation caption reward -0.023
against -0.107 with sequence credit, seed 0).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from skinflow.data.formats import CAPTION_FIELDS, caption_line_spans
from skinflow.rl.grpo import group_advantages, tied_groups


def token_char_ends(decode: Callable[[list[int]], str], ids: list[int]) -> list[int]:
    """End offset in ``decode(ids)`` of the text of each token: the length of the decoded prefix through it.

    Prefix decoding, not per-token decoding, so tokens that are parts of one character (byte-level BPE) map
    correctly; the ends are made non-decreasing against decoders that rewrite earlier text.
    """
    ends, last = [], 0
    for t in range(len(ids)):
        last = max(last, len(decode(ids[: t + 1])))
        ends.append(last)
    return ends


def token_fields(text: str, char_ends: list[int]) -> torch.Tensor:
    """(T,) index into ``CAPTION_FIELDS`` of the caption line each token's text overlaps, -1 outside every line.

    A token that straddles two lines belongs to the first.
    """
    spans = sorted((a, b, CAPTION_FIELDS.index(name)) for name, (a, b) in caption_line_spans(text).items())
    out, start = [], 0
    for end in char_ends:
        out.append(next((f for a, b, f in spans if start < b and a < end), -1))
        start = end
    return torch.tensor(out, dtype=torch.long).reshape(len(char_ends))


def completion_token_fields(decode: Callable[[list[int]], str], ids: torch.Tensor, mask: torch.Tensor,
                            texts: list[str]) -> torch.Tensor:
    """(N, T) ``token_fields`` of each completion: ids, mask (N, T); ``texts`` its decoded completions."""
    out = torch.full(ids.shape, -1, dtype=torch.long)
    for n, text in enumerate(texts):
        length = int(mask[n].sum())
        if length:
            out[n, :length] = token_fields(text, token_char_ends(decode, ids[n, :length].tolist()))
    return out


def field_token_advantages(total: torch.Tensor, field_scores: torch.Tensor, weight: float,
                           token_field: torch.Tensor) -> torch.Tensor:
    """Per-token advantages (B, G, T) from the module docstring's formula.

    total (B, G) the combined reward; field_scores (B, G, F) the field terms of the split reward (NaN: the reference
    has no such field); weight its weight in ``total``; token_field (B, G, T) from ``completion_token_fields``.
    """
    B, G, F = field_scores.shape
    has = ~field_scores.isnan()  # (B, G, F); the same for every completion of an image
    n = has.sum(-1, keepdim=True).clamp(min=1)  # (B, G, 1)
    s = field_scores.nan_to_num(0.0)
    terms = weight * (s - s.mean(1, keepdim=True)) / n * has  # (B, G, F)
    rest = group_advantages(total, "none") - terms.sum(-1)  # (B, G)
    written = torch.zeros(B, G, F + 1, dtype=torch.bool, device=token_field.device)
    written.scatter_(2, (token_field + 1).clamp(min=0), True)  # slot 0 collects tokens outside every line
    written = written[..., 1:]  # (B, G, F): the completion has a line for field f
    unwritten = (terms * ~written).sum(-1)  # (B, G)
    own = torch.cat([terms, torch.zeros(B, G, 1, dtype=terms.dtype, device=terms.device)], dim=-1)  # slot F: no field
    per_token = own.gather(2, torch.where(token_field < 0, F, token_field))  # (B, G, T)
    return (rest + unwritten).unsqueeze(-1) + per_token


def tied_field_groups(total: torch.Tensor, field_scores: torch.Tensor, tol: float = 1e-6) -> torch.Tensor:
    """(B,) True where neither the total nor any field term differs within the image's group: no token gets a
    non-zero field-level advantage."""
    return tied_groups(total, tol) & tied_groups(field_scores.nan_to_num(0.0), tol).all(-1)  # (B, F) -> (B,)
