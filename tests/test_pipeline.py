"""The pipeline command: parent and child MLflow runs, stage handoff, skipping, small checkpoints, clear errors."""

import os
import signal

import pytest
import torch
import yaml
from lightning.pytorch import Callback

from skinflow.cli import main
from skinflow.pipeline import PipelineError, load_pipeline
from tests.conftest import REPO

FAST = {
    "warmup": ["--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.check_val_every_n_epoch=1"],
    "stage1": ["--trainer.max_steps=2", "--trainer.val_check_interval=2", "--trainer.log_every_n_steps=1"],
    "stage2": ["--trainer.max_steps=2", "--trainer.val_check_interval=2", "--trainer.log_every_n_steps=1"],
}
COMMON = ["--data.init_args.synthetic_per_class=4", "--data.init_args.progress=false", "--trainer.limit_val_batches=1",
          "--trainer.limit_test_batches=1", "--trainer.enable_progress_bar=false", "--model.init_args.max_new_tokens=8"]


def run_demo(tmp_path, monkeypatch, *extra):
    monkeypatch.chdir(tmp_path)
    args = ["pipeline", "--config", str(REPO / "configs/pipeline/demo.yaml"), *extra]
    for stage, stage_args in FAST.items():
        args += [f"--stage-arg={stage}={a}" for a in [*COMMON, *stage_args]]
    from skinflow.pipeline import pipeline_command

    return pipeline_command(args[1:])


class StatusAtTrainStart(Callback):
    """The child run's status when fit starts: after the start-of-stage evaluation of Stage I and II."""

    seen: dict[str, str] = {}

    def on_train_start(self, trainer, pl_module) -> None:
        logger = trainer.logger
        StatusAtTrainStart.seen[pl_module.stage_name] = logger.experiment.get_run(logger.run_id).info.status


