"""``python -m skinflow pipeline --config configs/pipeline/demo.yaml``: warmup -> Stage I -> Stage II -> test.

A pipeline file lists stages in order; each names an experiment config (the same file ``fit --config`` takes,
path relative to the pipeline file) and may add CLI arguments::

    experiment_name: skinflow-pipeline
    stages:
      - name: warmup
        config: ../experiment/warmup_tiny_synthetic.yaml
      - name: stage1
        config: ../experiment/stage1_tiny_synthetic.yaml
        evaluate_start: true     # validate (and test, if the stage tests) the starting checkpoint first: start/val/...
        skip: false              # true: leave the stage out (the "no Stage I" ablation)
        args: ["--trainer.max_steps=40"]

Every stage runs as a child MLflow run under one parent run. A stage starts from the checkpoint of the last stage
that ran (``init_from``); the handed-over checkpoint holds only trainable weights and the backbone identity.
After each stage its final weights are tested (``test: false`` turns it off), and a table of test metrics per
stage is printed at the end and logged to the parent run (``summary.json`` table; every test key of every stage as
``<stage>/test/...``, and those of the last tested stage again as ``final/test/...``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from skinflow.data.names import file_stem
from skinflow.errors import UserError
from skinflow.metrics.headline import HEADLINE_METRICS

log = logging.getLogger(__name__)

SUMMARY_METRICS = (
    *HEADLINE_METRICS, "test/parse_failure", "test/reward/caption_fields", "test/reward/ranked_diagnosis",
)
STAGE_KEYS = {"name", "config", "args", "skip", "evaluate_start", "test"}
PIPELINE_KEYS = {"experiment_name", "run_name", "tracking_uri", "artifact_location", "checkpoint_dir", "stages"}


class PipelineError(UserError):
    pass


@dataclass
class StageEntry:
    name: str
    config: Path
    args: list[str] = field(default_factory=list)
    skip: bool = False
    evaluate_start: bool = False
    test: bool = True


@dataclass
class Pipeline:
    stages: list[StageEntry]
    experiment_name: str = "skinflow-pipeline"
    run_name: str | None = None
    tracking_uri: str = "sqlite:///mlruns/mlflow.db"
    artifact_location: str = "mlruns/artifacts"
    checkpoint_dir: str = "mlruns/checkpoints"
    source: Path | None = None


def load_pipeline(path: str | Path) -> Pipeline:
    """Read and check a pipeline file; errors name the file and the offending key or stage."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"pipeline file not found: {path}")
    raw = yaml.safe_load(path.read_text()) or {}
    unknown = set(raw) - PIPELINE_KEYS
    if unknown:
        raise PipelineError(f"{path}: unknown keys {sorted(unknown)}; allowed: {sorted(PIPELINE_KEYS)}")
    if not raw.get("stages"):
        raise PipelineError(f"{path}: 'stages' must list at least one stage")
    stages, names = [], set()
    for i, entry in enumerate(raw["stages"]):
        where = f"{path} stages[{i}]"
        if not isinstance(entry, dict) or "name" not in entry or "config" not in entry:
            raise PipelineError(f"{where}: each stage needs 'name' and 'config'")
        bad = set(entry) - STAGE_KEYS
        if bad:
            raise PipelineError(f"{where} ({entry['name']}): unknown keys {sorted(bad)}; allowed: {sorted(STAGE_KEYS)}")
        if not isinstance(entry["name"], str) or file_stem(entry["name"], "") != entry["name"]:
            raise PipelineError(f"{where}: stage name {entry['name']!r} must use only letters, digits, '.', '_' and "
                                "'-' (it names the stage's checkpoint file)")
        if entry["name"] in names:
            raise PipelineError(f"{where}: stage name {entry['name']!r} is used twice")
        names.add(entry["name"])
        config = (path.parent / entry["config"]).resolve()
        if not config.is_file():
            raise PipelineError(f"{where} ({entry['name']}): config {config} not found")
        stages.append(StageEntry(entry["name"], config, [str(a) for a in entry.get("args", [])], bool(entry.get("skip", False)),
                                 bool(entry.get("evaluate_start", False)), bool(entry.get("test", True))))
    options = {k: raw[k] for k in PIPELINE_KEYS - {"stages"} if k in raw}
    return Pipeline(stages=stages, source=path, **options)


