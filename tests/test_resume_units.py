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
