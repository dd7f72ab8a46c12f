r"""GRPO maths: group advantages, per-token log-probabilities, the k3 KL estimator, clipped losses.

Shapes: B images, G completions per image, T completion tokens, V vocabulary (see ``skinflow.rl``).

For completion i of image b with reward r_{b,i}:

    A_{b,i}   = r_{b,i} - mean_i r_{b,.}                    (``scale: none``, Dr. GRPO)
              = (r_{b,i} - mean_i r_{b,.}) / (std_i r_{b,.} + eps)   (``scale: std``, GRPO / DAPO)
    rho_t     = exp(logp_t - logp_old_t)                    (ratio to the sampling policy)
    l_t       = -min(rho_t A, clip(rho_t, 1 - eps_low, 1 + eps_high) A) + beta * k3_t
    k3_t      = exp(ref_t - logp_t) - (ref_t - logp_t) - 1  (>= 0, unbiased for KL(pi || ref))

The variants differ only in how token losses are averaged (``LOSS_WEIGHTS``; m = completion mask, N = B*G):

    grpo      1/N sum_{b,i} 1/|o_{b,i}| sum_t l_t m_t      (sequence mean, then mean over sequences)
    dr_grpo   1/(N * T_max) sum_{b,i,t} l_t m_t            (constant normaliser: no length bias)
    dapo      1/sum(m) sum_{b,i,t} l_t m_t                 (token mean over the whole rollout)

Each variant is a function returning per-token weights w (B, G, T) with loss = sum(w * l). The weights are
computed once over the whole rollout, so splitting it into micro-batches for gradient accumulation gives the
same gradient as one pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

import torch

STD_EPS = 1e-4


def group_advantages(rewards: torch.Tensor, scale: str = "std", eps: float = STD_EPS) -> torch.Tensor:
    """(B, G) rewards -> (B, G) advantages: centred per group, divided by the group's std for ``scale="std"``.

    Groups whose rewards all tie get advantage 0 under either scale.

    >>> group_advantages(torch.tensor([[1.0, 0.0], [2.0, 2.0]]), "none").tolist()
    [[0.5, -0.5], [0.0, 0.0]]
    """
    if scale not in get_args(AdvantageScale):
        raise ValueError(f"advantage scale {scale!r} is not 'std' or 'none'")
    centred = rewards - rewards.mean(dim=1, keepdim=True)  # (B, G)
    if scale == "none":
        return centred
    std = rewards.std(dim=1, keepdim=True, unbiased=False) if rewards.shape[1] > 1 else torch.zeros_like(centred[:, :1])
    return centred / (std + eps)


def tied_groups(rewards: torch.Tensor, tol: float = 1e-6) -> torch.Tensor:
    """(B, G) -> (B,) True where every completion of the image got the same reward (no learning signal)."""
    return (rewards.max(dim=1).values - rewards.min(dim=1).values) <= tol


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log pi(token_t) under ``logits / temperature``: (..., T, V), (..., T) -> (..., T), fp32."""
    logits = logits.float() / temperature
    return logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def token_entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of the next-token distribution: (..., T, V) -> (..., T), fp32. Tokens masked to -inf (never
    sampled) contribute 0, not 0 * -inf."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return -(logp.exp() * logp.nan_to_num(neginf=0.0)).sum(-1)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(pi || ref): exp(d) - d - 1 with d = ref - logp; >= 0, any shape."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def clipped_surrogate(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                      eps_low: float, eps_high: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO surrogate loss and whether clipping was active.

    logp, old_logp (B, G, T); advantages (B, G), or (B, G, T) per token (``skinflow.rl.credit``). Returns
    (loss (B, G, T), clipped (B, G, T) bool).
    """
    ratio = torch.exp(logp - old_logp)  # (B, G, T)
    adv = advantages if advantages.dim() == logp.dim() else advantages.unsqueeze(-1)  # (B, G, T) or (B, G, 1)
    unclipped = ratio * adv
    clipped = ratio.clamp(1 - eps_low, 1 + eps_high) * adv
    return -torch.minimum(unclipped, clipped), clipped < unclipped


def grpo_weights(mask: torch.Tensor, max_tokens: int) -> torch.Tensor:
    """Sequence mean, then mean over the sequences that have tokens: (B, G, T) -> (B, G, T)."""
    m = mask.float()
    lengths = m.sum(-1, keepdim=True)  # (B, G, 1)
    sequences = (lengths > 0).sum().clamp(min=1)
    return m / lengths.clamp(min=1) / sequences


def dr_grpo_weights(mask: torch.Tensor, max_tokens: int) -> torch.Tensor:
    """Sum over tokens divided by (sequences * max_tokens): (B, G, T) -> (B, G, T)."""
    m = mask.float()
    sequences = (m.sum(-1) > 0).sum().clamp(min=1)
    return m / (sequences * max_tokens)


def dapo_weights(mask: torch.Tensor, max_tokens: int) -> torch.Tensor:
    """Token mean over the whole rollout: (B, G, T) -> (B, G, T)."""
    m = mask.float()
    return m / m.sum().clamp(min=1)


LossName = Literal["grpo", "dr_grpo", "dapo"]  # the stage's ``loss`` choices (``--help`` lists them)
AdvantageScale = Literal["std", "none"]
LOSS_WEIGHTS: dict[str, Callable[[torch.Tensor, int], torch.Tensor]] = dict(zip(get_args(LossName), (grpo_weights, dr_grpo_weights, dapo_weights)))


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor | None, advantages: torch.Tensor,
                weights: torch.Tensor, eps_low: float, eps_high: float, beta: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate + beta * k3 KL, aggregated by ``weights`` (from ``LOSS_WEIGHTS``).

    logp, old_logp, ref_logp, weights (B, G, T); advantages (B, G) or (B, G, T). ``ref_logp`` may be None when beta = 0.
    Returns the scalar loss and detached token sums over this slice (tokens with weight > 0): ``tokens``,
    ``clipped`` (tokens where clipping was active) and ``kl`` (sum of k3, when beta > 0). Summed over micro-batches
    they give rollout token means.
    """
    surrogate, clipped = clipped_surrogate(logp, old_logp, advantages, eps_low, eps_high)
    counted = weights > 0
    per_token = surrogate
    stats = {"tokens": counted.sum().detach(), "clipped": (clipped & counted).sum().detach()}
    if beta and ref_logp is not None:
        kl = k3_kl(logp, ref_logp)
        per_token = per_token + beta * kl
        stats["kl"] = (kl.detach() * counted).sum()
    return (per_token * weights).sum(), stats
