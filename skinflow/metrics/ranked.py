"""Top-k accuracy of ranked answers and the parse-failure rate: functional core plus thin torchmetrics classes.

Predictions are ranked label indices ``(N, K)`` into the ontology's 114 labels, ``-1`` where a rank is empty;
targets are label indices ``(N,)``. A sample is a top-k hit when its target is among its first k entries.

>>> import torch
>>> preds = torch.tensor([[3, 1, -1], [2, 3, 4], [-1, -1, -1]])
>>> topk_hits(preds, torch.tensor([1, 2, 0]), k=1).tolist()
[False, True, False]
>>> topk_hits(preds, torch.tensor([1, 2, 0]), k=2).tolist()
[True, True, False]
"""

from __future__ import annotations

import torch
from torchmetrics import Metric

from skinflow.data.formats import MAX_RANKS, ParsedAnswer
from skinflow.data.ontology import ONTOLOGY


def ranked_indices(answers: list[ParsedAnswer], k: int = MAX_RANKS) -> torch.Tensor:
    """``(N, k)`` label indices of parsed answers, ``-1`` padded."""
    out = torch.full((len(answers), k), -1, dtype=torch.long)
    for row, answer in enumerate(answers):
        for rank, label in enumerate(answer.labels[:k]):
            out[row, rank] = ONTOLOGY.index(label)
    return out


def topk_hits(preds: torch.Tensor, target: torch.Tensor, k: int) -> torch.Tensor:
    """``(N,)`` bool: target among the first ``k`` ranks (empty ranks, ``-1``, never match)."""
    return (preds[:, :k] == target[:, None]).any(dim=1)


class TopKAccuracy(Metric):
    """Share of samples whose target label is among the first ``k`` ranked answers."""

    full_state_update = False

    def __init__(self, k: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.k = k
        self.add_state("hits", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        self.hits += topk_hits(preds, target, self.k).sum()
        self.total += target.numel()

    def compute(self) -> torch.Tensor:
        return self.hits / self.total.clamp(min=1)


class ParseFailureRate(Metric):
    """Share of completions whose answer block is missing, unclosed or names no known condition."""

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("failures", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, failed: torch.Tensor) -> None:
        self.failures += failed.float().sum()
        self.total += failed.numel()

    def compute(self) -> torch.Tensor:
        return self.failures / self.total.clamp(min=1)
