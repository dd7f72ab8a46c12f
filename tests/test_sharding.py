"""FSDP2 (issue 26): the stages' computations sharded over two CPU processes (gloo) give what one process gives.

``tests/sharded_worker.py`` runs three AdamW steps of a stage in float64, sharded over 2 ranks and in one process
(which averages the two ranks' losses, as FSDP2 averages their gradients). Tolerance: 1e-12 on weights that
move by ~1e-3 a step. In float64 the only difference is the order of summation in the gradient reduction (measured:
at most 2.4e-18); a dropped gradient, a rank's batch counted twice, a reference that is the live policy, or a
sample that is not the one-process sample is off by 1e-4 or more.
"""

import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO

TOLERANCE = 1e-12


def run_worker(kind: str, world: int, synth_dir, tmp_path) -> list[dict]:
    out = tmp_path / f"{kind}-{world}"
    out.mkdir()
    done = subprocess.run([sys.executable, str(REPO / "tests/sharded_worker.py"), kind, str(world), str(synth_dir),
                           str(tmp_path / "cache"), str(out)], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return [torch.load(out / f"{kind}-{world}-rank{r}.pt") for r in range(world)]


def largest_gap(a: dict, b: dict) -> float:
    assert a.keys() == b.keys() and a
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture(scope="module")
def warmup_runs(synth_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("sharded-warmup")
    return run_worker("warmup", 1, synth_dir, folder)[0], run_worker("warmup", 2, synth_dir, folder)


@pytest.fixture(scope="module")
def grpo_runs(synth_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("sharded-grpo")
    return run_worker("grpo", 1, synth_dir, folder)[0], run_worker("grpo", 2, synth_dir, folder)


def test_sharded_warmup_reaches_the_weights_of_one_process(warmup_runs):
    one, (rank0, rank1) = warmup_runs
    assert [l for pair in zip(rank0["losses"], rank1["losses"]) for step in pair for l in step] == pytest.approx(
        [l for step in one["losses"] for l in step], abs=1e-12)  # each rank computed its own batch's loss
    start = one["weights"][0]
    for step in range(3):
        assert largest_gap(rank0["weights"][step], one["weights"][step]) < TOLERANCE
        assert largest_gap(rank1["weights"][step], rank0["weights"][step]) == 0  # one model, gathered on each rank
    assert largest_gap(one["weights"][2], start) > 1e-3  # and the weights moved: every parameter trains (full + DVE)
    assert any(".visual." in k and k.endswith(".spectrum") for k in start)  # the DVE's FDLinear layers among them


def test_sharded_grpo_samples_scores_and_updates_like_one_process(grpo_runs):
    one, (rank0, rank1) = grpo_runs
    for step in range(3):
        # generate on the sharded model draws the one-process sample for each rank's prompts ...
        assert rank0["tokens"][step] == one["tokens"][2 * step] and rank1["tokens"][step] == one["tokens"][2 * step + 1]
        for rank, r in ((rank0, 0), (rank1, 1)):
            # ... the chunked scorer and the sharded reference give its log-probabilities ...
            assert torch.allclose(rank["policy"][step], one["policy"][2 * step + r], atol=1e-12, rtol=0)
            assert torch.allclose(rank["reference"][step], one["reference"][2 * step + r], atol=1e-12, rtol=0)
        # ... and the update is the same
        assert largest_gap(rank0["weights"][step], one["weights"][step]) < TOLERANCE
    # the reference stayed the starting policy while the policy moved (a reference that followed the live weights
    # would equal the policy at every step)
    assert (one["policy"][4] - one["reference"][4]).abs().max() > 1e-2
    assert torch.equal(one["policy"][0], one["reference"][0])  # step 1: policy = reference
    # the ranks' completions ended at different steps, so generation ran in lock-step across them (synced_gpus)
    assert any(max(a) != max(b) for a, b in zip(rank0["lengths"], rank1["lengths"]))
