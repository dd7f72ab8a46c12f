"""The ablation grid: rows x seeds through the pipeline, tagged, resumable after an interruption, summarised."""

import pytest
import yaml

import skinflow.ablation as ablation_module
from skinflow.ablation import AblationError, ablate_command, load_ablation
from skinflow.cli import main
from tests.conftest import REPO
from tests.test_pipeline import COMMON, FAST


def write_grid(tmp_path, rows, seeds=(0, 1)):
    stage_args = {name: [*COMMON, *args] for name, args in FAST.items()}
    rows = [dict(row, stage_args={k: v + row.get("stage_args", {}).get(k, []) for k, v in stage_args.items()}) for row in rows]
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump({"name": "grid-test", "pipeline": str(REPO / "configs/pipeline/demo.yaml"),
                                    "seeds": list(seeds), "rows": rows}))
    return path


ROWS = [
    {"name": "no-stage1-no-dve", "factors": {"stage1": "no", "dve": "off"}, "skip": ["stage1"]},
    {"name": "stage1-dve", "factors": {"stage1": "yes", "dve": "on"}, "args": ["--model.init_args.backbone.dve.enabled=true"]},
]


def test_grid_runs_tags_resumes_after_an_interruption_and_summarises(tmp_path, monkeypatch, capsys):
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    grid = write_grid(tmp_path, ROWS)
    real_run = ablation_module.run_pipeline
    calls = []

    def interrupted_on_the_third_cell(pipeline, skip, extra, tags, all_args):
        calls.append(tags["skinflow.row"] + "/" + tags["skinflow.seed"])
        if len(calls) == 3:  # stage2 of the third cell dies: its parent run is left FAILED
            extra = {**extra, "stage2": [*extra.get("stage2", []), "--trainer.max_steps=oops"]}
        return real_run(pipeline, skip, extra, tags, all_args)

    monkeypatch.setattr(ablation_module, "run_pipeline", interrupted_on_the_third_cell)
    with pytest.raises(SystemExit):
        main(["ablate", "--config", str(grid)])
    assert calls == ["no-stage1-no-dve/0", "no-stage1-no-dve/1", "stage1-dve/0"]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name("grid-test").experiment_id
    parents = lambda: client.search_runs([exp], "tags.`skinflow.ablation` = 'grid-test'")  # noqa: E731
    first = {(r.data.tags["skinflow.row"], r.data.tags["skinflow.seed"]): r for r in parents()}
    assert first[("stage1-dve", "0")].info.status == "FAILED"

    calls.clear()
    result = ablate_command(["--config", str(grid)])
    assert calls == ["stage1-dve/0", "stage1-dve/1"]  # the two finished cells are skipped, not rerun
    assert [s[:2] for s in result["skipped"]] == [("no-stage1-no-dve", 0), ("no-stage1-no-dve", 1)]
    runs = parents()
    statuses = sorted((r.data.tags["skinflow.row"], r.data.tags["skinflow.seed"], r.info.status) for r in runs)
    assert statuses == [("no-stage1-no-dve", "0", "FINISHED"), ("no-stage1-no-dve", "1", "FINISHED"),
                        ("stage1-dve", "0", "FINISHED"), ("stage1-dve", "0", "KILLED"), ("stage1-dve", "1", "FINISHED")]
    finished = [r for r in runs if r.info.status == "FINISHED"]
    for run in finished:
        tags = run.data.tags
        assert tags["dve"] == ("on" if tags["skinflow.row"] == "stage1-dve" else "off")
        skipped_stage1 = tags.get("skipped.stage1") == "true"
        assert skipped_stage1 == (tags["skinflow.row"] == "no-stage1-no-dve")
        assert tags["skinflow.final_stage"] == "stage2" and "final/test/top1_exact" in run.data.metrics
        # the seed and the DVE switch reached every stage: each child run's resolved config carries them
        children = client.search_runs([exp], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
        assert len(children) == (2 if skipped_stage1 else 3)
        for child in children:
            config = yaml.safe_load(open(client.download_artifacts(child.info.run_id, "config.yaml", str(tmp_path))))
            assert config["seed_everything"] == int(tags["skinflow.seed"])
            assert config["model"]["init_args"]["backbone"]["dve"]["enabled"] == (tags["dve"] == "on")
    # the grid's summary is the mean and std of the finished parents' final metrics
    table = result["summary"]["summary"].table.set_index("row")
    for row in ("no-stage1-no-dve", "stage1-dve"):
        values = [r.data.metrics["final/test/graded_top1"] for r in finished if r.data.tags["skinflow.row"] == row]
        assert table.loc[row, "final/test/graded_top1_mean"] == pytest.approx(sum(values) / 2)
        assert table.loc[row, "n_final/test/graded_top1"] == 2
    assert "[ablate] 2 cells run, 2 skipped as done" in capsys.readouterr().out


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
