"""The ablation notebooks execute against a small grid (tiny preset) and agree with the compare command."""

import nbformat
import pandas as pd
import pytest

from skinflow.analysis.compare import compare
from skinflow.analysis.notebooks import execute, imported_modules
from skinflow.analysis.tables import PAPER_COLUMNS
from tests.conftest import GRID_ROWS, REPO

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
ROWS = GRID_ROWS


@pytest.fixture(scope="module")
def grid(ablation_grid):
    return ablation_grid["folder"], ablation_grid["uri"]


def test_notebooks_are_committed_without_outputs_and_import_only_skinflow():
    assert [p.name for p in NOTEBOOKS] == ["01-ablation-paper-table.ipynb", "02-fairness-by-skin-type.ipynb",
                                          "03-dynamic-encoder.ipynb"]
    for path in NOTEBOOKS:
        nb = nbformat.read(str(path), as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), path.name
        assert sum("parameters" in c.metadata.get("tags", []) for c in code) == 1, path.name
        assert imported_modules(path) == {"skinflow"}, path.name


def run(name, grid, **extra):
    folder, uri = grid
    out = folder / name
    nb = execute(REPO / "notebooks" / name, {"EXPERIMENT": "grid-test", "TRACKING_URI": uri, "OUT": str(out), **extra},
                 cwd=folder, timeout=600)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    return out, nb


def test_paper_table_notebook_matches_compare(grid):
    out, _ = run("01-ablation-paper-table.ipynb", grid)
    table = pd.read_csv(out / "paper_table.csv").set_index("row")
    assert list(table.index) == [r["name"] for r in ROWS]
    result = compare("grid-test", list(PAPER_COLUMNS), ["row"], grid[1], filter_string="tags.`skinflow.ablation` = 'grid-test'",
                     out=grid[0] / "cmp")
    expected = result["summary"].table.set_index("row")
    for key, title in PAPER_COLUMNS.items():
        assert table[f"{title} mean"].to_dict() == pytest.approx(expected[f"{key}_mean"].to_dict())
        assert table[f"{title} std"].to_dict() == pytest.approx(expected[f"{key}_std"].to_dict())
        assert (table[f"{title} n"] == 2).all()
    assert table.loc["stage1-dve", "dve"] == "on" and table.loc["no-stage1-no-dve", "stage1"] == "no"
    assert (out / "comparison.png").exists()


def test_fairness_notebook_matches_the_runs_per_skin_type(grid):
    out, _ = run("02-fairness-by-skin-type.ipynb", grid)
    table = pd.read_csv(out / "skin_type_table.csv").set_index("row")
    from mlflow import MlflowClient

    client = MlflowClient(grid[1])
    exp = client.get_experiment_by_name("grid-test").experiment_id
    parents = client.search_runs([exp], "tags.`skinflow.ablation` = 'grid-test' and attributes.status = 'FINISHED'")
    for row in table.index:
        runs = [r for r in parents if r.data.tags["skinflow.row"] == row]
        worst = [r.data.metrics["final/test/graded_top1_by_fst/worst"] for r in runs]
        assert table.loc[row, "worst"] == pytest.approx(sum(worst) / len(worst))
        types = [c for c in table.columns if c.startswith("fst_")]
        assert types and all(f"final/test/graded_top1_by_fst/{t}" in runs[0].data.metrics for t in types)
    assert (out / "skin_type_chart.png").exists()


def test_dynamic_encoder_notebook_reads_gains_and_attention(grid):
    out, _ = run("03-dynamic-encoder.ipynb", grid, N_IMAGES=4)
    gains = pd.read_csv(out / "dve_gains.csv")
    assert gains["image"].nunique() == 4 and gains["beta"].between(0, 2).all()
    assert gains["layer"].nunique() >= 1 and gains["group"].nunique() > 1
    concentration = pd.read_csv(out / "attention_concentration.csv")
    assert sorted(concentration["model"].unique()) == ["DVE", "no DVE"]
    assert concentration["top10_share"].between(0.1 - 1e-6, 1.0).all()
