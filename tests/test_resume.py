"""Preemption and exact resume (issue 14, item 2): SIGTERM's exit code and checkpoint, ``--ckpt_path last`` finding
the same run, one MLflow run across the interruption, and CPU metrics bit-identical to an uninterrupted run."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from lightning.pytorch import Callback

from skinflow import cli, launcher
from skinflow.resume import SIGTERM_EXIT, checkpoint_folder
from tests.conftest import REPO

FAST = ["--data.init_args.synthetic_per_class=4", "--data.init_args.progress=false", "--trainer.limit_val_batches=1",
        "--trainer.limit_test_batches=1", "--trainer.enable_progress_bar=false", "--trainer.log_every_n_steps=1",
        "--model.init_args.max_new_tokens=8", "--trainer.enable_model_summary=false"]
# 27 training images in batches of 8: 4 steps an epoch, 2 epochs
WARMUP = ["fit", "--config", str(REPO / "configs/experiment/warmup_tiny_synthetic.yaml"), *FAST,
          "--trainer.max_epochs=2", "--trainer.check_val_every_n_epoch=1", "--model.init_args.warmup_steps=2",
          "--data.init_args.batch_size=8"]
# GRPO with sampling (T=1), the KL term and a full-training reference: 5 steps, interrupted after step 2. A random
# tiny model writes no caption, so the reward is one that tells its samples apart (``distinct_characters``)
STAGE1 = ["fit", "--config", str(REPO / "configs/experiment/stage1_tiny_synthetic.yaml"), *FAST,
          "--trainer.max_steps=5", "--trainer.val_check_interval=5", "--data.init_args.batch_size=2",
          "--model.init_args.group_size=4", "--model.init_args.lr=1e-3", "--model.init_args.table_every=0",
          "--model.init_args.max_new_tokens=12", '--model.init_args.rewards=[{"name": "distinct_characters"}]']


def distinct_characters(completions, targets) -> torch.Tensor:
    return torch.tensor([len(set(text)) / 12 for text in completions])


class SigtermAt(Callback):
    """Sends this process SIGTERM after the given optimizer step, as a scheduler would."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def client_in(folder):
    """A client that opens the store under the kit's lock: a plain one opened while a run creates the store
    races its schema creation (what the lock prevents)."""
    from skinflow.tracking.store import existing_client

    return existing_client(f"sqlite:///{folder}/mlruns/mlflow.db")


def only_run(folder):
    client = client_in(folder)
    (run,) = client.search_runs([client.get_experiment_by_name("skinflow").experiment_id])
    return client, run


def history(client, run_id: str) -> dict[str, list[tuple[int, float]]]:
    """Every metric's (step, value) series; values logged twice at one step (a resumed step) would show."""
    keys = client.get_run(run_id).data.metrics
    return {k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k)) for k in keys}


def run_cli(folder, monkeypatch, args, interrupt_at: int | None = None) -> int:
    monkeypatch.chdir(folder)
    callbacks = list(launcher.TRAINER_DEFAULTS["callbacks"]) + ([SigtermAt(interrupt_at)] if interrupt_at else [])
    monkeypatch.setitem(launcher.TRAINER_DEFAULTS, "callbacks", callbacks)
    try:
        cli.main(args)
    except SystemExit as stop:
        return stop.code
    return 0


def final_weights(client, run) -> dict[str, torch.Tensor]:
    folder = checkpoint_folder("mlruns", run.info.experiment_id, run.info.run_id)
    return torch.load(folder / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]


def uninterrupted(folder, monkeypatch, args, cache):
    folder.mkdir()
    assert run_cli(folder, monkeypatch, args + cache) == 0
    client, run = only_run(folder)
    return client, run, folder


