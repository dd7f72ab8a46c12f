"""The compare command: groups runs of the MLflow store, mean ± std over seeds, CSV, PNG, counted omissions."""

import math

import numpy as np
import pandas as pd
import pytest

from skinflow.analysis.compare import CompareError, compare, summarize
from skinflow.cli import main

RUNS = [  # row, seed, top1, graded (None: the run lacks the metric)
    ("base", 0, 0.40, 0.50), ("base", 1, 0.44, 0.52), ("base", 2, 0.39, None),
    ("dve", 0, 0.55, 0.61), ("dve", 1, 0.47, 0.58), ("dve", 2, 0.52, 0.60),
]


@pytest.fixture
def store(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    (tmp_path / "mlruns").mkdir()
    client = MlflowClient(uri)
    exp = client.create_experiment("grid", (tmp_path / "mlruns/artifacts").as_uri())
    for row, seed, top1, graded in RUNS:
        run = client.create_run(exp, run_name=f"{row}/seed{seed}", tags={"skinflow.row": row, "dve": str(row == "dve")})
        client.log_param(run.info.run_id, "seed", seed)
        client.log_metric(run.info.run_id, "test/top1_exact", top1)
        if graded is not None:
            client.log_metric(run.info.run_id, "test/graded_top1", graded)
        client.set_terminated(run.info.run_id, "FINISHED")
    unfinished = client.create_run(exp, run_name="crashed", tags={"skinflow.row": "base"})
    client.log_metric(unfinished.info.run_id, "test/top1_exact", 0.0)
    client.set_terminated(unfinished.info.run_id, "FAILED")
    return uri, client


def expected(row, index):
    values = [r[index] for r in RUNS if r[0] == row and r[index] is not None]
    return np.mean(values), np.std(values, ddof=1), len(values)


def test_compare_groups_by_tag_and_matches_the_store(store, tmp_path):
    uri, client = store
    result = compare("grid", ["test/top1_exact", "test/graded_top1"], ["row"], uri, out=tmp_path / "out", log_to_mlflow=True, level="all")
    table = result["summary"].table.set_index("row")
    for row in ("base", "dve"):
        for index, metric in ((2, "test/top1_exact"), (3, "test/graded_top1")):
            mean, std, n = expected(row, index)
            assert table.loc[row, f"{metric}_mean"] == pytest.approx(mean)
            assert table.loc[row, f"{metric}_std"] == pytest.approx(std)
            assert table.loc[row, f"n_{metric}"] == n  # the FAILED run is not counted
    # the run lacking graded_top1 is reported, not silently dropped
    assert [(name, metric) for _, name, metric in result["summary"].left_out] == [("base/seed2", "test/graded_top1")]
    csv = pd.read_csv(result["csv"]).set_index("row")
    assert csv.loc["dve", "test/top1_exact_mean"] == pytest.approx(expected("dve", 2)[0])
    assert result["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    logged = client.get_run(result["run_id"])
    assert logged.data.tags["skinflow.stage"] == "compare"
    assert {a.path for a in client.list_artifacts(result["run_id"])} >= {"comparison.csv", "comparison.png", "comparison.txt"}
    # the compare run itself is never compared: a second call sees the same six runs
    again = compare("grid", ["test/top1_exact"], ["row"], uri, out=tmp_path / "out2", level="all")
    assert again["summary"].table["n_test/top1_exact"].sum() == 6


def test_group_by_two_keys_a_param_and_status_any(store, tmp_path):
    uri, _ = store
    result = compare("grid", ["test/top1_exact"], ["dve", "seed"], uri, out=tmp_path / "o", status=None, level="all")
    table = result["summary"].table
    assert len(table) == 7  # 6 (dve, seed) cells + the FAILED run's (False, -) cell
    cell = table[(table["dve"] == "True") & (table["seed"] == "1")]
    assert cell["test/top1_exact_mean"].item() == pytest.approx(0.47) and math.isnan(cell["test/top1_exact_std"].item())


def test_command_prints_mean_std_and_names_bad_input(store, tmp_path, capsys):
    uri, _ = store
    main(["compare", "--experiment", "grid", "--tracking-uri", uri, "--group-by", "row", "--metric", "test/top1_exact",
          "--out", str(tmp_path / "cmd"), "--level", "all"])
    out = capsys.readouterr().out
    mean, std, n = expected("dve", 2)
    assert f"{mean:.4f} ± {std:.4f} ({n})" in out
    assert (tmp_path / "cmd/comparison.csv").exists() and (tmp_path / "cmd/comparison.png").exists()
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "--experiment", "grid", "--tracking-uri", uri, "--group-by", "colour", "--out", str(tmp_path / "x"), "--level", "all"])
    assert exit_info.value.code == 2 and "'colour'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["compare", "--experiment", "nope", "--tracking-uri", uri])
    assert "no experiment named 'nope'" in capsys.readouterr().err


def test_summarize_refuses_unknown_metrics():
    frame = pd.DataFrame({"run_id": ["1"], "run_name": ["a"], "metrics.test/top1_exact": [0.5]})
    with pytest.raises(CompareError, match="test/top6_exact"):
        summarize(frame, ["test/top6_exact"], [])
