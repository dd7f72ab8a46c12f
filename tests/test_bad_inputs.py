"""The corpus of bad inputs (issue 14, items 3-5), one test per case, each built by the test itself: every one
gets a clear error naming the file, row or key, or a counted skip; nothing is silently coerced, dropped or
re-created. (Cases covered elsewhere: traversal and absolute ids, tests/test_datamodule.py; stage names,
tests/test_pipeline.py; SIGTERM and resume, tests/test_resume.py; init_from, tests/test_grpo_stage.py.)"""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from skinflow.data.captions import CaptionsError, read_captions
from skinflow.data.datamodule import DataError, Fitzpatrick17kDataModule
from skinflow.data.transforms import to_rgb
from tests.conftest import REPO


def dataset(synth_dir, tmp_path):
    shutil.copytree(synth_dir, tmp_path / "data")
    return tmp_path / "data" / "labels.csv"


def make_dm(tmp_path, csv, **kw):
    kw.setdefault("image_dir", str(csv.parent / "images"))
    return Fitzpatrick17kDataModule(csv_path=str(csv), cache_dir=str(tmp_path / "cache"), progress=False, **kw)


# -- the CSV --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["0", "7", "abc", "3.7", ""])
def test_a_skin_type_outside_1_to_6_fails_naming_the_row(synth_dir, tmp_path, value):
    csv = dataset(synth_dir, tmp_path)
    df = pd.read_csv(csv, dtype=str, keep_default_na=False)
    df.loc[4, "fitzpatrick_scale"] = value
    df.to_csv(csv, index=False)
    with pytest.raises(DataError, match=rf"labels\.csv row 6 \(md5hash {df.md5hash[4]}\): fitzpatrick_scale '{value}' is not"):
        make_dm(tmp_path, csv).prepare_data()


def test_unknown_skin_type_minus_one_and_integral_floats_are_kept(synth_dir, tmp_path):
    csv = dataset(synth_dir, tmp_path)
    df = pd.read_csv(csv, dtype=str, keep_default_na=False)
    df.loc[0, "fitzpatrick_scale"], df.loc[1, "fitzpatrick_scale"] = "-1", "4.0"
    df.to_csv(csv, index=False)
    table = make_dm(tmp_path, csv).read_csv()
    assert table["fitzpatrick_scale"].iloc[:2].tolist() == [-1, 4]


def test_a_missing_image_folder_is_named(synth_dir, tmp_path):
    csv = dataset(synth_dir, tmp_path)
    with pytest.raises(DataError, match=r"image folder not found: .*nowhere"):
        make_dm(tmp_path, csv, image_dir=str(tmp_path / "nowhere")).prepare_data()


def test_a_folder_with_none_of_the_images_is_named_not_an_index_error(synth_dir, tmp_path):
    csv = dataset(synth_dir, tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.warns(UserWarning), pytest.raises(DataError, match=r"none of its 90 rows has a usable image in .*empty"):
        make_dm(tmp_path, csv, image_dir=str(tmp_path / "empty")).prepare_data()


# -- images ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["I;16", "I", "F", "LA", "P", "CMYK"])
def test_other_image_modes_convert_to_the_right_grey_levels(tmp_path, mode):
    """A mid-grey ramp in each mode comes out as the same 8-bit ramp (16-bit PNGs used to become white)."""
    ramp = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (4, 1))  # 0 .. 240
    if mode == "I;16":
        img = Image.fromarray(ramp.astype(np.uint16) * 257)
        img.save(tmp_path / "x.png")
        img = Image.open(tmp_path / "x.png")
        assert img.mode.startswith("I;16")
    elif mode == "I":
        img = Image.fromarray(ramp.astype(np.int32) * 257)
    elif mode == "F":
        img = Image.fromarray(ramp.astype(np.float32) / 255.0)
    else:
        img = Image.fromarray(ramp).convert(mode)
    rgb = to_rgb(img)
    assert rgb.shape == (4, 16, 3) and rgb.dtype == np.uint8
    expected = ramp if mode != "CMYK" else np.asarray(Image.fromarray(ramp).convert("CMYK").convert("RGB"))[..., 0]
    assert np.abs(rgb[..., 0].astype(int) - expected).max() <= 1


