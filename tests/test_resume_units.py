"""Resume's parts in seconds (issue 27), beside the end-to-end runs of tests/test_resume.py that take minutes:
the generator states a checkpoint carries, the data position a resumed epoch starts from, and which run
``--ckpt_path last`` continues when two runs share a config key."""

import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from skinflow.data.order import EpochShuffle
from skinflow.stages.base import rng_states, set_rng_states


def draws() -> tuple:
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)], np.random.randn(1).tolist()


def test_restored_generator_states_repeat_every_stream_after_a_checkpoint():
    """torch, numpy (including its cached Gaussian) and python draw after a restore exactly what they drew after
    the save; each stream is restored, not just torch's."""
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.randn(1)  # leaves a cached Gaussian: has_gauss = 1 in numpy's state
    saved = rng_states()
    after_save = draws()
    torch.manual_seed(9), np.random.seed(9), random.seed(9)  # the resumed process starts elsewhere
    set_rng_states(saved)
    assert draws() == after_save
    for stream in ("torch", "numpy", "python"):  # and each of them matters
        set_rng_states(saved)
        torch.manual_seed(9) if stream == "torch" else np.random.seed(9) if stream == "numpy" else random.seed(9)
        assert draws() != after_save, stream


@pytest.mark.parametrize("world", [1, 2])
def test_a_resumed_epoch_continues_at_the_next_unseen_image_of_each_rank(world):
    """The order of epoch e is a function of (seed, e); a sampler resumed after k samples yields the rest of that
    epoch, then the next epoch in full, the same pairs (index, item seed) an uninterrupted sampler yields."""
    for rank in range(world):
        whole = EpochShuffle(23, seed=5, num_replicas=world, rank=rank)
        whole.set_epoch(3)
        expected = list(whole)
        resumed = EpochShuffle(23, seed=5, num_replicas=world, rank=rank)
        resumed.set_epoch(3)
        resumed.resume(3, 4)
        assert list(resumed) == expected[4:] and len(expected) == (23 if world == 1 else 12)
        assert list(resumed) == expected  # the skip applies to the resumed pass only
        other = EpochShuffle(23, seed=5, num_replicas=world, rank=rank)
        other.set_epoch(4)
        assert list(other) != expected  # epochs differ
    if world == 2:  # the ranks split each epoch: no image twice, none left out (23 images + 1 pad)
        orders = [EpochShuffle(23, 5, 2, r).order(3) for r in (0, 1)]
        assert len({i for o in orders for i, _ in o}) == 23 and not {p for _, p in orders[0]} & {p for _, p in orders[1]}


def test_ckpt_path_last_continues_the_newest_of_two_runs_with_one_key(tmp_path, monkeypatch):
    """Two runs of one config (the same run key), both unfinished: ``--ckpt_path last`` continues the newer."""
    import time

    import mlflow

    from skinflow import resume
    from skinflow.tracking.store import existing_client

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("skinflow", artifact_location=str(tmp_path / "artifacts"))
    older = client.create_run(experiment, tags={resume.RUN_KEY_TAG: "k1"}, start_time=int(time.time() * 1000) - 60_000)
    newer = client.create_run(experiment, tags={resume.RUN_KEY_TAG: "k1"}, start_time=int(time.time() * 1000))
    client.create_run(experiment, tags={resume.RUN_KEY_TAG: "k2"}, start_time=int(time.time() * 1000) + 60_000)  # another key
    assert existing_client(uri) is not None
    logger = SimpleNamespace(class_path="skinflow.tracking.mlflow.SkinflowMLFlowLogger",
                             init_args=_Args(tracking_uri=uri, experiment_name="skinflow", run_id=None))
    config = _Args(**{"ckpt_path": "last", "trainer.logger": logger})
    monkeypatch.setattr(resume, "MLFLOW_LOGGERS", {logger.class_path})
    resume.resolve_resume(config, "k1", str(tmp_path / "mlruns"))
    assert logger.init_args.run_id == newer.info.run_id != older.info.run_id


class _Args(dict):
    """The little of jsonargparse's Namespace that ``resolve_resume`` uses: ``get``, ``in``, attribute access."""

    def __getattr__(self, key):
        return self[key]

    def __setattr__(self, key, value):
        self[key] = value


LOGGER = "skinflow.tracking.mlflow.SkinflowMLFlowLogger"


@pytest.fixture
def store(tmp_path, monkeypatch):
    """An sqlite MLflow store with one experiment, and a maker of (config, logger) pairs as the CLI parses them."""
    import mlflow

    from skinflow import resume

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("skinflow", artifact_location=str(tmp_path / "artifacts"))
    monkeypatch.setattr(resume, "MLFLOW_LOGGERS", {LOGGER})

    def config(ckpt_path, run_id=None, experiment_name="skinflow"):
        logger = SimpleNamespace(class_path=LOGGER, init_args=_Args(tracking_uri=uri, experiment_name=experiment_name, run_id=run_id))
        return _Args(**{"ckpt_path": ckpt_path, "trainer.logger": logger}), logger

    return SimpleNamespace(uri=uri, client=client, experiment=experiment, config=config, root=tmp_path / "mlruns")


