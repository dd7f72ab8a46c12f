"""Reward functions: pure ``(completions, targets) -> Tensor[N]``, registered by name for YAML.

Each shares its grading with the metrics (``skinflow.metrics.grading``), so a policy cannot please the reward
while failing the metric. Formulas and ranges:

- ``format`` in [0, 1]: the mean of three checks on the answer block: (a) present and closed, (b) 1 to 6
  entries, (c) the share of entries that name a known condition.
- ``caption_fields`` in [0, 1]: the mean, over the fields the reference caption has, of the agreement of the
  predicted field: exact match (after normalisation) where the reference value belongs to the field's
  controlled vocabulary, token-set F1 otherwise; a missing field scores 0. A free-text reference (a captions
  file's unstructured ``text``) scores the token-set F1 of all predicted field values against it. References
  without a caption score 0.
- ``ranked_diagnosis`` in [-(safety_penalty + unknown_penalty), 1]: the graded score at k = 6 (the best
  credit over ranks times the rank discount 1/log2(r+1)), minus ``safety_penalty`` for a dangerous miss
  (malignant reference, non-malignant or empty first answer), minus ``unknown_penalty`` times the share of
  entries outside the ontology.

YAML lists them as ``rewards: [{name: ranked_diagnosis, weight: 1.0, options: {safety_penalty: 0.5}}, {name: format,
weight: 0.2}]`` (``options`` are keyword arguments of the reward function).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from skinflow.data.formats import CAPTION_FIELDS, FREE_TEXT, MAX_RANKS, Target, parse_answer, parse_caption
from skinflow.data.ontology import ONTOLOGY, normalize_text
from skinflow.data.synthetic import LESION_CLASSES, SIZE_RADIUS
from skinflow.errors import ConfigError
from skinflow.metrics.grading import GradingSpec, credit_matrix, graded_score, malignant_miss, ranked_indices

RewardFn = Callable[..., torch.Tensor]
REWARDS: dict[str, RewardFn] = {}

# Controlled vocabularies: the values the synthetic generator draws from. Other values are free text.
CONTROLLED: dict[str, frozenset[str]] = {
    "colour": frozenset(c.colour for c in LESION_CLASSES),
    "location": frozenset(loc for c in LESION_CLASSES for loc in c.locations),
    "shape": frozenset(c.shape for c in LESION_CLASSES),
    "lesion type": frozenset(c.lesion_type for c in LESION_CLASSES),
    "size": frozenset(SIZE_RADIUS),
    "border": frozenset(c.border for c in LESION_CLASSES),
    "surface": frozenset(c.surface for c in LESION_CLASSES),
    "distribution": frozenset(c.distribution for c in LESION_CLASSES),
}


def register(name: str) -> Callable[[RewardFn], RewardFn]:
    def wrap(fn: RewardFn) -> RewardFn:
        REWARDS[name] = fn
        return fn

    return wrap


@register("format")
def format_reward(completions: list[str], targets: list[Target]) -> torch.Tensor:
    """Well-formed answer block (see the module docstring). Range [0, 1].

    >>> format_reward(["<answer>\\n1. psoriasis\\n</answer>", "psoriasis"], [None, None]).tolist()
    [1.0, 0.0]
    """
    out = []
    for text in completions:
        parsed = parse_answer(text)
        closed = float(parsed.status in ("ok", "empty"))
        count_ok = float(1 <= parsed.entries <= MAX_RANKS)
        known = (parsed.entries - parsed.unknown) / parsed.entries if parsed.entries else 0.0
        out.append((closed + count_ok + known) / 3)
    return torch.tensor(out)


def token_f1(predicted: str, reference: str) -> float:
    """Token-set F1 of two normalised strings.

    >>> token_f1("red, silvery white", "silvery white")
    0.8
    """
    p, r = set(normalize_text(predicted).split()), set(normalize_text(reference).split())
    common = len(p & r)
    if not p or not r or not common:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


def field_agreement(name: str, predicted: str | None, reference: str) -> float:
    if predicted is None:
        return 0.0
    if reference in CONTROLLED.get(name, ()):
        return float(normalize_text(predicted) == normalize_text(reference))
    return token_f1(predicted, reference)


def reference_fields(target: Target) -> dict[str, str]:
    """The schema fields the reference caption gives a value (empty for free text or no caption)."""
    return {k: v for k, v in (target.caption or {}).items() if k in CAPTION_FIELDS and v}


@register("caption_fields")
def caption_fields_reward(completions: list[str], targets: list[Target]) -> torch.Tensor:
    """Per-field agreement with the reference caption (see the module docstring). Range [0, 1]."""
    out = []
    for text, target in zip(completions, targets):
        reference = reference_fields(target)
        fields, _ = parse_caption(text)
        free_text = (target.caption or {}).get(FREE_TEXT)
        if not reference and free_text:
            out.append(token_f1(" ".join(fields.values()), free_text))
            continue
        if not reference:
            out.append(0.0)
            continue
        out.append(sum(field_agreement(k, fields.get(k), v) for k, v in reference.items()) / len(reference))
    return torch.tensor(out)


def caption_field_scores(completions: list[str], targets: list[Target]) -> torch.Tensor:
    """The terms of ``caption_fields``: (N, F) agreement of each schema field (``CAPTION_FIELDS`` order), NaN
    where the reference has no value for the field. For a structured reference the reward is the row's mean over
    its non-NaN entries; free-text references and missing captions give all-NaN rows (nothing to split)."""
    rows = []
    for text, target in zip(completions, targets):
        reference = reference_fields(target)
        fields, _ = parse_caption(text)
        rows.append([field_agreement(k, fields.get(k), reference[k]) if k in reference else float("nan")
                     for k in CAPTION_FIELDS])
    return torch.tensor(rows, dtype=torch.float32).reshape(len(rows), len(CAPTION_FIELDS))


# Rewards that are a mean of per-field terms, and the function giving those terms: what ``credit: field`` splits.
FIELD_TERMS: dict[str, Callable[[list[str], list[Target]], torch.Tensor]] = {"caption_fields": caption_field_scores}


@dataclass(frozen=True)
class DiagnosisRewardSpec:
    grading: GradingSpec = field(default_factory=GradingSpec)
    safety_penalty: float = 0.5
    unknown_penalty: float = 0.25


@register("ranked_diagnosis")
def ranked_diagnosis_reward(completions: list[str], targets: list[Target], spec: DiagnosisRewardSpec = DiagnosisRewardSpec(),
                            **options: float) -> torch.Tensor:
    """Graded, rank-discounted credit minus safety and out-of-ontology penalties (see the module docstring).

    ``options`` (``safety_penalty``, ``unknown_penalty``) override ``spec``: a YAML reward entry's ``options``.
    """
    if options:
        spec = DiagnosisRewardSpec(spec.grading, **{**{"safety_penalty": spec.safety_penalty, "unknown_penalty": spec.unknown_penalty}, **options})
    parsed = [parse_answer(text) for text in completions]
    preds = ranked_indices(parsed)
    target = torch.tensor([ONTOLOGY.index(t.label) for t in targets])
    score = graded_score(preds, target, credit_matrix(spec.grading), MAX_RANKS)
    danger = malignant_miss(preds, target, 1).float()
    unknown = torch.tensor([p.unknown / p.entries if p.entries else 0.0 for p in parsed])
    return score - spec.safety_penalty * danger - spec.unknown_penalty * unknown


@dataclass(frozen=True)
class RewardSpec:
    """One entry of a stage's ``rewards:`` list: a registered reward, its weight, and keyword options of the
    reward function (e.g. ``{safety_penalty: 0.25}`` for ``ranked_diagnosis``)."""

    name: str
    weight: float = 1.0
    options: dict[str, float] = field(default_factory=dict)


def combined_reward(completions: list[str], targets: list[Target], specs: list[RewardSpec]) -> dict[str, torch.Tensor]:
    r"""Each listed reward (key ``name``) and their weighted sum (key ``total``), all (N,).

    >>> specs = [RewardSpec("format", 0.5), RewardSpec("ranked_diagnosis", 1.0)]
    >>> from skinflow.data.formats import Target
    >>> out = combined_reward(["<answer>\n1. psoriasis\n</answer>"], [Target("psoriasis", "inflammatory", "non-neoplastic")], specs)
    >>> [round(float(out[k][0]), 2) for k in ("format", "ranked_diagnosis", "total")]
    [1.0, 1.0, 1.5]
    """
    unknown = [spec.name for spec in specs if spec.name not in REWARDS]
    if unknown:
        raise ConfigError(f"unknown rewards {unknown}; registered: {sorted(REWARDS)}")
    out = {spec.name: REWARDS[spec.name](completions, targets, **spec.options) for spec in specs}
    out["total"] = sum(spec.weight * out[spec.name] for spec in specs)
    return out


def reward_range(name: str, spec: DiagnosisRewardSpec = DiagnosisRewardSpec()) -> tuple[float, float]:
    """The documented (min, max) of a registered reward."""
    if name == "ranked_diagnosis":
        return -(spec.safety_penalty + spec.unknown_penalty), 1.0
    return 0.0, 1.0