def test_an_image_damaged_after_caching_is_skipped_and_counted_not_a_crash(synth_dir, tmp_path, tiny):
    csv = dataset(synth_dir, tmp_path)
    dm = make_dm(tmp_path, csv, batch_size=4)
    dm.processor = tiny[1]
    dm.setup()
    victim = dm.splits["train"].records[0]["image_file"]
    path = csv.parent / "images" / victim
    path.write_bytes(b"\xff\xd8\xff broken")  # damaged while the run uses the table built before
    batches = list(dm.train_dataloader())
    seen = sum(len(b["targets"]) for b in batches)
    assert seen == len(dm.splits["train"]) - 1
    for b in batches:
        dm.on_after_batch_transfer(b, 0)
    assert len(dm.skipped_at_load) == 1 and victim in dm.skipped_at_load[0]
    assert all("skipped_images" not in b for b in batches)  # taken out before the model sees the batch


# -- the cache ------------------------------------------------------------------------------------------------
def test_strict_mode_is_honoured_after_a_lenient_run_cached_the_table(synth_dir, tmp_path):
    csv = dataset(synth_dir, tmp_path)
    md5 = pd.read_csv(csv, dtype=str).md5hash[0]
    (csv.parent / "images" / f"{md5}.jpg").unlink()
    with pytest.warns(UserWarning, match="1 of 90"):
        make_dm(tmp_path, csv).prepare_data()
    with pytest.raises(DataError, match=md5):
        make_dm(tmp_path, csv, strict_images=True).prepare_data()


def test_an_image_rewritten_in_place_rebuilds_the_table(synth_dir, tmp_path):
    csv = dataset(synth_dir, tmp_path)
    first = make_dm(tmp_path, csv)
    first.prepare_data()
    before = first._table_dir()
    md5 = pd.read_csv(csv, dtype=str).md5hash[0]
    path = csv.parent / "images" / f"{md5}.jpg"
    path.write_bytes(b"\x00" * path.stat().st_size)  # same size, damaged
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    second = make_dm(tmp_path, csv)
    assert second._table_dir() != before
    with pytest.warns(UserWarning, match=rf"1 of 90 images .* {md5} \(unreadable"):
        second.prepare_data()  # the rebuilt table checked the damaged image again


def test_a_cache_missing_its_report_is_rebuilt(synth_dir, tmp_path):
    csv = dataset(synth_dir, tmp_path)
    dm = make_dm(tmp_path, csv)
    dm.prepare_data()
    (dm._table_dir() / "report.json").unlink()  # what a crash mid-write used to leave
    again = make_dm(tmp_path, csv)
    again.setup()
    assert json.loads((again._table_dir() / "report.json").read_text())["kept"] == 90
    assert not list(again._table_dir().parent.glob("*.partial-*"))


