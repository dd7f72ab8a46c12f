import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from skinflow.data.datamodule import DataError, Fitzpatrick17kDataModule, differential
from skinflow.data.ontology import ONTOLOGY
from tests.conftest import require_real_sample


def make_dm(tmp_path, csv, **kw):
    kw.setdefault("image_dir", str(csv.parent / "images"))
    return Fitzpatrick17kDataModule(csv_path=str(csv), cache_dir=str(tmp_path / "cache"), progress=False, **kw)


def copy_dataset(src, dst):
    shutil.copytree(src, dst)
    return dst / "labels.csv"


def test_synthetic_default_generates_splits_and_batches(tmp_path, tiny):
    model, processor = tiny
    dm = Fitzpatrick17kDataModule(cache_dir=str(tmp_path), synthetic_per_class=5, progress=False, batch_size=4)
    dm.processor = processor
    dm.prepare_data()
    dm.setup("fit")
    sizes = dm.report["splits"]
    assert sum(sizes.values()) == 75 and min(sizes.values()) > 0
    assert "warnings" not in dm.report  # drawn afresh: no near-duplicate warning for the embedded lesions
    batch = next(iter(dm.train_dataloader()))
    assert batch["image_grid_thw"].tolist() == [[1, 8, 8]] * 4
    assert batch["pixel_values"].shape == (4 * 64, 3 * 2 * 14 * 14)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    # only target tokens are supervised, and the supervised text is caption then answer
    row = batch["labels"][0]
    text = processor.tokenizer.decode(row[row != -100])
    assert text.startswith("<caption>") and "</answer>" in text and "<|vision_start|>" not in text
    assert batch["prompt_ids"].shape[1] < batch["input_ids"].shape[1]
    n_image = (batch["prompt_ids"] == processor.image_token_id).sum(1)
    assert n_image.tolist() == [16] * 4


def test_splits_are_disjoint_by_md5(tmp_path, synth_dir):
    dm = make_dm(tmp_path, synth_dir / "labels.csv")
    dm.setup()
    hashes = {name: {r["md5hash"] for r in ds.records} for name, ds in dm.splits.items()}
    assert not (hashes["train"] & hashes["test"]) and not (hashes["val"] & hashes["test"]) and not (hashes["train"] & hashes["val"])


