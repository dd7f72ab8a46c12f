"""The README's demo, run as a test so it cannot go stale (`make test-all`; marked slow, about 13 min on 2 cores, so
`make test` and CI leave it out): the pipeline (warmup -> Stage I -> Stage II -> test)
on synthetic lesions with the tiny model, with fixed seeds. Chance on these 15 labels: top-1 1/15.

The seeds are fixed but the trajectory is not the same on every machine: float rounding differs between CPUs and
RL sampling amplifies it. So the claims below are only those that held on every trajectory measured: seeds 0, 1, 2
of ``python benchmarks/learning_over_seeds.py`` at commit ``aae7573`` (2026-12-04; seed 0 is this test's trajectory;
gains over each stage's own start, evaluated on the same images):

- Stage II cuts malignant misses at top-1 (malignant references answered benign), the error its safety penalty
  targets: -0.042, -0.147, -0.084. Margin: at least 0.02 (two of the ~95 malignant test images).
- Stage II does not lower graded top-6, the score its reward optimises, by more than 0.03: -0.025, +0.006, -0.023.
  (At commit ``fff0a19`` it raised it in every seed: +0.014, +0.033, +0.012; the fall since is recorded in
  docs/results.md and not explained yet.)
- Stage I keeps the validation caption reward near its start (+0.000, +0.034, +0.046): a guard against a stage
  that wrecks what it does not reliably improve, not a learning claim.
- NOT claimed, because it does not hold in every seed: Stage II raising graded top-6 (1 of 3), Stage II keeping
  graded top-1 or top-1 (it lowered both in 3 of 3: -0.039, -0.009, -0.058 and -0.049, -0.021, -0.081), Stage I
  raising the caption reward (2 of 3).
"""

import pytest

from tests.conftest import REPO, pipeline_in

WARMUP_TOP1_BAR = 0.30            # lowest measured: 0.361
STAGE2_GRADED_TOP6_FALL = 0.03   # largest fall measured: 0.025 (seed 0), at commit aae7573
STAGE2_MALIGNANT_MISS_CUT = 0.02  # smallest cut measured: 0.042 (seed 0), at commit aae7573
STAGE1_CAPTION_TOLERANCE = 0.06   # largest drop measured: 0.005


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from mlflow import MlflowClient

    folder = tmp_path_factory.mktemp("demo")
    result = pipeline_in(folder, "--config", str(REPO / "configs/pipeline/demo.yaml"),
                         *[f"--stage-arg={s}=--trainer.enable_progress_bar=false" for s in ("warmup", "stage1", "stage2")],
                         "--stage-arg=warmup=--data.init_args.progress=false")
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
def test_demo_stage2_keeps_graded_top6_near_its_start(demo):
    stage2 = demo["stage2"]
    assert stage2["test/graded_top6"] >= stage2["start/test/graded_top6"] - STAGE2_GRADED_TOP6_FALL