def format_table(rows: dict[str, dict[str, float]], columns: tuple[str, ...] = SUMMARY_METRICS) -> str:
    """Fixed-width text table: one row per stage, one column per metric (``-`` where absent).

    >>> print(format_table({"warmup": {"test/top1_exact": 0.5}}, ("test/top1_exact", "test/graded_top1")))
    stage   top1_exact  graded_top1
    warmup      0.5000            -
    """
    names = [c.removeprefix("test/") for c in columns]
    width = max([len("stage"), *map(len, rows)])
    lines = ["  ".join([f"{'stage':<{width}}", *names])]
    for stage, metrics in rows.items():
        cells = [f"{metrics[c]:.4f}" if c in metrics else "-" for c in columns]
        lines.append("  ".join([f"{stage:<{width}}", *(f"{cell:>{len(n)}}" for cell, n in zip(cells, names))]))
    return "\n".join(lines)


def markdown_table(rows: dict[str, dict[str, float]], columns: tuple[str, ...] = SUMMARY_METRICS) -> str:
    """The summary as a Markdown table (the parent run's description in MLflow's run page).

    >>> print(markdown_table({"warmup": {"test/top1_exact": 0.5}}, ("test/top1_exact", "test/graded_top1")))
    | stage | top1_exact | graded_top1 |
    |---|---|---|
    | warmup | 0.5000 | - |
    """
    lines = ["| stage | " + " | ".join(c.removeprefix("test/") for c in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for stage, metrics in rows.items():
        lines.append(f"| {stage} | " + " | ".join(f"{metrics[c]:.4f}" if c in metrics else "-" for c in columns) + " |")
    return "\n".join(lines)


def run_description(table: dict[str, dict[str, float]], final_stage: str | None, next_text: str) -> str:
    """What the parent run's page shows first (MLflow's ``mlflow.note.content``): the headline test metrics of the
    final stage on one line (the run's ``final/test/...`` metrics), the test metrics per stage, the next commands.

    >>> print(run_description({"warmup": {"test/top1_exact": 0.5}, "stage1": {}}, "warmup", "Next: ...").splitlines()[0])
    **Final test (warmup):** top1_exact 0.5000 (the run's `final/test/...` metrics)
    """
    rows = {stage: metrics for stage, metrics in table.items() if metrics}  # a stage that was not tested: no row
    head = ""
    if final_stage and rows.get(final_stage):
        final = rows[final_stage]
        values = " · ".join(f"{k.removeprefix('test/')} {final[k]:.4f}" for k in HEADLINE_METRICS if k in final)
        head = f"**Final test ({final_stage}):** {values} (the run's `final/test/...` metrics)\n\n"
    return (f"{head}**Test metrics per stage** (`<stage> (start)`: its starting weights):\n\n{markdown_table(rows)}\n\n"
            f"Each stage's curves are in its child run (Model metrics tab).\n\n```\n{next_text}\n```\n")


def log_metrics(client, run_id: str, values: dict[str, float]) -> None:
    from mlflow.entities import Metric

    if values:
        stamp = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, float(v), stamp, 0) for k, v in values.items()])


@contextmanager
def bare_argv():
    """LightningCLI warns when ``sys.argv`` carries arguments besides the ones it is given."""
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        yield
    finally:
        sys.argv = saved


def stage_checkpoint(default_root_dir: str, experiment_id: str, run_id: str) -> Path | None:
    """The ``last.ckpt`` a stage's trainer wrote for its child run, if any (``skinflow.resume``)."""
    from skinflow.resume import checkpoint_folder

    from skinflow.stages.fsdp import checkpoint_exists

    last = checkpoint_folder(default_root_dir, experiment_id, run_id) / "last.ckpt"
    return last if checkpoint_exists(last) else None  # a file, or a sharded (FSDP2) folder