def interrupted_and_resumed(tmp_path, monkeypatch, args, interrupt_at: int, cache):
    broken = tmp_path / "broken"
    broken.mkdir()
    assert run_cli(broken, monkeypatch, args + cache, interrupt_at=interrupt_at) == SIGTERM_EXIT
    client, stopped = only_run(broken)
    assert stopped.info.status == "KILLED"
    assert stopped.data.tags["skinflow.interrupted"] == f"SIGTERM at step {interrupt_at}"
    assert (checkpoint_folder(broken / "mlruns", stopped.info.experiment_id, stopped.info.run_id) / "last.ckpt").is_file()
    assert run_cli(broken, monkeypatch, args + cache + ["--ckpt_path=last"]) == 0
    client, resumed = only_run(broken)  # the same run, continued: still one run in the experiment
    assert resumed.info.run_id == stopped.info.run_id and resumed.info.status == "FINISHED"
    return client, resumed, broken


@pytest.fixture(scope="module")
def whole_warmup(tmp_path_factory):
    """The uninterrupted warmup every interrupted one is compared with (run once for the module)."""
    folder = tmp_path_factory.mktemp("warmup")
    with pytest.MonkeyPatch.context() as monkeypatch:
        cache = [f"--data.init_args.cache_dir={folder / 'cache'}"]
        return uninterrupted(folder / "whole", monkeypatch, WARMUP, cache), cache


def assert_same_run(whole, broken, monkeypatch):
    (wc, wrun, wdir), (bc, brun, bdir) = whole, broken
    expected, got = history(wc, wrun.info.run_id), history(bc, brun.info.run_id)
    assert set(got) == set(expected)
    for key in (k for k in expected if not k.startswith("time/")):  # wall-clock seconds per phase differ
        assert got[key] == expected[key], key  # bit-identical floats, step for step, nothing logged twice
    monkeypatch.chdir(wdir)
    a = final_weights(wc, wrun)
    monkeypatch.chdir(bdir)
    b = final_weights(bc, brun)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("interrupt_at", [3, 4, 6], ids=["mid-epoch-0", "end-of-epoch-0", "mid-epoch-1"])
def test_interrupted_warmup_resumes_to_bit_identical_metrics_in_the_same_run(tmp_path, monkeypatch, interrupt_at, whole_warmup):
    whole, cache = whole_warmup
    broken = interrupted_and_resumed(tmp_path, monkeypatch, WARMUP, interrupt_at, cache)
    assert_same_run(whole, broken, monkeypatch)
    losses = history(whole[0], whole[1].info.run_id)["train/loss"]
    assert [s for s, _ in losses] == list(range(8))  # every step logged once: the comparison saw the whole run


def test_interrupted_grpo_stage_resumes_to_bit_identical_metrics(tmp_path, monkeypatch):
    from skinflow.rl.rewards import REWARDS

    monkeypatch.setitem(REWARDS, "distinct_characters", distinct_characters)
    cache = [f"--data.init_args.cache_dir={tmp_path / 'cache'}"]
    whole = uninterrupted(tmp_path / "whole", monkeypatch, STAGE1, cache)
    broken = interrupted_and_resumed(tmp_path, monkeypatch, STAGE1, 2, cache)
    assert_same_run(whole, broken, monkeypatch)
    kl = history(whole[0], whole[1].info.run_id)["rl/kl"]
    assert len(kl) == 5 and kl[-1][1] > 0  # the reference stayed the start: the policy has moved away from it


def test_ckpt_path_last_with_no_earlier_run_starts_fresh_and_says_so(tmp_path, monkeypatch, capsys):
    args = [*WARMUP, "--trainer.max_epochs=1", "--trainer.limit_train_batches=1", f"--data.init_args.cache_dir={tmp_path / 'cache'}"]
    assert run_cli(tmp_path, monkeypatch, [*args, "--ckpt_path=last"]) == 0
    assert "no earlier run of this config" in capsys.readouterr().out
    client, run = only_run(tmp_path)
    assert run.info.status == "FINISHED" and run.info.run_name == "warmup-warmup_tiny_synthetic-seed0"
    # the run finished: `last` again is refused instead of silently training a second time
    assert run_cli(tmp_path, monkeypatch, [*args, "--ckpt_path=last"]) == 2
    assert "already finished" in capsys.readouterr().err
    # another config (a different seed) is another run: `last` does not pick the finished one up
    assert run_cli(tmp_path, monkeypatch, [*args, "--seed_everything=1", "--ckpt_path=last"]) == 0
    names = sorted(r.info.run_name for r in client.search_runs([run.info.experiment_id]))
    assert names == ["warmup-warmup_tiny_synthetic-seed0", "warmup-warmup_tiny_synthetic-seed1"]


