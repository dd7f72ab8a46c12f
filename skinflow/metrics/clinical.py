"""Clinically graded torchmetrics over ranked answers: thin classes over ``skinflow.metrics.grading``.

Inputs of every ``update``: ``preds`` (N, K) ranked label indices into the 114 labels (-1 = empty rank),
``target`` (N,) label indices. Each metric keeps two summed states (a numerator and a count), so values are
exact under chunked updates and across processes (``dist_reduce_fx="sum"``).

>>> import torch
>>> preds, target = torch.tensor([[5, 2, -1], [7, 7, 7]]), torch.tensor([2, 3])
>>> float(TopK(k=2)(preds, target))
0.5
"""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics import Metric

from skinflow.data.ontology import SKIN_TYPES
from skinflow.errors import ConfigError
from skinflow.metrics.grading import GradingSpec, credit_matrix, graded_score, level_hits, malignant_mask, malignant_miss



class _MeanOf(Metric):
    """Mean of a per-sample value over the samples it applies to (sum + count states)."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def values(self, preds: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-sample value, per-sample applies mask)."""
        raise NotImplementedError

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        value, applies = self.values(preds, target)
        self.total += value.double()[applies].sum()
        self.count += applies.sum()

    def compute(self) -> torch.Tensor:
        return (self.total / self.count).float() if self.count > 0 else torch.tensor(float("nan"))


class TopK(_MeanOf):
    """Share of samples with a match among the first ``k`` answers, at ``level`` exact / nine / three."""

    def __init__(self, k: int = 1, level: str = "exact", **kwargs):
        super().__init__(**kwargs)
        if level not in ("exact", "nine", "three"):
            raise ConfigError(f"level must be exact, nine or three, not {level!r}")
        self.k, self.level = k, level

    def values(self, preds, target):
        return level_hits(preds, target, self.k, self.level).float(), torch.ones_like(target, dtype=torch.bool)


class GradedScore(_MeanOf):
    """Mean best rank-discounted credit within the first ``k`` answers (k = 1: mean credit of the first)."""

    def __init__(self, k: int = 1, grading: GradingSpec = GradingSpec(), **kwargs):
        super().__init__(**kwargs)
        self.k = k
        self.register_buffer("credit", credit_matrix(grading).clone(), persistent=False)

    def values(self, preds, target):
        return graded_score(preds, target, self.credit, self.k), torch.ones_like(target, dtype=torch.bool)


class MalignantMissRate(_MeanOf):
    """Among malignant references, the share with no malignant answer in the first ``k`` (k=1: dangerous miss)."""

    higher_is_better = False

    def __init__(self, k: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.k = k

    def values(self, preds, target):
        return malignant_miss(preds, target, self.k).float(), malignant_mask().to(target.device)[target]


class ParseFailureRate(_MeanOf):
    """Share of completions whose answer block is missing, unclosed or names no known condition."""

    higher_is_better = False

    def update(self, failed: torch.Tensor) -> None:  # type: ignore[override]
        self.total += failed.double().sum()
        self.count += failed.numel()


class BySkinType(nn.Module):
    """Any of the metrics above computed separately per Fitzpatrick type 1..6 (type -1 ignored).

    ``compute()`` returns ``{"fst_1": ..., ..., "fst_6": ..., "worst": ..., "gap": ...}``: worst is the lowest
    value over types with data (the highest for lower-is-better metrics) and gap the spread between best and
    worst.
    """

    def __init__(self, make: callable):
        super().__init__()
        self.groups = nn.ModuleDict({f"fst_{t}": make() for t in SKIN_TYPES})

    def update(self, preds: torch.Tensor, target: torch.Tensor, fitzpatrick: torch.Tensor) -> None:
        for t in SKIN_TYPES:
            rows = fitzpatrick == t
            if rows.any():
                self.groups[f"fst_{t}"].update(preds[rows], target[rows])

    def compute(self) -> dict[str, torch.Tensor]:
        out = {name: metric.compute() for name, metric in self.groups.items()}
        known = [v for v in out.values() if not torch.isnan(v)]
        if known:
            values = torch.stack(known)
            higher = next(iter(self.groups.values())).higher_is_better
            out["worst"] = values.min() if higher else values.max()
            out["gap"] = values.max() - values.min()
        return out

    def reset(self) -> None:
        for metric in self.groups.values():
            metric.reset()


def clinical_metrics(grading: GradingSpec = GradingSpec(), k_max: int = 6) -> nn.ModuleDict:
    """The collection every stage logs for validation and test, keyed by the logged name."""
    metrics: dict[str, nn.Module] = {}
    for level in ("exact", "nine", "three"):
        for k in range(1, k_max + 1):
            metrics[f"top{k}_{level}"] = TopK(k, level)
    metrics["graded_top1"] = GradedScore(1, grading)
    metrics[f"graded_top{k_max}"] = GradedScore(k_max, grading)
    metrics["malignant_miss_top1"] = MalignantMissRate(1)
    metrics[f"malignant_miss_top{k_max}"] = MalignantMissRate(k_max)
    metrics["graded_top1_by_fst"] = BySkinType(lambda: GradedScore(1, grading))
    metrics["top1_exact_by_fst"] = BySkinType(lambda: TopK(1, "exact"))
    return nn.ModuleDict(metrics)
