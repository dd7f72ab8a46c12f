"""Clinical grading shared by metrics and rewards: the credit matrix, rank discount and the dangerous miss.

Credit of answering label j when the reference is label i (defaults; overridable in YAML through
``GradingSpec``)::

    C[i, j] = 1.0   j == i, or j a synonym of i (Fitzpatrick17k's duplicate classes, see the ontology)
              0.5   same nine-partition group
              0.25  same three-partition class (benign / malignant / non-neoplastic)
              0.0   otherwise

Ranked answers are credited with a DCG-style discount d(r) = 1 / log2(r + 1) (1, 0.63, 0.5, 0.43, 0.39, 0.36
for ranks 1..6): the graded score at k is max over r <= k of C[target, pred_r] * d(r), so a right answer at
rank 1 scores 1 and the same answer at rank 6 scores 0.36. A *dangerous miss* is a malignant reference whose
first answer is not malignant (an empty answer included): the error that sends a cancer home.

>>> spec = GradingSpec()
>>> C = credit_matrix(spec)
>>> i, j = ONTOLOGY.index("pyogenic granuloma"), ONTOLOGY.index("granuloma pyogenic")
>>> float(C[i, j]), float(C[i, ONTOLOGY.index("dermatofibroma")]), float(C[i, ONTOLOGY.index("milia")])
(1.0, 0.5, 0.25)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch

from skinflow.data.formats import MAX_RANKS, ParsedAnswer
from skinflow.data.ontology import ONTOLOGY, synonym_group

EMPTY = -1  # label index of an empty rank


@dataclass(frozen=True)
class GradingSpec:
    """Credit values of the clinical hierarchy.

    Args:
        exact: credit of the reference label itself.
        synonym: credit of a label Fitzpatrick17k keeps apart but that names the same disease.
        nine: credit of another label in the same nine-partition group.
        three: credit of another label in the same three-partition class.
    """

    exact: float = 1.0
    synonym: float = 1.0
    nine: float = 0.5
    three: float = 0.25


@lru_cache(maxsize=8)
def credit_matrix(spec: GradingSpec = GradingSpec()) -> torch.Tensor:
    """(114, 114) float tensor: row = reference label, column = answered label."""
    labels = ONTOLOGY.labels
    n = len(labels)
    credit = torch.zeros(n, n)
    for i, ref in enumerate(labels):
        synonyms = synonym_group(ref)
        for j, ans in enumerate(labels):
            if i == j:
                credit[i, j] = spec.exact
            elif ans in synonyms:
                credit[i, j] = spec.synonym
            elif ONTOLOGY.nine(ans) == ONTOLOGY.nine(ref):
                credit[i, j] = spec.nine
            elif ONTOLOGY.three(ans) == ONTOLOGY.three(ref):
                credit[i, j] = spec.three
    return credit


def ranked_indices(answers: list[ParsedAnswer], k: int = MAX_RANKS) -> torch.Tensor:
    """(N, k) label indices of parsed answers, -1 where a rank is empty."""
    out = torch.full((len(answers), k), EMPTY, dtype=torch.long)
    for row, answer in enumerate(answers):
        for rank, label in enumerate(answer.labels[:k]):
            out[row, rank] = ONTOLOGY.index(label)
    return out


def rank_discount(k: int) -> torch.Tensor:
    """(k,) discounts 1 / log2(r + 1) for ranks r = 1..k."""
    return torch.tensor([1 / math.log2(r + 1) for r in range(1, k + 1)])


def ranked_credit(preds: torch.Tensor, target: torch.Tensor, credit: torch.Tensor) -> torch.Tensor:
    """(N, K) credit of each ranked answer against its reference; empty ranks (-1) get 0."""
    safe = preds.clamp(min=0)
    values = credit.to(preds.device)[target[:, None], safe]
    return torch.where(preds == EMPTY, torch.zeros_like(values), values)


def graded_score(preds: torch.Tensor, target: torch.Tensor, credit: torch.Tensor, k: int) -> torch.Tensor:
    """(N,) best discounted credit within the first k ranks (k = 1: the credit of the first answer)."""
    values = ranked_credit(preds[:, :k], target, credit) * rank_discount(min(k, preds.shape[1])).to(preds.device)
    return values.max(dim=1).values


@lru_cache(maxsize=1)
def malignant_mask() -> torch.Tensor:
    """(114,) bool: labels in the malignant three-partition class (built once; callers only read it)."""
    return torch.tensor([ONTOLOGY.is_malignant(label) for label in ONTOLOGY.labels])


def malignant_miss(preds: torch.Tensor, target: torch.Tensor, k: int) -> torch.Tensor:
    """(N,) bool: the reference is malignant and none of the first k answers is (k = 1: a dangerous miss)."""
    malignant = malignant_mask().to(preds.device)
    answered = malignant[preds[:, :k].clamp(min=0)] & (preds[:, :k] != EMPTY)
    return malignant[target] & ~answered.any(dim=1)


def level_hits(preds: torch.Tensor, target: torch.Tensor, k: int, level: str) -> torch.Tensor:
    """(N,) bool: one of the first k answers matches the reference at ``level`` (exact / nine / three)."""
    if level == "exact":
        return (preds[:, :k] == target[:, None]).any(dim=1)
    group_of = _group_index(level).to(preds.device)
    answered = group_of[preds[:, :k].clamp(min=0)]
    return ((answered == group_of[target][:, None]) & (preds[:, :k] != EMPTY)).any(dim=1)


@lru_cache(maxsize=2)
def _group_index(level: str) -> torch.Tensor:
    parent = ONTOLOGY.nine if level == "nine" else ONTOLOGY.three
    names = sorted({parent(label) for label in ONTOLOGY.labels})
    return torch.tensor([names.index(parent(label)) for label in ONTOLOGY.labels])