def warmup_logging(tmp_path, steps: int):
    """A 6-epoch warmup in a child process (validating only at the end), once it has logged ``steps`` training
    steps: (env, command, process)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [sys.executable, "-m", "skinflow", *WARMUP, "--trainer.max_epochs=6", "--trainer.check_val_every_n_epoch=6",
            f"--data.init_args.cache_dir={tmp_path / 'cache'}"]
    child = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    db = tmp_path / "mlruns" / "mlflow.db"
    deadline = time.time() + 240
    logged = 0
    while time.time() < deadline and child.poll() is None and logged < steps:
        time.sleep(0.2)
        if db.exists():
            try:
                client, run = only_run(tmp_path)
                logged = len(client.get_metric_history(run.info.run_id, "train/loss"))
            except Exception:  # noqa: BLE001  the store or the run may not be there yet
                continue
    assert child.poll() is None, child.communicate()[0][-3000:]
    return env, args, child


def test_sigterm_from_outside_exits_143_with_a_checkpoint_and_the_same_command_resumes(tmp_path):
    """The real signal path: a child process, signalled by its parent mid-training, as a scheduler does."""
    env, args, child = warmup_logging(tmp_path, steps=2)
    child.send_signal(signal.SIGTERM)
    out = child.communicate(timeout=120)[0]
    assert child.returncode == SIGTERM_EXIT, out[-3000:]
    client, run = only_run(tmp_path)
    assert run.info.status == "KILLED" and "SIGTERM at step" in run.data.tags["skinflow.interrupted"]
    last = checkpoint_folder(tmp_path / "mlruns", run.info.experiment_id, run.info.run_id) / "last.ckpt"
    stopped_at = torch.load(last, map_location="cpu", weights_only=False)["global_step"]
    assert 2 <= stopped_at < 24
    assert [p.name for p in last.parent.iterdir()] == ["last.ckpt"]  # a stop leaves no second copy beside it
    done = subprocess.run([*args, "--ckpt_path=last"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    client, resumed = only_run(tmp_path)
    assert resumed.info.run_id == run.info.run_id and resumed.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert sorted(steps) == list(range(24))  # one unbroken curve: before the signal, then from where it stopped


class SigintAt(SigtermAt):
    """Ctrl-C after the given optimizer step."""

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_writes_a_checkpoint_marks_the_run_killed_and_exits_non_zero(tmp_path, monkeypatch):
    args = [*WARMUP, "--trainer.max_epochs=1", f"--data.init_args.cache_dir={tmp_path / 'cache'}"]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(launcher.TRAINER_DEFAULTS, "callbacks", [*launcher.TRAINER_DEFAULTS["callbacks"], SigintAt(2)])
    try:
        with pytest.raises(SystemExit) as stop:
            cli.main(args)
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # Lightning ignores further Ctrl-C while it stops
    assert stop.value.code == 1
    client, run = only_run(tmp_path)
    assert run.info.status == "KILLED" and run.data.tags["skinflow.interrupted"] == "SIGINT at step 2"
    last = checkpoint_folder("mlruns", run.info.experiment_id, run.info.run_id) / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 2


def test_ckpt_path_file_continues_the_mlflow_run_the_file_came_from(tmp_path, monkeypatch, capsys):
    args = [*WARMUP, "--trainer.limit_train_batches=1", f"--data.init_args.cache_dir={tmp_path / 'cache'}"]
    assert run_cli(tmp_path, monkeypatch, [*args, "--trainer.max_epochs=1"]) == 0
    client, first = only_run(tmp_path)
    last = checkpoint_folder("mlruns", first.info.experiment_id, first.info.run_id) / "last.ckpt"
    # another max_epochs is another config (no `last` match), but the file names its run: training goes on there
    assert run_cli(tmp_path, monkeypatch, [*args, "--trainer.max_epochs=2", f"--ckpt_path={last}"]) == 0
    assert f"continuing MLflow run {first.info.run_id}" in capsys.readouterr().out
    client, again = only_run(tmp_path)
    assert again.info.run_id == first.info.run_id and again.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(again.info.run_id, "train/loss")) == [0, 1]


def test_a_hard_kill_loses_at_most_one_epoch_and_the_resumed_run_logs_no_step_twice(tmp_path):
    """SIGKILL (an OOM kill, a scheduler after its grace period) gives no chance to save: the CPU trainer file writes
    last.ckpt at every epoch's end even when it validates only every 6 epochs, and the same command with
    ``--ckpt_path last`` continues the run without logging the steps the killed process logged after it."""
    env, args, child = warmup_logging(tmp_path, steps=6)  # into the second epoch (4 steps each)
    child.send_signal(signal.SIGKILL)
    child.communicate(timeout=60)
    client, run = only_run(tmp_path)
    assert run.info.status == "RUNNING"  # nobody could mark it
    killed_steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    last = checkpoint_folder(tmp_path / "mlruns", run.info.experiment_id, run.info.run_id) / "last.ckpt"
    saved_at = torch.load(last, map_location="cpu", weights_only=False)["global_step"]
    assert saved_at % 4 == 0 and saved_at >= 4 and max(killed_steps) - saved_at < 4  # at most one epoch lost
    assert max(killed_steps) >= saved_at  # steps after the checkpoint were logged: the resume must not repeat them
    assert not list(last.parent.glob(".*.tmp"))  # no temporary file left beside it
    done = subprocess.run([*args, "--ckpt_path=last"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "those steps are not logged again" in done.stdout
    client, resumed = only_run(tmp_path)
    assert resumed.info.run_id == run.info.run_id and resumed.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert sorted(steps) == list(range(24))  # every step once


def test_checkpoints_are_renamed_into_place_beside_their_target(tmp_path, monkeypatch):
    from skinflow.tracking import checkpoint_io
    from skinflow.tracking.checkpoint_io import AtomicCheckpointIO

    target = tmp_path / "ckpt" / "last.ckpt"
    moves = []
    real_replace = os.replace
    monkeypatch.setattr(checkpoint_io.os, "replace", lambda a, b: (moves.append((a, b)), real_replace(a, b)))
    AtomicCheckpointIO().save_checkpoint({"global_step": 3}, target)
    assert torch.load(target, weights_only=False) == {"global_step": 3}
    (source, destination), = moves
    assert os.path.dirname(source) == str(target.parent) and destination == target  # one file system: atomic

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint_io.os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space"):
        AtomicCheckpointIO().save_checkpoint({"global_step": 4}, target)
    assert torch.load(target, weights_only=False) == {"global_step": 3}  # the old checkpoint, whole
    assert [p.name for p in target.parent.iterdir()] == ["last.ckpt"]  # and no temporary file


def test_the_cli_trainer_saves_through_the_atomic_checkpoint_io(tmp_path, monkeypatch):
    from skinflow.tracking.checkpoint_io import AtomicCheckpointIO

    monkeypatch.chdir(tmp_path)
    built = launcher.lightning_cli(["--config", str(REPO / "configs/experiment/warmup_tiny_synthetic.yaml"), *FAST,
                                    "--trainer.logger=false", f"--data.init_args.cache_dir={tmp_path}"], run=False)
    assert isinstance(built.trainer.strategy.checkpoint_io, AtomicCheckpointIO)
