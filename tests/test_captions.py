"""Captions files (CSV / JSONL, fields or free text) and Stage I's caption requirement."""

import json

import pandas as pd
import pytest

from skinflow.data.captions import CaptionsError, read_captions
from skinflow.data.datamodule import Fitzpatrick17kDataModule
from skinflow.data.formats import Target
from skinflow.rl.rewards import caption_fields_reward


def test_csv_with_field_columns(tmp_path):
    path = tmp_path / "c.csv"
    pd.DataFrame({"md5hash": ["a", "b"], "colour": ["red", ""], "lesion_type": ["plaque", "papule"]}).to_csv(path, index=False)
    assert read_captions(path) == {"a": {"colour": "red", "lesion type": "plaque"}, "b": {"lesion type": "papule"}}


def test_jsonl_free_text_is_split_when_schema_shaped_and_kept_whole_otherwise(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"md5hash": "a", "caption": "colour: brown; border: irregular"},
        {"md5hash": "b", "caption": "A  brown irregular macule."},
    ]))
    assert read_captions(path) == {"a": {"colour": "brown", "border": "irregular"}, "b": {"text": "A brown irregular macule."}}


@pytest.mark.parametrize("content, message", [
    ('{"md5hash": "a", "caption": "x"}\n{"md5hash": "a", "caption": "y"}', r"line 2: md5hash a appears twice"),
    ('{"md5hash": "a", "caption": "x"}\nnot json', r"line 2: not valid JSON"),
    ('{"caption": "x"}', r"line 1: no md5hash"),
    ('{"md5hash": "a", "notes": "x"}', r"line 1 \(md5hash a\): no caption field"),
])
def test_bad_captions_name_the_file_and_line(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(CaptionsError, match=rf"bad\.jsonl {message}"):
        read_captions(path)


def test_free_text_reference_scores_token_f1():
    target = Target("psoriasis", "inflammatory", "non-neoplastic", caption={"text": "red scaly plaque"})
    good = "<caption>\ncolour: red\nsurface: scaly\nlesion type: plaque\n</caption>"
    half = "<caption>\ncolour: red\n</caption>"
    assert caption_fields_reward([good, half, "nothing"], [target] * 3).tolist() == pytest.approx([1.0, 0.5, 0.0])


def test_require_caption_leaves_out_and_counts_uncaptioned_records(synth_dir, tmp_path, tiny):
    labels = pd.read_csv(synth_dir / "labels.csv", dtype=str, keep_default_na=False)
    csv = tmp_path / "labels.csv"
    labels.drop(columns=[c for c in labels.columns if c in ("colour", "location", "shape", "lesion_type", "size", "border",
                                                            "surface", "distribution")]).to_csv(csv, index=False)
    captioned = labels["md5hash"].iloc[::3].tolist()
    captions = tmp_path / "captions.csv"
    pd.DataFrame({"md5hash": captioned + ["not-in-data"], "caption": ["red round plaque"] * (len(captioned) + 1)}).to_csv(captions, index=False)
    dm = Fitzpatrick17kDataModule(csv_path=str(csv), image_dir=str(synth_dir / "images"), cache_dir=str(tmp_path / "cache"),
                                  progress=False, captions_path=str(captions), require_caption=True, prompt="caption")
    dm.setup()
    kept = sum(len(ds) for ds in dm.splits.values())
    dropped = sum(dm.report["without_caption_dropped"].values())
    assert kept == len(captioned) and kept + dropped == len(labels)
    assert dm.report["captions"] == {"file": str(captions), "entries": len(captioned) + 1, "matched": len(captioned),
                                     "unmatched_entries": 1, "free_text": len(captioned) + 1}
    target = dm.splits["train"].target(dm.splits["train"].records[0])
    assert target.caption == {"text": "red round plaque"}
