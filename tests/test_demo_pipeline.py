"""The README's demo, run as a test so it cannot go stale (`make test-all`; marked slow, about 13 min on 2 cores, so
`make test` and CI leave it out): the pipeline (warmup -> Stage I -> Stage II -> test)
on synthetic lesions with the tiny model, with fixed seeds. Chance on these 15 labels: top-1 1/15.

The seeds are fixed but the trajectory is not the same on every machine: float rounding differs between CPUs and
RL sampling amplifies it. So the claims below are only those that held on every trajectory measured: seeds 0, 1, 2
of ``python benchmarks/learning_over_seeds.py`` (seed 0 is this test's trajectory), measured after the training
order, augmentation and prompt draws became functions of (seed, epoch, position) for exact resume (a new random
stream, like new seeds; gains over each stage's own start, evaluated on the same images):

- Stage II raises graded top-6, the score its reward optimises, on the test images: +0.014, +0.033, +0.012, and
  +0.0034 for seed 0 on another machine of the same kind (a fresh clone with the same package versions, whose
  warmup already ends elsewhere: Stage II starts at 0.654 there, 0.605 on the first). Margin: at least 0.002.
- Stage II never leaves more malignant misses at top-1 (malignant references answered benign) than it starts with:
  0.000, -0.053, -0.105 (one test image is 0.053), and does not lower graded top-1: +0.011, +0.033, +0.008.
- Stage I keeps the validation caption reward near its start (+0.007, -0.005, +0.009): a guard against a stage
  that wrecks what it does not reliably improve, not a learning claim.
- NOT claimed, because it does not hold in every seed: Stage II cutting malignant misses by a margin (2 of 3; it
  held 3 of 3 on the earlier stream, by 0.137 or more), Stage II raising top-1 (2 of 3), Stage I raising the
  caption reward (2 of 3).
"""

import pytest

from tests.conftest import REPO

WARMUP_TOP1_BAR = 0.30            # lowest measured: 0.361
STAGE2_GRADED_TOP6_GAIN = 0.002   # smallest gain measured: 0.0034 (seed 0 on a second machine; 0.0115 on the first)
STAGE2_MALIGNANT_MISS_RISE = 0.0  # largest rise measured: 0.000 (cuts of 0.053 and 0.105 in the other seeds)
STAGE1_CAPTION_TOLERANCE = 0.06   # largest drop measured: 0.005


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
def test_demo_stage2_raises_graded_top6(demo):
    stage2 = demo["stage2"]
    assert stage2["test/graded_top6"] >= stage2["start/test/graded_top6"] + STAGE2_GRADED_TOP6_GAIN


@pytest.mark.slow
def test_demo_stage2_adds_no_malignant_misses_and_keeps_graded_top1(demo):
    stage2 = demo["stage2"]
    assert stage2["test/malignant_miss_top1"] <= stage2["start/test/malignant_miss_top1"] + STAGE2_MALIGNANT_MISS_RISE
    assert stage2["test/graded_top1"] >= stage2["start/test/graded_top1"]
