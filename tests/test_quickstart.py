"""The README's quick start, run as a test so it cannot go stale: the demo config trains the tiny model on
synthetic lesions and must clear a stated bar on held-out images (chance: 1/15 top-1, 6/15 top-6)."""

import pytest

from skinflow.cli import main
from tests.conftest import REPO

TOP1_BAR = 0.6


@pytest.mark.slow
def test_demo_warmup_learns_synthetic_lesions(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", str(REPO / "configs/experiment/warmup_tiny_synthetic.yaml"),
          "--trainer.enable_progress_bar", "false", "--data.init_args.progress", "false"])
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("skinflow").experiment_id])
    metrics = run.data.metrics
    print({k: round(v, 3) for k, v in metrics.items() if k.startswith("test/") and "fst" not in k})
    assert metrics["test/top1_exact"] >= TOP1_BAR
    assert metrics["test/top6_exact"] >= metrics["test/top1_exact"]
    assert metrics["test/graded_top1"] >= metrics["test/top1_exact"]  # credit >= exact hits
    assert metrics["test/parse_failure"] <= 0.05
