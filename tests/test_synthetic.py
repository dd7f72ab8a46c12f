import collections
import csv
import hashlib

from skinflow.data.formats import CAPTION_COLUMNS
from skinflow.data.ontology import ONTOLOGY
from skinflow.data.synthetic import CLASS_KEY_ATTRIBUTES, LESION_CLASSES, generate


def test_at_least_12_real_labels_spanning_all_partitions():
    labels = [c.label for c in LESION_CLASSES]
    assert len(set(labels)) >= 12
    assert all(label in ONTOLOGY for label in labels)
    assert {ONTOLOGY.three(label) for label in labels} == {"benign", "malignant", "non-neoplastic"}


def test_class_follows_from_a_combination_never_from_one_attribute():
    keys = [tuple(getattr(c, a) for a in CLASS_KEY_ATTRIBUTES) for c in LESION_CLASSES]
    assert len(set(keys)) == len(keys), "two classes share every key attribute"
    for attribute in CLASS_KEY_ATTRIBUTES:
        counts = collections.Counter(getattr(c, attribute) for c in LESION_CLASSES)
        assert min(counts.values()) >= 2, f"{attribute} alone identifies a class: {counts}"


def _digest(folder):
    h = hashlib.sha256((folder / "labels.csv").read_bytes())
    for path in sorted((folder / "images").iterdir()):
        h.update(path.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = generate(tmp_path / "a", per_class=2, seed=7, progress=False).parent
    b = generate(tmp_path / "b", per_class=2, seed=7, progress=False).parent
    c = generate(tmp_path / "c", per_class=2, seed=8, progress=False).parent
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)


def test_csv_has_fitzpatrick_columns_captions_and_all_skin_levels(synth_dir):
    rows = list(csv.DictReader(open(synth_dir / "labels.csv")))
    assert len(rows) == 6 * len(LESION_CLASSES)
    assert {int(r["fitzpatrick_scale"]) for r in rows} == {1, 2, 3, 4, 5, 6}
    for row in rows:
        assert (synth_dir / "images" / f"{row['md5hash']}.jpg").exists()
        assert hashlib.md5((synth_dir / "images" / f"{row['md5hash']}.jpg").read_bytes()).hexdigest() == row["md5hash"]
        assert row["nine_partition_label"] == ONTOLOGY.nine(row["label"])
        assert all(row[col] for col in CAPTION_COLUMNS.values())


def test_cli_synth_command(tmp_path, capsys):
    from skinflow.cli import main

    main(["synth", "--out", str(tmp_path / "s"), "--per-class", "1", "--seed", "1"])
    rows = list(csv.DictReader(open(tmp_path / "s" / "labels.csv")))
    assert len(rows) == len(LESION_CLASSES)
