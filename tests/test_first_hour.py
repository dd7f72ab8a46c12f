"""A new user's first hour: ``make demo-quick`` in a fresh folder, then every next step the README and docs give
(compare, report, the three notebooks with their defaults) works on the demo's own runs. The demo-quick pipeline is
run with the suite's fast stage settings (tests/test_pipeline.py); its experiment, run names and tags are the real
ones, which is what the next steps read."""

from __future__ import annotations

import re
import shlex

import pytest

from skinflow.analysis.notebooks import execute
from skinflow.analysis.sources import NotebookError, notebook_runs
from skinflow.cli import main
from tests.conftest import REPO, pipeline_in
from tests.test_pipeline import COMMON, FAST

NOTEBOOKS = ["01-ablation-paper-table.ipynb", "02-fairness-by-skin-type.ipynb", "03-dynamic-encoder.ipynb"]


@pytest.fixture(scope="module")
def demo_quick(tmp_path_factory):
    """The folder a user ran ``make demo-quick`` in, and the parent run id it printed."""
    folder = tmp_path_factory.mktemp("fresh")
    args = ["--config", str(REPO / "configs/pipeline/demo_quick.yaml")]
    for stage, stage_args in FAST.items():
        args += [f"--stage-arg={stage}={a}" for a in [*COMMON, *stage_args]]
    return folder, pipeline_in(folder, *args)["parent_run_id"]


def documented(command: str, run_id: str = "") -> list[list[str]]:
    """The ``python -m skinflow <command> ...`` commands of the README and docs that name the demo's experiment or a
    parent run id, as argument lists (``<...>`` placeholders become ``run_id``; comments dropped)."""
    found = []
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for match in re.finditer(rf"python -m skinflow {command}\s+([^`#\n]*)", page.read_text()):
            text = match.group(1)
            if "skinflow-pipeline" in text or "<" in text:
                found.append([command, *shlex.split(re.sub(r"<[^>]*>", run_id, text))])
    return found


def test_the_documented_compare_commands_work_on_the_demos_runs(demo_quick, monkeypatch, capsys):
    folder, _ = demo_quick
    monkeypatch.chdir(folder)
    commands = documented("compare")
    assert len(commands) >= 2  # the README's and docs/analysis.md's
    for argv in commands:
        main([*argv, "--out", str(folder / "cmp")])
        table = capsys.readouterr().out
        assert "demo-quick" in table or "yes" in table, (argv, table[-500:])  # a row for the demo's run
        assert (folder / "cmp" / "comparison.png").stat().st_size > 0


def test_the_documented_report_command_works_on_the_printed_run_id(demo_quick, monkeypatch):
    folder, run_id = demo_quick
    monkeypatch.chdir(folder)
    commands = documented("report", run_id)
    assert len(commands) >= 2  # the README's two
    for argv in commands:
        main(argv)
    page = folder / "mlruns" / "reports" / f"{run_id}.html"
    assert page.exists() and "demo-quick" in page.read_text()


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_each_notebook_runs_with_its_defaults_on_the_demos_runs(demo_quick, name):
    """No grid made: the notebook says in one line that it shows the demo's runs instead, and runs to the end."""
    folder, _ = demo_quick
    nb = execute(REPO / "notebooks" / name, None, cwd=folder, timeout=600)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    notes = [line for line in text.splitlines() if "is not in sqlite:///mlruns/mlflow.db: showing the demo's" in line]
    assert len(notes) == 1, text[-2000:]
    out = folder / "mlruns" / "notebooks" / name.removesuffix(".ipynb")
    wanted = {"01-ablation-paper-table.ipynb": ["paper_table.csv", "comparison.png"],
              "02-fairness-by-skin-type.ipynb": ["skin_type_table.csv", "skin_type_chart.png"],
              "03-dynamic-encoder.ipynb": ["attention_concentration.csv"]}[name]
    for file in wanted:
        assert (out / file).stat().st_size > 0, file
    if name.startswith("01"):
        import pandas as pd

        table = pd.read_csv(out / "paper_table.csv").set_index("row")
        assert list(table.index) == ["demo-quick"] and table.loc["demo-quick", "stage1"] == "yes"
    if name.startswith("03"):
        assert "has only a model without the DVE" in text and "no gains to show" in text


def test_with_no_runs_the_notebooks_say_what_to_run_in_their_own_terms(tmp_path, demo_quick):
    with pytest.raises(NotebookError) as missing_store:
        notebook_runs("paper-table-tiny-real-sample", f"sqlite:///{tmp_path}/nowhere/mlflow.db")
    message = str(missing_store.value)
    assert "make demo-quick" in message and "TRACKING_URI" in message and "--" not in message.split("make")[0]
    folder, _ = demo_quick
    uri = f"sqlite:///{folder}/mlruns/mlflow.db"
    with pytest.raises(NotebookError) as no_runs:
        notebook_runs("no-such-grid", uri, fallback="no-such-demo")
    message = str(no_runs.value)
    assert "EXPERIMENT = 'no-such-grid' (set in the first cell)" in message and "make demo-quick" in message
    assert "--experiment" not in message and "--filter" not in message
    said = []
    runs = notebook_runs("no-such-grid", uri, say=said.append)
    assert runs.demo and runs.experiment == "skinflow-pipeline" and len(said) == 1
    assert list(runs.frame["tags.skinflow.row"]) == ["demo-quick"]
