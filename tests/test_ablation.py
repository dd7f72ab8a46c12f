"""The ablation grid: rows x seeds through the pipeline, tagged, resumable after an interruption, summarised."""

import pytest
import yaml

from skinflow.ablation import AblationError, load_ablation
from tests.conftest import REPO, write_grid


def test_grid_runs_tags_resumes_after_an_interruption_and_summarises(ablation_grid):
    from mlflow import MlflowClient

    grid = ablation_grid
    assert grid["first_error"] is not None  # the interrupted first call stopped the command
    assert grid["first_calls"] == ["no-stage1-no-dve/0", "no-stage1-no-dve/1", "stage1-no-dve/0"]
    # the resumed call skips the two finished cells and reruns the interrupted one
    assert grid["second_calls"] == ["stage1-no-dve/0", "stage1-no-dve/1", "stage1-dve/0", "stage1-dve/1"]
    result = grid["result"]
    assert [s[:2] for s in result["skipped"]] == [("no-stage1-no-dve", 0), ("no-stage1-no-dve", 1)]
    client = MlflowClient(grid["uri"])
    exp = client.get_experiment_by_name("grid-test").experiment_id
    runs = client.search_runs([exp], "tags.`skinflow.ablation` = 'grid-test'")
    statuses = sorted((r.data.tags["skinflow.row"], r.data.tags["skinflow.seed"], r.info.status) for r in runs)
    assert statuses == [("no-stage1-no-dve", "0", "FINISHED"), ("no-stage1-no-dve", "1", "FINISHED"),
                        ("stage1-dve", "0", "FINISHED"), ("stage1-dve", "1", "FINISHED"),
                        ("stage1-no-dve", "0", "FINISHED"), ("stage1-no-dve", "0", "KILLED"),
                        ("stage1-no-dve", "1", "FINISHED")]
    # the interrupted cell's stage2 failed before its trainer started: its child run is closed, not left RUNNING
    (killed,) = [r for r in runs if r.info.status == "KILLED"]
    children = {c.info.run_name: c.info.status for c in client.search_runs([exp], f"tags.mlflow.parentRunId = '{killed.info.run_id}'")}
    assert children == {"warmup": "FINISHED", "stage1": "FINISHED", "stage2": "FAILED"}
    finished = [r for r in runs if r.info.status == "FINISHED"]
    for run in finished:
        tags = run.data.tags
        assert tags["dve"] == ("on" if tags["skinflow.row"] == "stage1-dve" else "off")
        skipped_stage1 = tags.get("skipped.stage1") == "true"
        assert skipped_stage1 == (tags["skinflow.row"] == "no-stage1-no-dve")
        assert tags["skinflow.final_stage"] == "stage2"
        assert run.data.metrics["final/test/graded_top1"] == run.data.metrics["stage2/test/graded_top1"]
        # the seed and the DVE switch reached every stage: each child run's resolved config carries them
        children = client.search_runs([exp], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
        assert len(children) == (2 if skipped_stage1 else 3)
        for child in children:
            path = client.download_artifacts(child.info.run_id, "config.yaml", str(grid["folder"]))
            config = yaml.safe_load(open(path))
            seed = int(tags["skinflow.seed"])
            assert config["seed_everything"] == seed and config["data"]["init_args"]["seed"] == seed
            assert config["model"]["init_args"]["backbone"]["seed"] == seed
            assert config["model"]["init_args"]["backbone"]["dve"]["enabled"] == (tags["dve"] == "on")
    # the seeds change the runs (initialisation, order, sampling), not only their tags
    warmups = client.search_runs([exp], "attributes.run_name = 'warmup' and attributes.status = 'FINISHED'")
    by_parent = {r.info.run_id: r for r in finished}
    for row in ("no-stage1-no-dve", "stage1-dve"):
        losses = {w.data.metrics["val/loss"] for w in warmups
                  if by_parent.get(w.data.tags["mlflow.parentRunId"]) and
                  by_parent[w.data.tags["mlflow.parentRunId"]].data.tags["skinflow.row"] == row}
        assert len(losses) == 2
    # the grid's summary is the mean and std of the finished parents' final metrics (the KILLED one left out)
    table = result["summary"]["summary"].table.set_index("row")
    for row in ("no-stage1-no-dve", "stage1-no-dve", "stage1-dve"):
        values = [r.data.metrics["final/test/graded_top1"] for r in finished if r.data.tags["skinflow.row"] == row]
        assert table.loc[row, "final/test/graded_top1_mean"] == pytest.approx(sum(values) / 2)
        assert table.loc[row, "n_final/test/graded_top1"] == 2
    assert (grid["folder"] / "mlruns/compare/grid-test/comparison.png").exists()


def test_bad_grid_files_are_refused_with_the_file_and_row(tmp_path):
    path = write_grid(tmp_path, [{"name": "a", "skip": ["stage9"]}])
    with pytest.raises(AblationError, match=r"rows\[0\] \(a\): no stage named \['stage9'\]"):
        load_ablation(path)
    path.write_text(yaml.safe_dump({"name": "g", "pipeline": str(REPO / "configs/pipeline/demo.yaml"), "seeds": [0, 0],
                                    "rows": [{"name": "a"}]}))
    with pytest.raises(AblationError, match="distinct integers"):
        load_ablation(path)
    path.write_text(yaml.safe_dump({"name": "g", "pipeline": "x.yaml", "seeds": [0], "rows": [{"name": "a", "colour": 1}]}))
    with pytest.raises(Exception, match="x.yaml"):
        load_ablation(path)


@pytest.mark.parametrize("name", ["paper_table.yaml", "paper_table_real_sample.yaml", "paper_table_qwen2_5_vl_7b.yaml"])
def test_shipped_grids_load_with_the_papers_three_rows(name):
    grid = load_ablation(REPO / "configs/ablation" / name)
    assert [r.name for r in grid.rows] == ["no-stage1-no-dve", "stage1-no-dve", "stage1-dve"]
    assert grid.rows[0].skip == ["stage1"] and grid.seeds == [0, 1, 2]
    dve = {r.name: any("dve.enabled=true" in a for a in r.args) for r in grid.rows}
    assert dve == {"no-stage1-no-dve": False, "stage1-no-dve": False, "stage1-dve": True}
    assert grid.pipeline.experiment_name == grid.name
