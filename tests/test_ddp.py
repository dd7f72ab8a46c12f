"""More than one process (issue 14, item 6): the warmup and a GRPO stage as 2-process DDP runs on CPU (gloo),
through the command a user runs. Both ranks finish with identical weights after every optimizer step, each
samples other images, test metrics reduced over the ranks equal one process's on the same images, MLflow and
checkpoints are written once, and a bad input on one rank stops both with its error instead of hanging."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.ddp_probe import read
from tests.test_resume import FAST, STAGE1, WARMUP, client_in

DDP = ["--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp"]


def fit(folder, args, probe: dict, timeout=420, **env_vars):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **env_vars}
    callback = json.dumps({"class_path": "tests.ddp_probe.RankProbe", "init_args": probe})
    return subprocess.run([sys.executable, "-m", "skinflow", *args, f"--trainer.callbacks+={callback}",
                           f"--data.init_args.cache_dir={folder.parent / 'cache'}"],
                          cwd=folder, env=env, capture_output=True, text=True, timeout=timeout)


def the_run(folder):
    client = client_in(folder)
    runs = client.search_runs([client.get_experiment_by_name("skinflow").experiment_id])
    assert len(runs) == 1, [r.info.run_name for r in runs]  # rank 1 opened no run of its own
    return client, runs[0]


def check_ranks(folder, steps: int):
    zero, one = read(folder / "probe", 0), read(folder / "probe", 1)
    assert [r["step"] for r in zero] == [r["step"] for r in one] == list(range(1, steps + 1))
    assert all(a["weights"] == b["weights"] for a, b in zip(zero, one))  # identical after every optimizer step
    assert len({r["weights"] for r in zero}) == steps  # and they did move
    seen0, seen1 = {i for r in zero for i in r["ids"]}, {i for r in one for i in r["ids"]}
    assert seen0 and seen1 and not (set(zero[0]["ids"]) & set(one[0]["ids"]))  # each rank its own images


def test_two_process_warmup_agrees_across_ranks_and_tests_like_one_process(tmp_path):
    folder = tmp_path / "ddp"
    folder.mkdir()
    args = [*WARMUP, *DDP, "--trainer.max_epochs=1", "--test_after_fit=true", "--trainer.limit_test_batches=null"]
    done = fit(folder, args, {"folder": str(folder / "probe")})
    assert done.returncode == 0, done.stderr[-4000:]
    check_ranks(folder, steps=2)  # 27 images, 8 a batch per rank: 2 steps
    client, run = the_run(folder)
    checkpoints = list((folder / "mlruns").rglob("*.ckpt"))
    assert {c.name for c in checkpoints} == {"last.ckpt"}  # written once, by rank 0; no rolling epoch=...ckpt beside it
    ddp = {k: v for k, v in run.data.metrics.items() if k.startswith("test/")}
    # the same checkpoint tested by one process on the same (whole) test split
    single = tmp_path / "single"
    single.mkdir()
    last = next(c for c in checkpoints if c.name == "last.ckpt")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    one = subprocess.run([sys.executable, "-m", "skinflow", "test", "--config", str(REPO / "configs/experiment/warmup_tiny_synthetic.yaml"),
                          *[a for a in FAST if "limit_test" not in a], "--data.init_args.batch_size=8", f"--ckpt_path={last}",
                          f"--data.init_args.cache_dir={tmp_path / 'cache'}"], cwd=single, env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-4000:]
    _, single_run = the_run(single)
    expected = {k: v for k, v in single_run.data.metrics.items() if k.startswith("test/")}
    assert set(ddp) == set(expected) and len(ddp) > 20
    for key, value in expected.items():
        assert ddp[key] == pytest.approx(value, abs=1e-6), key


def test_two_process_grpo_stage_agrees_across_ranks(tmp_path):
    folder = tmp_path / "ddp"
    folder.mkdir()
    args = [*STAGE1, *DDP, "--trainer.max_steps=2", "--trainer.val_check_interval=2"]
    done = fit(folder, args, {"folder": str(folder / "probe")}, SKINFLOW_PROBE_REWARD="1")
    assert done.returncode == 0, done.stderr[-4000:]
    check_ranks(folder, steps=2)
    client, run = the_run(folder)
    assert {"rl/kl", "val/top1_exact"} <= set(run.data.metrics)


@pytest.mark.parametrize("rank", [0, 1])
def test_a_bad_input_on_one_rank_stops_both_with_its_error(tmp_path, rank):
    folder = tmp_path / "ddp"
    folder.mkdir()
    done = fit(folder, [*WARMUP, *DDP, "--trainer.max_epochs=1"], {"folder": str(folder / "probe"), "fail_rank": rank, "fail_step": 1},
               timeout=300)  # a hang would time out
    assert done.returncode != 0
    assert f"rank {rank}: every image of a batch could not be read" in done.stderr
    assert len(read(folder / "probe", rank)) == 1