def test_a_truncated_arrow_file_in_the_cache_is_rebuilt(synth_dir, tmp_path, caplog):
    csv = dataset(synth_dir, tmp_path)
    dm = make_dm(tmp_path, csv)
    dm.prepare_data()
    (arrow,) = dm._table_dir().glob("*.arrow")
    arrow.write_bytes(arrow.read_bytes()[: arrow.stat().st_size // 3])  # a disk that filled mid-write
    again = make_dm(tmp_path, csv)
    with caplog.at_level("WARNING"):
        again.setup()
    assert "is damaged" in caplog.text and "rebuilding it" in caplog.text
    assert sum(len(split) for split in again.splits.values()) == 90  # every image, from the rebuilt table


# -- captions -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("key,meant", [("colur", "colour"), ("lesion-type", "lesion_type"), ("surfaces", "surface")])
def test_a_misspelt_caption_key_fails_naming_it(tmp_path, key, meant):
    path = tmp_path / "captions.csv"
    pd.DataFrame({"md5hash": ["a" * 32], "shape": ["round"], key: ["red"]}).to_csv(path, index=False)
    with pytest.raises(CaptionsError, match=rf"row 2 .*unknown key '{key}'; did you mean '{meant}'"):
        read_captions(path)


def test_unrelated_extra_caption_columns_are_ignored(tmp_path):
    path = tmp_path / "captions.csv"
    pd.DataFrame({"md5hash": ["a" * 32], "colour": ["red"], "notes": ["x"], "label": ["psoriasis"]}).to_csv(path, index=False)
    assert read_captions(path) == {"a" * 32: {"colour": "red"}}


# -- model settings -------------------------------------------------------------------------------------------
def test_max_new_tokens_too_small_for_the_answer_warns(synth_dir, tmp_path):
    import lightning as L

    from skinflow.stages.grpo import GRPOStage

    dm = make_dm(tmp_path, synth_dir / "labels.csv", prompt="caption", batch_size=2, image_size=56)
    stage = GRPOStage(max_new_tokens=8, group_size=2)
    trainer = L.Trainer(max_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(stage)
    trainer.datamodule = dm
    stage.trainer = trainer
    dm.trainer = trainer
    dm.setup()
    with pytest.warns(UserWarning, match=r"max_new_tokens=8 is shorter than the 'caption' answers need \(up to \d+ tokens"):
        needed = stage.check_answer_room()
    stage.max_new_tokens = needed
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert stage.check_answer_room() == needed


def test_a_damaged_resume_checkpoint_fails_naming_the_file(tmp_path, monkeypatch, capsys):
    from skinflow.cli import main

    bad = tmp_path / "broken.ckpt"
    bad.write_bytes(b"not a checkpoint")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mlruns").mkdir()
    from skinflow.tracking.store import ensure_experiment

    ensure_experiment(f"sqlite:///{tmp_path}/mlruns/mlflow.db", "skinflow", str(tmp_path / "mlruns" / "artifacts"))
    with pytest.raises(SystemExit) as stop:  # a user error: one line, status 2
        main(["fit", "--config", str(REPO / "configs/experiment/warmup_tiny_synthetic.yaml"), f"--ckpt_path={bad}",
              f"--data.init_args.cache_dir={tmp_path / 'cache'}", "--data.init_args.synthetic_per_class=2"])
    assert stop.value.code == 2
    assert re.search(r"^error: checkpoint .*broken\.ckpt could not be read", capsys.readouterr().err, re.M)


# -- the MLflow store -----------------------------------------------------------------------------------------
def test_read_only_commands_never_create_a_store(tmp_path, capsys):
    from skinflow.cli import main

    uri = f"sqlite:///{tmp_path}/typo/mlflow.db"
    for command in (["compare", "--experiment", "x", "--tracking-uri", uri], ["report", "--run-id", "abc", "--tracking-uri", uri]):
        with pytest.raises(SystemExit) as stop:
            main(command)
        assert stop.value.code == 2
        assert "no MLflow store at" in capsys.readouterr().err
    assert not (tmp_path / "typo").exists()


def test_an_empty_store_file_is_refused_not_re_initialised(tmp_path, capsys):
    from skinflow.cli import main

    (tmp_path / "mlflow.db").write_bytes(b"")
    with pytest.raises(SystemExit):
        main(["compare", "--experiment", "x", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"])
    assert "is an empty file, not an MLflow store" in capsys.readouterr().err
    assert (tmp_path / "mlflow.db").stat().st_size == 0


def test_concurrent_first_runs_on_a_fresh_store_both_succeed(tmp_path):
    """Four processes open the same new store and experiment at once (schema creation raced before). Each goes
    through ``ensure_experiment``, the step every logger, pipeline and grid takes first (without importing
    Lightning: four Lightning imports on 2 cores took most of this test's 50 s)."""
    code = ("import sys; from skinflow.tracking.store import open_experiment; "
            "client, exp, _ = open_experiment('skinflow', sys.argv[1], sys.argv[2]); run = client.create_run(exp); "
            "client.log_metric(run.info.run_id, 'm', 1.0); client.set_terminated(run.info.run_id); print(run.info.run_id)")
    uri, artifacts = f"sqlite:///{tmp_path}/mlruns/mlflow.db", str(tmp_path / "mlruns" / "artifacts")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", code, uri, artifacts], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [o[1][-2000:] for o in outs]
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    (experiment,) = [e for e in client.search_experiments() if e.name == "skinflow"]
    assert len(client.search_runs([experiment.experiment_id])) == 4


def test_compare_keeps_different_configs_apart_unless_asked(tmp_path):
    from skinflow.analysis.compare import CompareError, compare
    from skinflow.tracking.store import open_experiment

    client, exp, uri = open_experiment("cmp", f"sqlite:///{tmp_path}/mlflow.db", str(tmp_path / "artifacts"))
    for name, key, value in [("a", "k1", 0.5), ("a", "k1", 0.7), ("a", "k2", 0.1)]:
        run = client.create_run(exp, run_name=name, tags={"skinflow.config_key": key})
        client.log_metric(run.info.run_id, "test/top1_exact", value)
        client.set_terminated(run.info.run_id, "FINISHED")
    with pytest.raises(CompareError, match=r"pools runs of 2 different configs"):
        compare("cmp", ["test/top1_exact"], [], uri, out=tmp_path / "o", level="all")
    by_config = compare("cmp", ["test/top1_exact"], ["config_key"], uri, out=tmp_path / "o", level="all")["summary"].table
    assert sorted(by_config["test/top1_exact_mean"].round(4)) == [0.1, 0.6]
    pooled = compare("cmp", ["test/top1_exact"], [], uri, out=tmp_path / "o", level="all", pool_configs=True)["summary"].table
    assert pooled["n_test/top1_exact"].tolist() == [3]
