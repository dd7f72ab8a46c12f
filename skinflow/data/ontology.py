"""The Fitzpatrick17k label tree (114 -> 9 -> 3) and the one place that maps free text to a label.

The tree is derived from the Fitzpatrick17k label CSV (Groh et al. 2021, CC BY-NC-SA 3.0) and shipped as
``skinflow/assets/ontology.csv``. Answers are scored only after :func:`canonicalize` has mapped them into the
114 known labels (the "constrained semantic space"): case, punctuation, British spellings, common clinical
aliases and close misspellings are merged; text that names no condition maps to ``None``.

Synonym classes that Fitzpatrick17k keeps apart (``pyogenic granuloma`` / ``granuloma pyogenic``, the four
melanoma labels, ...) stay distinct labels; :func:`synonym_group` says which labels are clinically the same.

>>> canonicalize("Pyogenic  Granuloma!")
'pyogenic granuloma'
>>> canonicalize("psoriasiss")
'psoriasis'
>>> canonicalize("erythema annulare centrifugum")
'erythema annulare centrifigum'
>>> canonicalize("the weather is nice") is None
True
>>> ONTOLOGY.three("melanoma")
'malignant'
"""

from __future__ import annotations

import csv
import difflib
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

THREE_PARTITIONS = ("benign", "malignant", "non-neoplastic")

# Labels Fitzpatrick17k keeps as separate classes although they name the same disease (its README lists them).
SYNONYM_GROUPS: tuple[tuple[str, ...], ...] = (
    ("pyogenic granuloma", "granuloma pyogenic"),
    ("acne", "acne vulgaris"),
    ("melanoma", "malignant melanoma", "superficial spreading melanoma ssm", "lentigo maligna"),
    ("basal cell carcinoma", "basal cell carcinoma morpheiform", "solid cystic basal cell carcinoma"),
    ("lupus erythematosus", "lupus subacute"),
    ("lichen simplex", "neurodermatitis"),
    ("porokeratosis actinic", "disseminated actinic porokeratosis"),
    ("eczema", "dyshidrotic eczema"),
)

# Clinical names and abbreviations a model (or a person) may write for a label; keys are normalised text.
ALIASES: dict[str, str] = {
    "bcc": "basal cell carcinoma",
    "scc": "squamous cell carcinoma",
    "ssm": "superficial spreading melanoma ssm",
    "superficial spreading melanoma": "superficial spreading melanoma ssm",
    "morpheaform basal cell carcinoma": "basal cell carcinoma morpheiform",
    "melanocytic nevus": "nevocytic nevus",
    "nevus": "nevocytic nevus",
    "mole": "nevocytic nevus",
    "sebaceous nevus": "nevus sebaceous of jadassohn",
    "lichen simplex chronicus": "lichen simplex",
    "hidradenitis suppurativa": "hidradenitis",
    "xanthoma": "xanthomas",
    "telangiectasia": "telangiectases",
    "darier disease": "dariers disease",
    "behcet disease": "behcets disease",
    "pemphigoid gestationis": "acquired autoimmune bullous diseaseherpes gestationis",
    "herpes gestationis": "acquired autoimmune bullous diseaseherpes gestationis",
    "confluent and reticulated papillomatosis": "papilomatosis confluentes and reticulate",
    "fixed drug eruption": "fixed eruptions",
    "erythema migrans": "lyme disease",
    "cutaneous t cell lymphoma": "mycosis fungoides",
    "ctcl": "mycosis fungoides",
    "molluscum": None,  # a real condition, but not one of the 114: keep it out of fuzzy matching
}

# Close misspellings are accepted above this difflib ratio (and only for strings of at least 5 letters).
FUZZY_CUTOFF = 0.88

SKIN_TYPES = (1, 2, 3, 4, 5, 6)  # Fitzpatrick I-VI; Fitzpatrick17k writes -1 for an unknown type
SKIN_TYPE_KEYS = tuple(f"fst_{t}" for t in SKIN_TYPES)  # metric suffixes: test/graded_top1_by_fst/fst_3


def normalize_text(text: str) -> str:
    """Lower-case, strip accents and punctuation, merge British spellings and whitespace.

    >>> normalize_text("  Behçet's  Disease. ")
    'behcet disease'
    """
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii").lower()
    text = re.sub(r"'s\b", "", text)
    text = re.sub(r"[^a-z0-9]+", " ", text)
    text = text.replace("ae", "e").replace("oe", "e")
    return " ".join(text.split())


@dataclass(frozen=True)
class Ontology:
    """The label tree: ``labels`` in a fixed order, with each label's nine- and three-partition parents."""

    labels: tuple[str, ...]
    nine_of: dict[str, str]
    three_of: dict[str, str]
    counts: dict[str, int]

    @property
    def nine_partitions(self) -> tuple[str, ...]:
        return tuple(sorted(set(self.nine_of.values())))

    def index(self, label: str) -> int:
        return self._index()[label]

    def nine(self, label: str) -> str:
        return self.nine_of[label]

    def three(self, label: str) -> str:
        return self.three_of[label]

    def is_malignant(self, label: str) -> bool:
        return self.three_of[label] == "malignant"

    def _index(self) -> dict[str, int]:
        return _label_index(self.labels)

    def __contains__(self, label: object) -> bool:
        return label in self.nine_of

    def __len__(self) -> int:
        return len(self.labels)


@lru_cache(maxsize=4)
def _label_index(labels: tuple[str, ...]) -> dict[str, int]:
    return {label: i for i, label in enumerate(labels)}


def load_ontology() -> Ontology:
    """Read the shipped tree (``skinflow/assets/ontology.csv``)."""
    text = resources.files("skinflow").joinpath("assets/ontology.csv").read_text()
    rows = list(csv.DictReader(line for line in text.splitlines() if not line.startswith("#")))
    return Ontology(
        labels=tuple(r["label"] for r in rows),
        nine_of={r["label"]: r["nine_partition_label"] for r in rows},
        three_of={r["label"]: r["three_partition_label"] for r in rows},
        counts={r["label"]: int(r["images"]) for r in rows},
    )


ONTOLOGY = load_ontology()


def synonym_group(label: str) -> frozenset[str]:
    """The labels clinically equal to ``label`` (itself included)."""
    for group in SYNONYM_GROUPS:
        if label in group:
            return frozenset(group)
    return frozenset((label,))


@lru_cache(maxsize=1)
def _lookup() -> dict[str, str | None]:
    table: dict[str, str | None] = {normalize_text(label): label for label in ONTOLOGY.labels}
    for alias, label in ALIASES.items():
        assert label is None or label in ONTOLOGY, f"alias {alias!r} points outside the ontology: {label!r}"
        table.setdefault(normalize_text(alias), label)
    return table


@lru_cache(maxsize=65536)
def canonicalize(text: str) -> str | None:
    """Map free text to one of the 114 labels, or ``None`` when it names none of them.

    Exact matches after :func:`normalize_text` win, then aliases, then the closest label or alias whose
    similarity ratio is at least ``FUZZY_CUTOFF``.
    """
    key = normalize_text(text)
    if not key or len(key) > 200:
        return None
    table = _lookup()
    if key in table:
        return table[key]
    if len(key.replace(" ", "")) < 5:
        return None
    match = difflib.get_close_matches(key, table.keys(), n=1, cutoff=FUZZY_CUTOFF)
    return table[match[0]] if match else None
