"""The README's demo, run as a test so it cannot go stale: the pipeline (warmup -> Stage I -> Stage II -> test)
on synthetic lesions with the tiny model, with fixed seeds. Chance on these 15 labels: top-1 1/15.

Learning claims, each against the stage's own starting checkpoint evaluated on the same images and prompt
(``evaluate_start``), by a stated margin:
- Stage I raises the mean ``caption_fields`` reward of greedy captions on the validation images;
- Stage II raises the graded top-1 score on the test images.
"""

import pytest

from tests.conftest import REPO

WARMUP_TOP1_BAR = 0.30
STAGE1_CAPTION_MARGIN = 0.02
STAGE2_GRADED_MARGIN = 0.02


@pytest.mark.slow
def test_demo_pipeline_learns_and_each_rl_stage_improves_on_its_start(tmp_path, monkeypatch, capsys):
    from mlflow import MlflowClient

    from skinflow.pipeline import pipeline_command

    monkeypatch.chdir(tmp_path)
    result = pipeline_command(["--config", str(REPO / "configs/pipeline/demo.yaml"),
                               *[f"--stage-arg={s}=--trainer.enable_progress_bar=false" for s in ("warmup", "stage1", "stage2")],
                               "--stage-arg=warmup=--data.init_args.progress=false"])
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    metrics = {name: client.get_run(run_id).data.metrics for name, run_id in result["children"].items()}
    for name, values in metrics.items():
        print(name, {k: round(v, 3) for k, v in values.items() if "test/" in k and "fst" not in k or "reward/caption" in k})
    warmup, stage1, stage2 = metrics["warmup"], metrics["stage1"], metrics["stage2"]
    assert warmup["test/top1_exact"] >= WARMUP_TOP1_BAR
    assert warmup["test/parse_failure"] <= 0.05
    assert stage1["val/reward/caption_fields"] >= stage1["start/val/reward/caption_fields"] + STAGE1_CAPTION_MARGIN
    assert stage2["test/graded_top1"] >= stage2["start/test/graded_top1"] + STAGE2_GRADED_MARGIN
    assert stage2["test/graded_top1"] >= stage2["test/top1_exact"]  # credit >= exact hits
    assert "stage2 (start)" in capsys.readouterr().out
