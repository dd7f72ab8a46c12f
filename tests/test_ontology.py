import pytest

from skinflow.data.ontology import ONTOLOGY, SYNONYM_GROUPS, canonicalize, normalize_text, synonym_group
from tests.conftest import SHARED_DATA


def test_tree_has_114_labels_9_groups_3_classes():
    assert len(ONTOLOGY) == 114
    assert len(set(ONTOLOGY.nine_of.values())) == 9
    assert set(ONTOLOGY.three_of.values()) == {"benign", "malignant", "non-neoplastic"}
    assert sum(ONTOLOGY.counts.values()) == 16577


def test_tree_matches_the_official_csv():
    import csv

    path = SHARED_DATA / "fitzpatrick17k" / "fitzpatrick17k.csv"
    if not path.exists():
        pytest.skip(f"{path} not present")
    for row in csv.DictReader(open(path)):
        assert ONTOLOGY.nine(row["label"]) == row["nine_partition_label"]
        assert ONTOLOGY.three(row["label"]) == row["three_partition_label"]


@pytest.mark.parametrize("text,label", [
    ("psoriasis", "psoriasis"),
    ("  PSORIASIS. ", "psoriasis"),
    ("Pyogenic-Granuloma", "pyogenic granuloma"),
    ("granuloma pyogenic", "granuloma pyogenic"),
    ("Behçet's disease", "behcets disease"),
    ("Darier disease", "dariers disease"),
    ("seborrhoeic keratosis", "seborrheic keratosis"),
    ("naevus sebaceous of jadassohn", "nevus sebaceous of jadassohn"),
    ("BCC", "basal cell carcinoma"),
    ("melanocytic nevus", "nevocytic nevus"),
    ("erythema annulare centrifugum", "erythema annulare centrifigum"),
    ("psoriasiss", "psoriasis"),
    ("melanomma", "melanoma"),
    ("dermatofibromma", "dermatofibroma"),
    ("sqamous cell carcinoma", "squamous cell carcinoma"),
])
def test_canonicalize_maps_variants_to_labels(text, label):
    assert canonicalize(text) == label


@pytest.mark.parametrize("text", ["", "   ", "the weather is nice", "12345", "<answer>", "xyzzy", "a" * 500, "skin", "molluscum"])
def test_canonicalize_rejects_non_conditions(text):
    assert canonicalize(text) is None


def test_every_label_is_its_own_canonical_form():
    assert all(canonicalize(label) == label for label in ONTOLOGY.labels)


def test_synonym_groups_are_known_labels_and_symmetric():
    for group in SYNONYM_GROUPS:
        for label in group:
            assert label in ONTOLOGY
            assert synonym_group(label) == frozenset(group)
    assert synonym_group("psoriasis") == frozenset({"psoriasis"})
    assert "granuloma pyogenic" in synonym_group("pyogenic granuloma")


def test_normalize_text():
    assert normalize_text("Lichen  Simplex, chronicus!") == "lichen simplex chronicus"


# Clinical names and abbreviations a model writes, spelled out here rather than read from the table they check
@pytest.mark.parametrize("text,label", [
    ("scc", "squamous cell carcinoma"), ("SSM", "superficial spreading melanoma ssm"),
    ("superficial spreading melanoma", "superficial spreading melanoma ssm"),
    ("morpheaform basal cell carcinoma", "basal cell carcinoma morpheiform"), ("nevus", "nevocytic nevus"),
    ("mole", "nevocytic nevus"), ("sebaceous nevus", "nevus sebaceous of jadassohn"),
    ("lichen simplex chronicus", "lichen simplex"), ("hidradenitis suppurativa", "hidradenitis"),
    ("telangiectasia", "telangiectases"), ("pemphigoid gestationis", "acquired autoimmune bullous diseaseherpes gestationis"),
    ("herpes gestationis", "acquired autoimmune bullous diseaseherpes gestationis"),
    ("confluent and reticulated papillomatosis", "papilomatosis confluentes and reticulate"),
    ("fixed drug eruption", "fixed eruptions"), ("erythema migrans", "lyme disease"),
    ("cutaneous T-cell lymphoma", "mycosis fungoides"), ("CTCL", "mycosis fungoides"), ("xanthoma", "xanthomas"),
])
def test_clinical_names_and_abbreviations_map_to_their_label(text, label):
    assert canonicalize(text) == label


CLINICALLY_EQUAL = [  # Fitzpatrick17k's README: separate classes naming one disease
    {"pyogenic granuloma", "granuloma pyogenic"}, {"acne", "acne vulgaris"},
    {"melanoma", "malignant melanoma", "superficial spreading melanoma ssm", "lentigo maligna"},
    {"basal cell carcinoma", "basal cell carcinoma morpheiform", "solid cystic basal cell carcinoma"},
    {"lupus erythematosus", "lupus subacute"}, {"lichen simplex", "neurodermatitis"},
    {"porokeratosis actinic", "disseminated actinic porokeratosis"}, {"eczema", "dyshidrotic eczema"},
]


@pytest.mark.parametrize("group", CLINICALLY_EQUAL, ids=lambda g: sorted(g)[0])
def test_each_synonym_group_is_exactly_its_clinically_equal_labels(group):
    for label in group:
        assert synonym_group(label) == frozenset(group)


def test_british_spellings_accents_and_possessives_merge():
    assert normalize_text("Haemangioma") == "hemangioma" and normalize_text("OEDEMA") == "edema"
    assert normalize_text("Behçet's disease") == "behcet disease"
    assert canonicalize("Seborrhoeic keratosis") == "seborrheic keratosis"