def test_pipeline_makes_parent_and_child_runs_and_hands_over_small_checkpoints(tmp_path, monkeypatch, capsys):
    from mlflow import MlflowClient

    from skinflow import launcher
    from skinflow.analysis.compare import compare

    monkeypatch.setitem(launcher.TRAINER_DEFAULTS, "callbacks", [*launcher.TRAINER_DEFAULTS["callbacks"], StatusAtTrainStart()])
    result = run_demo(tmp_path, monkeypatch)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    parent = client.get_run(result["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["skinflow.stage"] == "pipeline"
    assert list(result["children"]) == ["warmup", "stage1", "stage2"]
    for name, run_id in result["children"].items():
        child = client.get_run(run_id)
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.tags["skinflow.stage"] == name
    stage1 = client.get_run(result["children"]["stage1"]).data
    assert {"start/val/reward/caption_fields", "val/reward/caption_fields", "reward/caption_fields"} <= set(stage1.metrics)
    stage2 = client.get_run(result["children"]["stage2"]).data
    assert {"start/test/graded_top1", "test/graded_top1", "reward/ranked_diagnosis", "rl/kl"} <= set(stage2.metrics)
    assert "stage2/test/graded_top1" in parent.data.metrics
    assert stage2.params["init_from"] == result["checkpoints"]["stage1"]
    # the handed-over checkpoint: trainable weights and identity only, under 2x their bytes
    checkpoint = torch.load(result["checkpoints"]["stage1"], map_location="cpu", weights_only=False)
    from skinflow.stages.grpo import GRPOStage

    stage = GRPOStage()
    trainable_bytes = sum(p.numel() * p.element_size() for p in stage.parameters() if p.requires_grad)
    size = (tmp_path / result["checkpoints"]["stage1"]).stat().st_size
    assert size < 2 * trainable_bytes
    assert set(checkpoint["state_dict"]) == {n for n, p in stage.named_parameters() if p.requires_grad}
    assert "optimizer_states" not in checkpoint and checkpoint["backbone_identity"]["preset"] == "tiny"
    out = capsys.readouterr().out
    assert "graded_top1" in out and "stage2 (start)" in out
    assert f"python -m skinflow report --run-id {parent.info.run_id} --tracking-uri sqlite:///" in out  # what next
    assert f"#/experiments/{parent.info.experiment_id}/runs/{parent.info.run_id}?workflowType=machine_learning" in out
    # the parent run's page opens on its headline: the final stage's test metrics, then the table per stage
    note = parent.data.tags["mlflow.note.content"]
    graded = parent.data.metrics["final/test/graded_top1"]
    assert note.startswith("**Final test (stage2):** ") and f"graded_top1 {graded:.4f}" in note.splitlines()[0]
    assert "| stage2 (start) |" in note and "| stage1 |" not in note  # stage1 is not tested in the demo
    # a child run is FINISHED only when its stage is done, not after its start-of-stage validation
    assert StatusAtTrainStart.seen == {"warmup": "RUNNING", "stage1": "RUNNING", "stage2": "RUNNING"}
    assert all(client.get_run(r).info.status == "FINISHED" for r in result["children"].values())
    # compare: pipeline parents by default, stage children with level="stage"
    experiment = client.get_experiment(parent.info.experiment_id).name
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    parents = compare(experiment, None, [], uri, out=tmp_path / "c1")["summary"]
    assert parents.table["run_name"].tolist() == [parent.info.run_name] and parents.metrics[0].startswith("final/")
    assert not parents.left_out
    # the README's example groups the demo's own parent runs by factors the pipeline tags itself
    assert {k: parent.data.tags[k] for k in ("warmup", "stage1", "stage2", "dve")} == {
        "warmup": "yes", "stage1": "yes", "stage2": "yes", "dve": "off"}
    grouped = compare(experiment, None, ["stage1", "dve"], uri, out=tmp_path / "c3")["summary"]
    assert grouped.table[["stage1", "dve"]].values.tolist() == [["yes", "off"]]
    stages = compare(experiment, ["val/reward/caption_fields"], [], uri, out=tmp_path / "c2", level="stage")["summary"]
    assert sorted(stages.table["run_name"]) == ["stage1", "stage2", "warmup"] and not stages.left_out


def test_skipping_stage1_hands_warmup_to_stage2(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    result = run_demo(tmp_path, monkeypatch, "--skip", "stage1")
    assert list(result["children"]) == ["warmup", "stage2"]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    stage2 = client.get_run(result["children"]["stage2"]).data
    assert stage2.params["init_from"] == result["checkpoints"]["warmup"]
    parent_tags = client.get_run(result["parent_run_id"]).data.tags
    assert parent_tags["skipped.stage1"] == "true" and parent_tags["stage1"] == "no" and parent_tags["warmup"] == "yes"


def test_pipeline_file_errors_name_the_key(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("stages:\n  - name: a\n    config: missing.yaml\n")
    with pytest.raises(PipelineError, match=r"p\.yaml stages\[0\] \(a\): config .*missing\.yaml not found"):
        load_pipeline(bad)
    (tmp_path / "c.yaml").write_text("model: {}\n")
    for name in ("../escape", "/abs", ".hidden", "a b"):
        bad.write_text(yaml.safe_dump({"stages": [{"name": name, "config": "c.yaml"}]}))
        with pytest.raises(PipelineError, match=r"stage name .* must use only letters"):
            load_pipeline(bad)
    bad.write_text("stage: []\n")
    with pytest.raises(PipelineError, match=r"unknown keys \['stage'\]"):
        load_pipeline(bad)
    with pytest.raises(SystemExit):
        main(["pipeline"])


class SigtermInStage(Callback):
    """SIGTERM after the given optimizer step of one stage, as a scheduler would send it."""

    def __init__(self, stage: str, step: int):
        self.stage, self.step = stage, step

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        if pl_module.stage_name == self.stage and trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def test_pipeline_killed_in_stage1_resumes_there_in_the_same_runs(tmp_path, monkeypatch):
    from lightning.pytorch.utilities.exceptions import SIGTERMException
    from mlflow import MlflowClient

    from skinflow import launcher as cli

    monkeypatch.setitem(cli.TRAINER_DEFAULTS, "callbacks", [*cli.TRAINER_DEFAULTS["callbacks"], SigtermInStage("stage1", 1)])
    with pytest.raises(SIGTERMException):
        run_demo(tmp_path, monkeypatch)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name("skinflow-pipeline").experiment_id
    (parent,) = client.search_runs([experiment], filter_string="tags.`skinflow.stage` = 'pipeline'")
    assert parent.info.status == "KILLED"
    children = {r.info.run_name: r for r in client.search_runs([experiment], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")}
    assert sorted(children) == ["stage1", "warmup"]
    assert children["stage1"].info.status == "KILLED" and children["warmup"].data.tags["skinflow.stage_done"] == "true"
    warmup_end = children["warmup"].info.end_time

    monkeypatch.setitem(cli.TRAINER_DEFAULTS, "callbacks", cli.TRAINER_DEFAULTS["callbacks"][:-1])
    result = run_demo(tmp_path, monkeypatch, "--resume", "last")
    assert result["parent_run_id"] == parent.info.run_id and client.get_run(parent.info.run_id).info.status == "FINISHED"
    assert result["children"]["warmup"] == children["warmup"].info.run_id
    assert client.get_run(children["warmup"].info.run_id).info.end_time == warmup_end  # not re-run
    assert result["children"]["stage1"] == children["stage1"].info.run_id  # continued, not a new run
    stage1 = client.get_run(children["stage1"].info.run_id)
    assert stage1.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(stage1.info.run_id, "rl/kl")) == [0, 1]  # step 0, then 1
    assert {"warmup/test/top1_exact", "stage2/test/top1_exact", "final/test/top1_exact"} <= set(
        client.get_run(parent.info.run_id).data.metrics)
    assert len(client.search_runs([experiment])) == 4  # one parent, three children: nothing started twice
    with pytest.raises(PipelineError, match="no unfinished run"):
        run_demo(tmp_path, monkeypatch, "--resume", "last")



class SigtermDuringTest(Callback):
    """SIGTERM while one stage runs its test after fit: the last (only) test batch, where Lightning notes the
    signal without raising it."""

    def __init__(self, stage: str):
        self.stage = stage

    def on_test_batch_start(self, trainer, pl_module, *args) -> None:
        if pl_module.stage_name == self.stage and not pl_module.metric_prefix:
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_during_a_stages_test_stops_the_pipeline_with_its_runs_killed(tmp_path, monkeypatch, capsys):
    from lightning.pytorch.utilities.exceptions import SIGTERMException
    from mlflow import MlflowClient

    from skinflow import launcher as cli
    from skinflow.pipeline import find_parent

    monkeypatch.setitem(cli.TRAINER_DEFAULTS, "callbacks", [*cli.TRAINER_DEFAULTS["callbacks"], SigtermDuringTest("warmup")])
    with pytest.raises(SIGTERMException):
        run_demo(tmp_path, monkeypatch)
    assert "SIGTERM during warmup's test" in capsys.readouterr().err
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name("skinflow-pipeline").experiment_id
    (parent,) = client.search_runs([experiment], filter_string="tags.`skinflow.stage` = 'pipeline'")
    children = client.search_runs([experiment], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert [c.info.run_name for c in children] == ["warmup"]  # Stage I never started
    (warmup,) = children
    assert warmup.info.status == parent.info.status == "KILLED"
    assert warmup.data.tags["skinflow.interrupted"].startswith("SIGTERM during warmup's test")
    assert parent.data.tags["skinflow.interrupted"] == "SIGTERM"
    # --resume last takes the newest *unfinished* run of the file, not a newer finished one
    newer = client.create_run(experiment, run_name="newer", tags={"skinflow.stage": "pipeline",
                                                                   "skinflow.pipeline": parent.data.tags["skinflow.pipeline"]})
    client.set_terminated(newer.info.run_id, "FINISHED")
    pipeline = load_pipeline(REPO / "configs/pipeline/demo.yaml")
    assert find_parent(client, experiment, pipeline, "last").info.run_id == parent.info.run_id


@pytest.mark.parametrize("name", ["demo.yaml", "demo_quick.yaml", "ablation_tiny_synthetic.yaml", "ablation_tiny_real_sample.yaml"])
def test_every_stage_of_a_shipped_pipeline_builds_the_backbone_its_handoff_accepts(name, monkeypatch):
    """A stage starts from the previous stage's checkpoint only on the same backbone (``check_identity``: the
    architecture's hash). A stage whose config or args named another (a depth, the stem) would fail at the handoff,
    after the earlier stages' minutes or hours; here it fails at once. Each stage is built as the pipeline builds it:
    its config, then its args."""
    from skinflow.launcher import lightning_cli
    from skinflow.models.backbone import backbone_identity

    monkeypatch.chdir(REPO)  # the configs' data paths are relative to the repository root (nothing is read here)
    pipeline = load_pipeline(REPO / "configs/pipeline" / name)
    identities = {}
    for stage in pipeline.stages:
        cli = lightning_cli(["--config", str(stage.config), *stage.args, "--trainer.logger=false"], run=False)
        identities[stage.name] = backbone_identity(cli.model.backbone_spec, cli.model.model)["config_sha256"]
    assert len(identities) == len(pipeline.stages) >= 3
    assert len(set(identities.values())) == 1, identities