def find_parent(client, experiment_id: str, pipeline: Pipeline, resume: str):
    """The parent run ``--resume`` names: a run id, or ``last`` (the newest unfinished run of this pipeline file)."""
    from mlflow.exceptions import MlflowException

    if resume != "last":
        try:
            run = client.get_run(resume)
        except MlflowException as err:
            raise PipelineError(f"--resume {resume}: no such run in {client.tracking_uri}") from err
        if run.data.tags.get("skinflow.stage") != "pipeline":
            raise PipelineError(f"--resume {resume}: run {resume} is not a pipeline's parent run")
        return run
    runs = client.search_runs([experiment_id], filter_string=f"tags.`skinflow.pipeline` = '{pipeline.source}' and "
                              "attributes.status != 'FINISHED'", order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise PipelineError(f"--resume last: no unfinished run of {pipeline.source} in experiment "
                            f"{pipeline.experiment_name!r}; leave --resume out to start a new one")
    return runs[0]


def close_run(client, run_id: str, error: BaseException) -> None:
    """Mark a run that an exception left RUNNING as KILLED (a signal) or FAILED."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    run = client.get_run(run_id)
    signalled = isinstance(error, (SIGTERMException, KeyboardInterrupt))
    if signalled and "skinflow.interrupted" not in run.data.tags:
        client.set_tag(run_id, "skinflow.interrupted", "SIGTERM" if isinstance(error, SIGTERMException) else "SIGINT")
    if run.info.status == "RUNNING":
        client.set_terminated(run_id, "KILLED" if signalled else "FAILED")


def run_pipeline(pipeline: Pipeline, skip: tuple[str, ...] = (), extra_args: dict[str, list[str]] | None = None,
                 tags: dict[str, str] | None = None, all_args: list[str] | None = None, resume: str | None = None) -> dict:
    """Run the stages; returns ``{"parent_run_id", "children": {stage: run_id}, "checkpoints", "table"}``.

    ``tags`` go on the parent run (the ablation grid's factors); ``all_args`` are added to every stage's CLI
    arguments (a seed, the DVE switch: whatever all stages must agree on). The parent also gets ``final/<metric>``:
    the test metrics of the last stage that ran, so pipelines with different stages compare on one key.

    ``resume`` (a parent run id, or ``last``) continues an interrupted pipeline in its parent run: stages that
    finished (tag ``skinflow.stage_done``) are not re-run, their handoff checkpoints and test metrics are reused;
    the interrupted stage continues its child run from its ``last.ckpt`` (or starts over in it, when it stopped
    before writing one)."""
    from skinflow.launcher import TRAINER_DEFAULTS, lightning_cli
    from skinflow.stages.fsdp import checkpoint_exists
    from skinflow.resume import CONFIG_KEY_TAG, SigtermWatch, pipeline_config_key
    from skinflow.tracking.store import git_commit, open_experiment

    extra_args = extra_args or {}
    unknown = (set(skip) | set(extra_args)) - {s.name for s in pipeline.stages}
    if unknown:
        raise PipelineError(f"no stage named {sorted(unknown)} in {pipeline.source}; stages: {[s.name for s in pipeline.stages]}")
    if all(stage.skip or stage.name in skip for stage in pipeline.stages):
        raise PipelineError(f"every stage of {pipeline.source} is skipped ({[s.name for s in pipeline.stages]}): nothing to run")
    client, experiment_id, tracking_uri = open_experiment(pipeline.experiment_name, pipeline.tracking_uri, pipeline.artifact_location)
    earlier: dict[str, object] = {}  # stage name -> its child run, when resuming
    if resume:
        parent = find_parent(client, experiment_id, pipeline, resume)
        parent_id = parent.info.run_id
        client.update_run(parent_id, "RUNNING")
        for child in client.search_runs([experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'"):
            earlier[child.info.run_name] = child
        print(f"[pipeline] resuming parent run {parent_id}")
    else:
        name = pipeline.run_name or (f"pipeline-{pipeline.source.stem}" if pipeline.source else "pipeline")
        parent = client.create_run(experiment_id, run_name=name, tags={
            "skinflow.stage": "pipeline", "mlflow.source.git.commit": git_commit(),
            "skinflow.pipeline": str(pipeline.source), **(tags or {}),
            CONFIG_KEY_TAG: pipeline_config_key(pipeline.source.read_text() if pipeline.source else "", skip, extra_args, all_args or []),
        })
        parent_id = parent.info.run_id
        if pipeline.source is not None:
            client.log_text(parent_id, pipeline.source.read_text(), "pipeline.yaml")
    checkpoints_dir = Path(pipeline.checkpoint_dir) / parent_id
    result = {"parent_run_id": parent_id, "children": {}, "checkpoints": {}, "table": {}, "tests": {}}
    previous: Path | None = None
    child_id = None
    watch = SigtermWatch().__enter__()  # a SIGTERM at any phase, between stages included, stops the pipeline
    try:
        for stage in pipeline.stages:
            watch.check(None, f"the pipeline before {stage.name}")
            if stage.skip or stage.name in skip:
                client.set_tag(parent_id, f"skipped.{stage.name}", "true")
                set_factor(client, parent_id, tags, stage.name, "no")
                print(f"[pipeline] {stage.name}: skipped")
                continue
            set_factor(client, parent_id, tags, stage.name, "yes")
            child = earlier.get(stage.name)
            checkpoint = checkpoints_dir / f"{stage.name}.ckpt"
            if child is not None and child.data.tags.get("skinflow.stage_done") == "true" and checkpoint_exists(checkpoint):
                print(f"[pipeline] {stage.name}: finished in run {child.info.run_id}; not re-run")
                child_id = child.info.run_id
                result["children"][stage.name] = child_id
                result["checkpoints"][stage.name] = str(checkpoint)
                collect_stage(client, child_id, stage.name, result)
                previous = checkpoint
                continue
            resume_from = None
            if child is not None:
                child_id = child.info.run_id
                resume_from = stage_checkpoint(TRAINER_DEFAULTS["default_root_dir"], experiment_id, child_id)
            else:
                child_id = client.create_run(experiment_id, run_name=stage.name, tags={"mlflow.parentRunId": parent_id}).info.run_id
            result["children"][stage.name] = child_id
            args = ["--config", str(stage.config), *stage.args, *(all_args or []), *extra_args.get(stage.name, []),
                    f"--trainer.logger.init_args.run_id={child_id}",
                    f"--trainer.logger.init_args.experiment_name={pipeline.experiment_name}",
                    f"--trainer.logger.init_args.tracking_uri={tracking_uri}",
                    f"--trainer.logger.init_args.artifact_location={pipeline.artifact_location}"]
            if previous is not None:
                args.append(f"--model.init_args.init_from={previous}")
            how = f" (continuing run {child_id} from {resume_from})" if resume_from else (f" (again, in run {child_id})" if child else "")
            print(f"[pipeline] {stage.name}: {stage.config.name}" + (f" from {previous.name}" if previous else "") + how)
            with bare_argv():
                cli = lightning_cli(args, run=False)
            model, datamodule, trainer = cli.model, cli.datamodule, cli.trainer
            set_factor(client, parent_id, tags, "dve", "on" if model.backbone_spec.dve.enabled else "off")
            if hasattr(trainer.logger, "hold_finished"):
                trainer.logger.hold_finished = True  # FINISHED below, once the stage is done
            if stage.evaluate_start and resume_from is None:
                model.metric_prefix = "start/"
                trainer.validate(model, datamodule=datamodule)
                watch.check(trainer, f"{stage.name}'s starting validation")
                if stage.test:
                    trainer.test(model, datamodule=datamodule)
                    watch.check(trainer, f"{stage.name}'s starting test")
                model.metric_prefix = ""
            trainer.fit(model, datamodule=datamodule, ckpt_path=str(resume_from) if resume_from else None)
            watch.check(trainer, f"{stage.name}'s fit")
            trainer.save_checkpoint(checkpoint, weights_only=True)  # trainable weights + identity (on_save_checkpoint)
            result["checkpoints"][stage.name] = str(checkpoint)
            client.log_param(child_id, "handoff_checkpoint", str(checkpoint))
            if stage.test:
                trainer.test(model, datamodule=datamodule)
                watch.check(trainer, f"{stage.name}'s test")
            collect_stage(client, child_id, stage.name, result)
            client.set_tag(child_id, "skinflow.stage_done", "true")
            client.set_terminated(child_id, "FINISHED")
            previous = checkpoint
    except BaseException as error:
        if child_id is not None:
            close_run(client, child_id, error)  # a stage that failed before its trainer started stays RUNNING otherwise
        close_run(client, parent_id, error)
        raise
    finally:
        watch.__exit__()
    tested = [name for name in result["children"] if result["tests"].get(name)]
    if tested:
        log_metrics(client, parent_id, {f"final/{k}": v for k, v in result["tests"][tested[-1]].items()})
        client.set_tag(parent_id, "skinflow.final_stage", tested[-1])
    rows = list(result["table"])
    client.log_table(parent_id, {"stage": rows, **{k: [result["table"][r].get(k) for r in rows] for k in SUMMARY_METRICS}}, "summary.json")
    group_by = ",".join([s.name for s in pipeline.stages if s.name == "stage1"] + ["dve"])  # factors it tags itself
    steps = next_steps(parent_id, pipeline.experiment_name, experiment_id, tracking_uri, group_by)
    client.set_tag(parent_id, NOTE_TAG, run_description(result["table"], tested[-1] if tested else None, steps))
    client.set_terminated(parent_id, "FINISHED")
    print("\n" + format_table(result["table"]))
    print(f"\n[pipeline] parent run {parent_id} in experiment {pipeline.experiment_name!r} ({tracking_uri})")
    print(steps)
    return result


def next_steps(parent_id: str, experiment_name: str, experiment_id: str, tracking_uri: str,
               group_by: str = "stage1,dve") -> str:
    """The commands to look at a finished pipeline: its report, a comparison, the MLflow UI at its run.

    >>> print(next_steps("abc", "skinflow-pipeline", "1", "sqlite:///w/mlruns/mlflow.db"))  # doctest: +NORMALIZE_WHITESPACE
    Next:
      python -m skinflow report --run-id abc --tracking-uri sqlite:///w/mlruns/mlflow.db
      python -m skinflow compare --experiment skinflow-pipeline --group-by stage1,dve --tracking-uri sqlite:///w/mlruns/mlflow.db
      mlflow ui --backend-store-uri sqlite:///w/mlruns/mlflow.db   then open
        http://127.0.0.1:5000/#/experiments/1/runs/abc?workflowType=machine_learning

    ``workflowType=machine_learning`` opens MLflow 3's Model training layout (runs, metrics, charts): its UI takes the
    layout from that parameter, else from the browser's last choice, GenAI by default (MLflow 3.17).
    """
    store = f" --tracking-uri {tracking_uri}"
    return ("Next:\n"
            f"  python -m skinflow report --run-id {parent_id}{store}\n"
            f"  python -m skinflow compare --experiment {experiment_name} --group-by {group_by}{store}\n"
            f"  mlflow ui --backend-store-uri {tracking_uri}   then open\n"
            f"    {ui_link(experiment_id, parent_id)}")


UI_LAYOUT = "workflowType=machine_learning"  # MLflow 3's Model training layout (not its GenAI one)
NOTE_TAG = "mlflow.note.content"  # a run's description: the top of its Overview tab


def ui_link(experiment_id: str, run_id: str | None = None, base: str = "http://127.0.0.1:5000") -> str:
    """The MLflow UI's page of a run (or of the experiment's runs) in the Model training layout.

    >>> ui_link("3"), ui_link("3", "ab")
    ('http://127.0.0.1:5000/#/experiments/3/runs?workflowType=machine_learning', 'http://127.0.0.1:5000/#/experiments/3/runs/ab?workflowType=machine_learning')
    """
    return f"{base}/#/experiments/{experiment_id}/runs" + (f"/{run_id}" if run_id else "") + f"?{UI_LAYOUT}"


def set_factor(client, parent_id: str, given: dict | None, name: str, value: str) -> None:
    """Tag the parent run with a factor ``compare --group-by`` can use on any pipeline run (``<stage>``: yes/no for
    whether the stage ran, ``dve``: on/off), in the ablation grid's spelling; a factor the caller tagged (a grid
    row's ``factors``) is left as given."""
    if name not in (given or {}):
        client.set_tag(parent_id, name, value)


def collect_stage(client, child_id: str, name: str, result: dict) -> None:
    """A finished stage's test metrics into ``result`` (its table row and every test key) and onto the parent."""
    metrics = client.get_run(child_id).data.metrics
    result["table"][name] = {k: metrics[k] for k in SUMMARY_METRICS if k in metrics}
    start = {k: metrics[f"start/{k}"] for k in SUMMARY_METRICS if f"start/{k}" in metrics}
    if start:
        result["table"][f"{name} (start)"] = start
    tests = {k: v for k, v in metrics.items() if k.startswith("test/")}  # every test key, fairness included
    result["tests"][name] = tests
    log_metrics(client, result["parent_run_id"], {f"{name}/{k}": v for k, v in tests.items()})


def pipeline_command(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(prog="python -m skinflow pipeline", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="pipeline YAML (see configs/pipeline/)")
    parser.add_argument("--skip", action="append", default=[], metavar="STAGE", help="leave out a stage (repeatable)")
    parser.add_argument("--stage-arg", action="append", default=[], metavar="STAGE=ARG",
                        help="extra CLI argument for one stage, e.g. warmup=--trainer.max_epochs=2 (repeatable)")
    parser.add_argument("--run-name", default=None, help="name of the parent MLflow run")
    parser.add_argument("--resume", default=None, metavar="RUN_ID|last",
                        help="continue an interrupted pipeline in its parent run: finished stages are not re-run, the "
                             "interrupted one continues from its last checkpoint (last: the newest unfinished run of "
                             "this pipeline file)")
    ns = parser.parse_args(argv)
    pipeline = load_pipeline(ns.config)
    if ns.run_name:
        pipeline.run_name = ns.run_name
    extra: dict[str, list[str]] = {}
    for item in ns.stage_arg:
        name, sep, arg = item.partition("=")
        if not sep or not arg:
            parser.error(f"--stage-arg {item!r} is not STAGE=ARG")
        extra.setdefault(name, []).append(arg)
    result = run_pipeline(pipeline, tuple(ns.skip), extra, resume=ns.resume)
    log.info("pipeline result: %s", json.dumps(result, default=str))
    return result
