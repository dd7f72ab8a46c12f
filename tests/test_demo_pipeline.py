"""The README's demo, run as a test so it cannot go stale: the pipeline (warmup -> Stage I -> Stage II -> test)
on synthetic lesions with the tiny model, with fixed seeds. Chance on these 15 labels: top-1 1/15.

The seeds are fixed but the trajectory is not the same on every machine: float rounding differs between CPUs and
RL sampling amplifies it. So the claims below are only those that held on every trajectory measured: seeds 0, 1, 2
of ``python benchmarks/learning_over_seeds.py`` (seed 0 is this test's trajectory), measured after the tiny preset's
rope_theta moved to 20 (gains over each stage's own start, evaluated on the same images):

- Stage II cuts malignant misses at top-1 on the test images (malignant references answered benign):
  -0.147, -0.137, -0.432. Margin: at least 0.05 fewer.
- Stage II keeps graded top-1 (-0.029, +0.016, +0.044) and graded top-6 (-0.013, +0.025, +0.066), and Stage I
  keeps the validation caption reward (-0.007, -0.027, +0.003), near their starts. These are guards against a stage
  that wrecks what it does not (reliably) improve, not learning claims.
- NOT claimed, because it does not hold in every seed: Stage II raising graded top-6 (2 of 3; it held in 4 of 4
  runs with rope_theta 10,000, when the warmup was 0.12 top-1 weaker), Stage I raising the caption reward (1 of 3).
"""

import pytest

from tests.conftest import REPO

WARMUP_TOP1_BAR = 0.30           # lowest measured: 0.347
STAGE2_MALIGNANT_MISS_CUT = 0.05  # smallest cut measured: 0.137
STAGE1_CAPTION_TOLERANCE = 0.06   # largest drop measured: 0.027
STAGE2_GRADED_TOLERANCE = 0.05    # largest drops measured: graded top-1 0.029, graded top-6 0.013


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
def test_demo_warmup_learns_and_stage1_trains_without_losing_the_captions(demo):
    warmup, stage1 = demo["warmup"], demo["stage1"]
    assert warmup["test/top1_exact"] >= WARMUP_TOP1_BAR
    assert warmup["test/graded_top1"] >= warmup["test/top1_exact"]  # credit >= exact hits
    assert warmup["test/parse_failure"] <= 0.05
    assert stage1["rl/frac_zero_std_groups"] < 0.5  # its groups disagree: GRPO has a signal to follow
    assert stage1["val/reward/caption_fields"] >= stage1["start/val/reward/caption_fields"] - STAGE1_CAPTION_TOLERANCE


@pytest.mark.slow
def test_demo_stage2_runs_from_stage1_and_reports_start_and_end(demo):
    stage2 = demo["stage2"]
    assert {"start/test/graded_top1", "test/graded_top1", "reward/ranked_diagnosis", "rl/kl"} <= set(stage2)
    assert stage2["test/parse_failure"] <= 0.05 and stage2["test/top1_exact"] >= WARMUP_TOP1_BAR


@pytest.mark.slow
def test_demo_stage2_cuts_malignant_misses(demo):
    stage2 = demo["stage2"]
    assert stage2["test/malignant_miss_top1"] <= stage2["start/test/malignant_miss_top1"] - STAGE2_MALIGNANT_MISS_CUT


@pytest.mark.slow
def test_demo_stage2_keeps_graded_top1_and_top6(demo):
    stage2 = demo["stage2"]
    for metric in ("test/graded_top1", "test/graded_top6"):
        assert stage2[metric] >= stage2[f"start/{metric}"] - STAGE2_GRADED_TOLERANCE, metric
