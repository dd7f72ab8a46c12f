r"""Per-token log-probabilities from final hidden states, a chunk of positions at a time: no (n, T, V) logits.

Shapes: n sequences, T positions, H hidden width, V vocabulary (see ``skinflow.rl``).

The scoring passes of GRPO (policy, old policy, reference) and the warmup's cross-entropy need, per position, only

    log pi(y_t) = z_t[y_t] - logsumexp(z_t),   z_t = (W h_t + b) / tau   (suppressed ids set to -inf)

and, for logging, the entropy -sum_v pi_v log pi_v. Materialising z for a whole micro-batch costs n * T * V * 4 bytes
per fp32 copy (at Qwen2.5-VL's V = 151,936: 78 MB for one 128-token sequence), and autograd keeps several copies.
``chunked_token_logprobs`` instead runs the LM head on ``chunk_rows`` positions at a time, only at the positions
``mask`` keeps, and wraps each chunk in activation checkpointing: the chunk's logits live only while that chunk is
computed, in the forward and again in the backward. Peak extra memory is a few copies of (chunk_rows, V) whatever
the micro-batch, for one more LM-head matmul per chunk in the backward. The values and gradients are those of the
full-logits computation (``skinflow.rl.grpo.token_logprobs``); positions ``mask`` leaves out get 0 and no gradient.
This is TRL's "selective log-softmax" done over position chunks, and the memory side of Liger-Kernel's fused
linear-cross-entropy, in plain PyTorch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


def rows_per_chunk(vocab: int, chunk_mib: float) -> int:
    """How many positions fit ``chunk_mib`` MiB of fp32 logits at vocabulary ``vocab`` (at least 1).

    >>> rows_per_chunk(151936, 64), rows_per_chunk(300, 64), rows_per_chunk(151936, 0.01)
    (110, 55924, 1)
    """
    return max(1, int(chunk_mib * 2**20) // (4 * vocab))


def _chunk(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, tokens: torch.Tensor,
           temperature: float, suppressed: torch.Tensor | None, with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(c, H), (V, H), (c,) -> log-probabilities (c,) and entropies (c,) (zeros unless ``with_entropy``)."""
    logits = F.linear(hidden, weight, bias).float() / temperature  # (c, V): the one vocabulary-sized tensor
    if suppressed is not None and len(suppressed):
        logits = logits.index_fill(-1, suppressed, float("-inf"))
    logp = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)  # (c,)
    entropy = torch.zeros_like(logp)
    if with_entropy:
        with torch.no_grad():
            log_probs = torch.log_softmax(logits, dim=-1)
            entropy = -(log_probs.exp() * log_probs.nan_to_num(neginf=0.0)).sum(-1)
    return logp, entropy


def chunked_token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, tokens: torch.Tensor,
                           mask: torch.Tensor | None = None, temperature: float = 1.0,
                           suppressed: torch.Tensor | None = None, chunk_rows: int = 128,
                           with_entropy: bool = False, bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi(tokens) and the entropy of pi at every position, from the hidden states that predict them.

    hidden (n, T, H): the final (normed) hidden state at the position *before* each token; weight (V, H) and
    bias (V,): the LM head; tokens (n, T); mask (n, T) bool: the positions to score (default all); suppressed (k,):
    token ids the sampler never draws (scored at -inf). Returns (log-probabilities (n, T), entropies (n, T)),
    fp32, 0 where ``mask`` is False; entropies are detached and 0 unless ``with_entropy``.

    >>> _ = torch.manual_seed(0)
    >>> h, w, y = torch.randn(2, 3, 4), torch.randn(7, 4), torch.randint(0, 7, (2, 3))
    >>> full = torch.log_softmax(h @ w.T / 0.7, -1).gather(-1, y[..., None]).squeeze(-1)
    >>> mask = torch.tensor([[True, True, False], [True, False, False]])
    >>> logp, _ = chunked_token_logprobs(h, w, y, mask, temperature=0.7, chunk_rows=2)
    >>> torch.allclose(logp[mask], full[mask]), logp[~mask].abs().sum().item()
    (True, 0.0)
    """
    n, T, H = hidden.shape
    keep = (mask.reshape(-1).nonzero().squeeze(1) if mask is not None
            else torch.arange(n * T, device=hidden.device))  # (m,): flat positions scored
    h = hidden.reshape(n * T, H).index_select(0, keep)  # (m, H)
    y = tokens.reshape(n * T).index_select(0, keep)  # (m,)
    grad = torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)
    logps, entropies = [], []
    for start in range(0, len(keep), chunk_rows):
        args = (h[start:start + chunk_rows], weight, bias, y[start:start + chunk_rows], temperature, suppressed, with_entropy)
        # checkpointed: the chunk's logits are recomputed in the backward instead of kept
        lp, ent = checkpoint(_chunk, *args, use_reentrant=False) if grad else _chunk(*args)
        logps.append(lp)
        entropies.append(ent.detach())
    zeros = torch.zeros(n * T, device=hidden.device, dtype=torch.float32)
    if not logps:
        return zeros.view(n, T), zeros.view(n, T)
    logp = zeros.index_copy(0, keep, torch.cat(logps))  # differentiable in the chunks' values
    entropy = zeros.index_copy(0, keep, torch.cat(entropies))
    return logp.view(n, T), entropy.view(n, T)
