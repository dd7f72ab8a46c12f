import numpy as np
import pandas as pd
import pytest

from skinflow.data.splits import assign_splits, source_of


def table(n_labels=6, per_label=30, seed=0):
    rng = np.random.default_rng(seed)
    labels = ["psoriasis", "eczema", "melanoma", "milia", "vitiligo", "kaposi sarcoma"][:n_labels]
    rows = []
    for label in labels:
        for i in range(per_label):
            source = "httpwwwdermaamincomx" if i % 3 else "httpatlasdermatologicocombr"
            rows.append({"md5hash": f"{label[:3]}{i:04d}", "label": label, "fitzpatrick_scale": int(rng.integers(-1, 7)) or 1,
                         "url_alphanum": f"{source}{label}{i}jpg.jpg"})
    return pd.DataFrame(rows)


def test_random_split_is_disjoint_complete_and_stratified():
    df = table()
    split = assign_splits(df, "random", val=0.1, test=0.2, seed=1)
    assert set(split) == {"train", "val", "test"}
    by_split = {s: set(df.md5hash[split == s]) for s in ("train", "val", "test")}
    assert not (by_split["train"] & by_split["test"]) and not (by_split["train"] & by_split["val"]) and not (by_split["val"] & by_split["test"])
    assert sum(map(len, by_split.values())) == len(df)
    counts = pd.crosstab(df.label, split)
    assert (counts["test"] == 6).all() and (counts["val"] == 3).all() and (counts["train"] == 21).all()


def test_same_seed_same_split_other_seed_differs():
    df = table()
    a, b, c = (assign_splits(df, "random", seed=s) for s in (4, 4, 5))
    assert a.equals(b)
    assert not a.equals(c)


def test_small_labels_still_reach_every_split():
    df = table(per_label=3)
    split = assign_splits(df, "random", val=0.1, test=0.2, seed=0)
    assert (pd.crosstab(df.label, split) == 1).all().all()


@pytest.mark.parametrize("preset,kept", [("a12", {1, 2}), ("a34", {3, 4}), ("a56", {5, 6})])
def test_fst_holdout_trains_on_its_types_and_tests_on_the_rest_including_unknown(preset, kept):
    df = table(per_label=60)
    split = assign_splits(df, preset, val=0.1, seed=0)
    fst = df.fitzpatrick_scale
    assert set(fst[split.isin(["train", "val"])]) <= kept
    test_fst = set(fst[split == "test"])
    assert not (test_fst & kept) and -1 in test_fst
    assert set(df.label[split == "test"]) == set(df.label[split == "train"])


def test_fst_holdout_drops_labels_missing_on_one_side():
    df = table(per_label=20)
    df.loc[(df.label == "milia"), "fitzpatrick_scale"] = 6  # milia only on dark skin: absent from a12's train side
    split = assign_splits(df, "a12", seed=0)
    assert (split[df.label == "milia"] == "drop").all()


def test_source_holdout_reads_url_alphanum():
    df = table()
    split = assign_splits(df, "source_dermaamin", seed=0)
    source = source_of(df.url_alphanum)
    assert (source[split == "test"] == "dermaamin").all()
    assert (source[split.isin(["train", "val"])] == "atlas").all()
    assert (split != "drop").all()


def test_manifest_split(tmp_path):
    df = table(n_labels=2, per_label=4)
    manifest = tmp_path / "m.csv"
    pd.DataFrame({"md5hash": df.md5hash[:6], "split": ["train", "train", "val", "test", "test", "train"]}).to_csv(manifest, index=False)
    split = assign_splits(df, "manifest", manifest=manifest)
    assert list(split[:6]) == ["train", "train", "val", "test", "test", "train"]
    assert (split[6:] == "drop").all()


def test_bad_manifest_names_file_and_row(tmp_path):
    manifest = tmp_path / "bad.csv"
    pd.DataFrame({"md5hash": ["a", "b"], "split": ["train", "holdout"]}).to_csv(manifest, index=False)
    with pytest.raises(ValueError, match=r"bad.csv row 3.*holdout"):
        assign_splits(table(), "manifest", manifest=manifest)


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown split preset"):
        assign_splits(table(), "by_moon_phase")