def run_with_key(store, key, status=None):
    from skinflow import resume

    run = store.client.create_run(store.experiment, tags={resume.RUN_KEY_TAG: key})
    if status:
        store.client.set_terminated(run.info.run_id, status)
    return run.info.run_id


def test_last_continues_an_unfinished_run_from_its_last_ckpt(store, capsys):
    from skinflow import resume

    run_id = run_with_key(store, "k", status="KILLED")
    last = resume.checkpoint_folder(store.root, store.experiment, run_id) / "last.ckpt"
    assert last == store.root / store.experiment / run_id / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"x")
    config, logger = store.config("last")
    resume.resolve_resume(config, "k", str(store.root))
    assert logger.init_args.run_id == run_id and config.ckpt_path == str(last)
    assert f"[resume] continuing MLflow run {run_id} (" in capsys.readouterr().out.strip().splitlines()[-1]


def test_last_without_a_last_ckpt_leaves_the_search_to_lightning(store, capsys):
    from skinflow import resume

    run_id = run_with_key(store, "k")
    config, logger = store.config("last")
    resume.resolve_resume(config, "k", str(store.root))
    assert logger.init_args.run_id == run_id and config.ckpt_path == "last"
    assert "not found, so Lightning looks in the checkpoint callback's folder" in capsys.readouterr().out


def test_last_with_no_earlier_run_or_no_experiment_starts_afresh(store, capsys):
    from skinflow import resume

    run_with_key(store, "other")
    for experiment_name in ("skinflow", "not-made-yet"):
        config, logger = store.config("last", experiment_name=experiment_name)
        resume.resolve_resume(config, "k", str(store.root))
        assert config.ckpt_path is None and logger.init_args.run_id is None
        assert "no earlier run of this config (run key k)" in capsys.readouterr().out


def test_last_refuses_a_finished_newest_run_unless_the_run_is_named(store):
    from skinflow import resume

    run_id = run_with_key(store, "k", status="FINISHED")
    config, _ = store.config("last")
    with pytest.raises(resume.ResumeError, match=f"the newest run of this config, {run_id} .* already finished.*leave "
                                                 "--ckpt_path out to start a new run"):
        resume.resolve_resume(config, "k", str(store.root))
    config, logger = store.config("last", run_id=run_id)  # named: continued even though it finished
    resume.resolve_resume(config, "k", str(store.root))
    assert logger.init_args.run_id == run_id


def test_last_with_a_named_run_that_does_not_exist_is_refused(store):
    from skinflow import resume

    config, _ = store.config("last", run_id="0123456789abcdef0123456789abcdef")
    with pytest.raises(resume.ResumeError, match="no MLflow run '0123456789abcdef0123456789abcdef'"):
        resume.resolve_resume(config, "k", str(store.root))


def test_a_checkpoint_file_continues_the_run_it_recorded_if_that_run_exists(store, capsys):
    from skinflow import resume

    recorded = run_with_key(store, "k", status="KILLED")
    config, logger = store.config("some/epoch.ckpt")
    resume.resolve_resume(config, "k", str(store.root), recorded_run=recorded)
    assert logger.init_args.run_id == recorded and config.ckpt_path == "some/epoch.ckpt"
    assert f"continuing MLflow run {recorded}" in capsys.readouterr().out
    config, logger = store.config("some/epoch.ckpt")
    resume.resolve_resume(config, "k", str(store.root), recorded_run="f" * 32)  # gone from this store: a new run
    assert logger.init_args.run_id is None
    config, logger = store.config("some/epoch.ckpt", run_id="given")  # a run named on the command line wins
    resume.resolve_resume(config, "k", str(store.root), recorded_run=recorded)
    assert logger.init_args.run_id == "given"


def test_nothing_to_resolve_without_a_ckpt_path_or_an_mlflow_logger(store):
    from skinflow import resume

    run_with_key(store, "k")
    config, logger = store.config(None)
    resume.resolve_resume(config, "k", str(store.root))
    assert config.ckpt_path is None and logger.init_args.run_id is None
    for other in (False, None, [SimpleNamespace(class_path=LOGGER)], SimpleNamespace(class_path="lightning.pytorch.loggers.CSVLogger", init_args=_Args())):
        config = _Args(**{"ckpt_path": "last", "trainer.logger": other})
        assert resume.mlflow_logger_args(config) is None
        resume.resolve_resume(config, "k", str(store.root))
        assert config.ckpt_path == "last"
    assert resume.mlflow_logger_args(_Args(ckpt_path="last")) is None  # no trainer.logger key at all


def test_a_named_run_without_a_store_is_refused_and_odd_loggers_are_not_mlflow(tmp_path, monkeypatch):
    from skinflow import resume

    monkeypatch.setattr(resume, "MLFLOW_LOGGERS", {LOGGER})
    logger = SimpleNamespace(class_path=LOGGER, init_args=_Args(tracking_uri=f"sqlite:///{tmp_path}/none/mlflow.db",
                                                                 experiment_name="skinflow", run_id="abc"))
    with pytest.raises(resume.ResumeError, match="no MLflow run 'abc'"):
        resume.resolve_resume(_Args(**{"ckpt_path": "last", "trainer.logger": logger}), "k", str(tmp_path))
    assert resume.mlflow_logger_args(_Args(**{"trainer.logger": "mlflow"})) is None  # a bare string, no class_path
