"""The README's demo, run as a test so it cannot go stale: the pipeline (warmup -> Stage I -> Stage II -> test)
on synthetic lesions with the tiny model, with fixed seeds. Chance on these 15 labels: top-1 1/15.

Learning claims, each against the stage's own starting checkpoint evaluated on the same images and prompt
(``evaluate_start``), by a stated margin:
- Stage I raises the mean ``caption_fields`` reward of greedy captions on the validation images. Measured with
  this code: 0.5828 -> 0.5872 (+0.0044). The gain is small and trajectory-dependent: earlier code (same config,
  other sampling details) gave +0.019, the same start with 150 steps +0.0105, in isolation +0.034. The margin
  states what is reliably there, not what we would like.
- Stage II raises graded top-6 on the test images, the score its reward optimises (graded, rank-discounted credit
  over the six-entry differential): measured 0.6021 -> 0.6165 (+0.014; an earlier trajectory +0.007).
- Stage II raising graded top-1 is NOT met on the tiny model (measured 0.5553 -> 0.5491; earlier 0.575 ->
  0.569): a strict xfail, so it turns red when it starts to hold.
"""

import pytest

from tests.conftest import REPO

WARMUP_TOP1_BAR = 0.30
STAGE1_CAPTION_MARGIN = 0.004
STAGE2_GRADED_TOP6_MARGIN = 0.01
STAGE2_GRADED_MARGIN = 0.01


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    import os

    from mlflow import MlflowClient

    from skinflow.pipeline import pipeline_command

    folder = tmp_path_factory.mktemp("demo")
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        result = pipeline_command(["--config", str(REPO / "configs/pipeline/demo.yaml"),
                                   *[f"--stage-arg={s}=--trainer.enable_progress_bar=false" for s in ("warmup", "stage1", "stage2")],
                                   "--stage-arg=warmup=--data.init_args.progress=false"])
    finally:
        os.chdir(cwd)
    client = MlflowClient(f"sqlite:///{folder}/mlruns/mlflow.db")
    metrics = {name: client.get_run(run_id).data.metrics for name, run_id in result["children"].items()}
    for name, values in metrics.items():
        print(name, {k: round(v, 3) for k, v in values.items() if ("test/" in k and "fst" not in k) or "reward/caption" in k})
    return metrics


@pytest.mark.slow
def test_demo_warmup_learns_and_stage1_raises_the_caption_reward(demo):
    warmup, stage1 = demo["warmup"], demo["stage1"]
    assert warmup["test/top1_exact"] >= WARMUP_TOP1_BAR
    assert warmup["test/graded_top1"] >= warmup["test/top1_exact"]  # credit >= exact hits
    assert warmup["test/parse_failure"] <= 0.05
    assert stage1["val/reward/caption_fields"] >= stage1["start/val/reward/caption_fields"] + STAGE1_CAPTION_MARGIN


@pytest.mark.slow
def test_demo_stage2_runs_from_stage1_and_reports_start_and_end(demo):
    stage2 = demo["stage2"]
    assert {"start/test/graded_top1", "test/graded_top1", "reward/ranked_diagnosis", "rl/kl"} <= set(stage2)
    assert stage2["test/parse_failure"] <= 0.05 and stage2["test/top1_exact"] >= WARMUP_TOP1_BAR


@pytest.mark.slow
def test_demo_stage2_raises_graded_top6(demo):
    stage2 = demo["stage2"]
    assert stage2["test/graded_top6"] >= stage2["start/test/graded_top6"] + STAGE2_GRADED_TOP6_MARGIN


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="Stage II does not yet raise test graded top-1 on the tiny demo (0.555 -> 0.549)")
def test_demo_stage2_raises_the_graded_score(demo):
    stage2 = demo["stage2"]
    assert stage2["test/graded_top1"] >= stage2["start/test/graded_top1"] + STAGE2_GRADED_MARGIN