def test_missing_and_corrupt_images_are_counted_reported_and_skipped(tmp_path, synth_dir):
    csv = copy_dataset(synth_dir, tmp_path / "data")
    rows = pd.read_csv(csv, dtype=str)
    (csv.parent / "images" / f"{rows.md5hash[0]}.jpg").unlink()
    (csv.parent / "images" / f"{rows.md5hash[1]}.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    dm = make_dm(tmp_path, csv)
    with pytest.warns(UserWarning, match="2 of 90 images"):
        dm.prepare_data()
    dm.setup()
    bad = {b["md5hash"]: b["reason"] for b in dm.report["bad_images"]}
    assert bad[rows.md5hash[0]] == "missing" and bad[rows.md5hash[1]].startswith("unreadable")
    assert dm.report["kept"] == 88 and sum(dm.report["splits"].values()) == 88
    report = json.loads((dm._table_dir() / "report.json").read_text())
    assert len(report["bad_images"]) == 2
    strict = make_dm(tmp_path / "strict", csv, strict_images=True)
    with pytest.raises(DataError, match=rows.md5hash[0]):
        strict.prepare_data()


def test_missing_column_fails_naming_it(tmp_path, synth_dir):
    csv = copy_dataset(synth_dir, tmp_path / "data")
    pd.read_csv(csv).drop(columns=["fitzpatrick_scale"]).to_csv(csv, index=False)
    with pytest.raises(DataError, match="'fitzpatrick_scale' is missing"):
        make_dm(tmp_path, csv).prepare_data()


def test_unknown_label_fails_naming_the_row(tmp_path, synth_dir):
    csv = copy_dataset(synth_dir, tmp_path / "data")
    df = pd.read_csv(csv)
    df.loc[4, "label"] = "dragon pox"
    df.to_csv(csv, index=False)
    with pytest.raises(DataError, match=r"row 6 .*'dragon pox'"):
        make_dm(tmp_path, csv).prepare_data()


@pytest.mark.parametrize("bad_id", ["../../outside", "/etc/passwd", "..", "E438AC94425903AE88EF3DE457DEBCFC"])
def test_ids_that_are_not_plain_file_names_or_md5s_fail_naming_the_row(tmp_path, synth_dir, bad_id):
    """An md5hash names the image file it is read from: traversal and absolute paths never reach the file system."""
    csv = copy_dataset(synth_dir, tmp_path / "data")
    df = pd.read_csv(csv, keep_default_na=False)
    df.loc[5, "md5hash"] = bad_id
    df.to_csv(csv, index=False)
    with pytest.raises(DataError, match=rf"row 7: md5hash {re.escape(repr(bad_id))} is not a valid image id"):
        make_dm(tmp_path, csv).prepare_data()
    # a permissive id pattern still refuses a path
    if "/" in bad_id or bad_id == "..":
        with pytest.raises(DataError, match="row 7"):
            make_dm(tmp_path, csv, id_pattern=r".*").prepare_data()


def test_other_id_patterns_are_declared_and_then_load(tmp_path, synth_dir):
    csv = copy_dataset(synth_dir, tmp_path / "data")
    df = pd.read_csv(csv, keep_default_na=False)
    (csv.parent / "images" / f"{df.md5hash[0]}.jpg").rename(csv.parent / "images" / "case_0001.jpg")
    df.loc[0, "md5hash"] = "case_0001"
    df.to_csv(csv, index=False)
    with pytest.raises(DataError, match=r"row 2: md5hash 'case_0001'"):
        make_dm(tmp_path, csv).prepare_data()
    dm = make_dm(tmp_path, csv, id_pattern=r"[0-9a-f]{32}|case_\d{4}")
    dm.prepare_data()
    dm.setup()
    assert "case_0001" in {r["md5hash"] for ds in dm.splits.values() for r in ds.records}


def test_duplicates_and_wrongly_labelled_rows_are_dropped_and_counted(tmp_path, synth_dir):
    csv = copy_dataset(synth_dir, tmp_path / "data")
    df = pd.read_csv(csv, keep_default_na=False, dtype={"qc": str})
    df.loc[3, "qc"] = "3 Wrongly labelled"
    df = pd.concat([df, df.iloc[[7]]])
    df.to_csv(csv, index=False)
    dm = make_dm(tmp_path, csv)
    with pytest.warns(UserWarning, match="repeat an md5hash"):
        dm.prepare_data()
    dm.setup()
    assert dm.report["duplicate_md5hash"] == [df.md5hash.iloc[7]]
    assert dm.report["wrongly_labelled_dropped"] == 1 and dm.report["kept"] == 89


def test_record_table_is_cached(tmp_path, synth_dir, monkeypatch):
    dm = make_dm(tmp_path, synth_dir / "labels.csv")
    dm.prepare_data()
    again = make_dm(tmp_path, synth_dir / "labels.csv")
    monkeypatch.setattr(Fitzpatrick17kDataModule, "clean_table", lambda *a: pytest.fail("cache not used"))
    again.prepare_data()
    again.setup()
    assert sum(again.report["splits"].values()) == 90


def test_label_filters(tmp_path, synth_dir):
    dm = make_dm(tmp_path, synth_dir / "labels.csv", labels=["psoriasis", "melanoma"])
    dm.setup()
    assert {r["label"] for ds in dm.splits.values() for r in ds.records} == {"psoriasis", "melanoma"}
    dm = make_dm(tmp_path, synth_dir / "labels.csv", min_images_per_label=7)
    dm.setup()
    assert sum(dm.report["splits"].values()) == 0
    with pytest.raises(DataError, match="dragon"):
        make_dm(tmp_path, synth_dir / "labels.csv", labels=["dragon"]).setup()


def test_differential_ranks_by_label_tree():
    ranked = differential("melanoma", ["psoriasis", "nevocytic nevus", "malignant melanoma", "basal cell carcinoma", "melanoma"], {})
    assert ranked[0] == "melanoma" and ranked[1] == "malignant melanoma"
    assert ONTOLOGY.three(ranked[2]) == "malignant" and ranked[-1] == "psoriasis"
    assert len(differential("psoriasis", list(ONTOLOGY.labels), ONTOLOGY.counts)) == 6


def test_real_sample(tmp_path, tiny):
    root = require_real_sample()
    dm = Fitzpatrick17kDataModule(csv_path=str(root / "labels.csv"), cache_dir=str(tmp_path), progress=False,
                                  split="random", val_fraction=0.1, test_fraction=0.2, batch_size=8)
    dm.processor = tiny[1]
    dm.setup()
    assert dm.report["rows"] == 1500 and dm.report["wrongly_labelled_dropped"] == 2 and not dm.report["bad_images"]
    assert len(dm.report["labels"]) == 21
    # stratified: every label's share of each split is its fraction, to within one image of rounding
    counts = {name: pd.Series([r["label"] for r in ds.records]).value_counts() for name, ds in dm.splits.items()}
    per_label = sum(counts.values())
    for name, fraction in (("val", 0.1), ("test", 0.2)):
        assert ((counts[name] - fraction * per_label).abs() <= 1).all()
    batch = next(iter(dm.val_dataloader()))
    assert batch["pixel_values"].dtype == torch.float32 and len(batch["targets"]) == 8
    # real records carry no caption: the target is the answer block alone
    row = batch["labels"][0]
    assert tiny[1].tokenizer.decode(row[row != -100]).startswith("<answer>")


def test_real_sample_fst_holdout_keeps_unknown_types_in_test(tmp_path):
    root = require_real_sample()
    dm = Fitzpatrick17kDataModule(csv_path=str(root / "labels.csv"), cache_dir=str(tmp_path), progress=False, split="a56")
    dm.setup()
    train_fst = {r["fitzpatrick_scale"] for r in dm.splits["train"].records}
    test_fst = {r["fitzpatrick_scale"] for r in dm.splits["test"].records}
    assert train_fst <= {5, 6} and -1 in test_fst and not (test_fst & {5, 6})
    assert np.isin([r["label"] for r in dm.splits["test"].records], [r["label"] for r in dm.splits["train"].records]).all()


# -- near-duplicate clusters and exclusions ----------------------------------------------------------------------
def test_clusters_exclusions_and_the_clean_split_are_reported(tmp_path, synth_dir):
    from skinflow.data.splits import clusters_on_two_sides

    df = pd.read_csv(synth_dir / "labels.csv", dtype=str)
    by_label = df.groupby("label")["md5hash"].apply(list)
    clusters = pd.DataFrame([{"md5hash": m, "cluster": f"c{k}", "keep": int(j == 0)}
                             for k, label in enumerate(by_label.index[:4]) for j, m in enumerate(by_label[label][:3])])
    clusters.to_csv(tmp_path / "clusters.csv", index=False)
    excluded = by_label[by_label.index[5]][:2]
    pd.DataFrame({"md5hash": [*excluded, "f" * 32]}).to_csv(tmp_path / "exclude.csv", index=False)
    common = dict(clusters_path=str(tmp_path / "clusters.csv"), exclude_path=str(tmp_path / "exclude.csv"))

    dm = make_dm(tmp_path, synth_dir / "labels.csv", split="random", **common)
    dm.setup()
    kept = {m for ds in dm.splits.values() for m in ds.records["md5hash"]}
    assert not kept & set(excluded)
    assert dm.report["excluded"] == {"file": str(tmp_path / "exclude.csv"), "listed": 3, "excluded": 2, "listed_not_in_data": 1}
    side = pd.Series({m: name for name, ds in dm.splits.items() for m in ds.records["md5hash"]})
    groups = pd.Series(dict(zip(clusters.md5hash, clusters.cluster))).reindex(side.index)
    assert clusters_on_two_sides(side, groups) == []
    report = dm.report["clusters"]
    assert report["clusters_in_data"] == 4 and sum(report["clusters_per_split"].values()) == 4
    assert "warnings" not in dm.report

    clean = make_dm(tmp_path, synth_dir / "labels.csv", split="clean", **common)
    clean.setup()
    assert clean.report["clusters"]["merged_by_clean"] == 8  # 4 clusters of 3 -> 4 images
    assert sum(clean.report["splits"].values()) == sum(dm.report["splits"].values()) - 8
    kept = {m for ds in clean.splits.values() for m in ds.records["md5hash"]}
    assert set(clusters.md5hash[clusters.keep == 1]) <= kept and not set(clusters.md5hash[clusters.keep == 0]) & kept


def test_without_clusters_the_report_warns_and_clean_refuses(tmp_path, synth_dir):
    dm = make_dm(tmp_path, synth_dir / "labels.csv")
    dm.setup()
    assert any("near-duplicates were not checked" in w for w in dm.report["warnings"])
    with pytest.raises(DataError, match="split 'clean' needs clusters_path"):
        make_dm(tmp_path, synth_dir / "labels.csv", split="clean").setup()
    with pytest.raises(DataError, match=r"clusters file not found: .*nowhere.csv"):
        make_dm(tmp_path, synth_dir / "labels.csv", clusters_path=str(tmp_path / "nowhere.csv")).setup()
    (tmp_path / "bad.csv").write_text("md5hash,group\nabc,1\n")
    with pytest.raises(DataError, match=r"bad.csv has no 'cluster' column"):
        make_dm(tmp_path, synth_dir / "labels.csv", clusters_path=str(tmp_path / "bad.csv")).setup()


def test_mix_train_joins_a_second_training_split_and_keeps_evaluation_our_own(tmp_path, synth_dir, tiny):
    """Real photographs have no caption fields; ``mix_train`` adds the synthetic lesions' training split (with
    their captions) to the training split alone: every record of both is trained on once an epoch, items keep
    their own captions and seeds, validation and test are untouched, and the report counts what came in."""
    from skinflow.data.datamodule import MixedRecords
    from skinflow.data.formats import CAPTION_COLUMNS
    from skinflow.data.order import EpochShuffle

    data = tmp_path / "plain"
    data.mkdir()
    rows = pd.read_csv(synth_dir / "labels.csv", dtype=str, keep_default_na=False)
    rows.drop(columns=[c for c in CAPTION_COLUMNS.values() if c in rows.columns]).to_csv(data / "labels.csv", index=False)
    alone = make_dm(tmp_path, data / "labels.csv", image_dir=str(synth_dir / "images"))
    alone.setup("fit")
    other = {"csv_path": str(synth_dir / "labels.csv"), "cache_dir": str(tmp_path / "cache2"), "split_seed": 5}
    dm = make_dm(tmp_path, data / "labels.csv", image_dir=str(synth_dir / "images"), mix_train=other, seed=3)
    dm.setup("fit")
    mixed = dm.splits["train"]
    assert isinstance(mixed, MixedRecords)
    ours, theirs = mixed.parts
    assert len(ours) == len(alone.splits["train"]) and len(mixed) == len(ours) + len(theirs)
    assert {k: len(v) for k, v in dm.splits.items() if k != "train"} == {k: len(v) for k, v in alone.splits.items() if k != "train"}
    assert dm.report["splits"]["train"] == len(mixed)
    assert dm.report["mixed_in"]["train"] == len(theirs) == dm.report["mixed_in"]["with_caption"]
    # index i < len(ours) is ours, the rest theirs in order, with their own captions; keys keep their seeds
    first, last = mixed[(0, 11)], mixed[(len(mixed) - 1, 11)]
    assert first["target"].md5hash == ours.records[0]["md5hash"] and first["target"].caption is None
    assert last["target"].md5hash == theirs.records[len(theirs) - 1]["md5hash"] and last["target"].caption
    assert np.array_equal(mixed[(len(ours), 7)]["image"], theirs[(0, 7)]["image"])
    with pytest.raises(IndexError, match=f"index {len(mixed)} outside"):
        mixed[len(mixed)]
    order = EpochShuffle(len(mixed), 3)
    assert sorted(key[0] for key in order) == list(range(len(mixed)))
    # a mixed-prompt batch: caption targets only for the items that have a caption
    dm.hparams.prompt = "mixed"
    dm.processor = tiny[1]
    tok = tiny[1].tokenizer
    written = {True: 0, False: 0}
    for batch, _ in zip(dm.train_dataloader(), range(6)):
        for row, target in zip(batch["labels"], batch["targets"]):
            text = tok.decode(row[row != -100])
            if target.caption is None:
                assert "<caption>" not in text, text
            written[target.caption is not None] += 1
    assert written[True] and written[False]  # both sources reach the batches


@pytest.mark.parametrize("bad, named", [({"image_size": 224}, "image_size"), ({"bogus": 1}, "bogus"),
                                        ({"mix_train": {}}, "mix_train")])
def test_mix_train_refuses_keys_that_follow_the_datamodule_or_do_not_exist(tmp_path, synth_dir, bad, named):
    from skinflow.errors import ConfigError

    with pytest.raises(ConfigError, match=rf"mix_train=.*{named}"):
        make_dm(tmp_path, synth_dir / "labels.csv", mix_train=bad)


def test_mix_train_generates_the_embedded_synthetic_lesions_on_first_use(tmp_path, synth_dir):
    dm = make_dm(tmp_path, synth_dir / "labels.csv", mix_train={"synthetic_per_class": 2, "cache_dir": str(tmp_path / "fresh")})
    dm.setup("fit")
    assert (tmp_path / "fresh").is_dir() and dm.report["mixed_in"]["with_caption"] == dm.report["mixed_in"]["train"] > 0
