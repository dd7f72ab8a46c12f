"""MLflow defaults: a sqlite tracking store under ``./mlruns/``, artifacts under ``./mlruns/artifacts``.

MLflow 3.17's plain file store is in maintenance mode, so the kit uses sqlite
(``mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db`` serves it). Lightning's stock config-saving
callback needs a log directory that an sqlite logger does not have; :class:`MLflowConfigCallback` logs the
resolved config as an artifact instead and tags the run with the stage name and the git commit.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import MLFlowLogger

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
DEFAULT_ARTIFACTS = "mlruns/artifacts"


def git_commit(cwd: str | Path | None = None) -> str:
    """HEAD's sha, with ``+dirty`` when the tree has uncommitted changes; ``unknown`` outside git."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def resolve_tracking_uri(tracking_uri: str) -> str:
    """Make a relative ``sqlite:///mlruns/mlflow.db`` absolute (against the current directory).

    MLflow caches one store per URI string; a relative URI would keep pointing at the first directory it was
    opened from when a process changes directory (tests, notebooks), and runs would land in the wrong store.
    """
    if tracking_uri.startswith("sqlite:///") and not tracking_uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(tracking_uri[len("sqlite:///"):]).resolve())
    return tracking_uri


def sqlite_dir(tracking_uri: str) -> Path | None:
    """The folder an ``sqlite:///`` store lives in (created before MLflow opens it)."""
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri[len("sqlite:///"):]).parent
    return None


def store_locations(tracking_uri: str, artifact_location: str) -> tuple[str, str]:
    """Absolute tracking URI and artifact URI; creates the sqlite store's folder."""
    tracking_uri = resolve_tracking_uri(tracking_uri)
    folder = sqlite_dir(tracking_uri)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    if "://" not in artifact_location:
        artifact_location = Path(artifact_location).resolve().as_uri()
    return tracking_uri, artifact_location


def open_experiment(experiment_name: str, tracking_uri: str = DEFAULT_TRACKING_URI, artifact_location: str = DEFAULT_ARTIFACTS):
    """``(client, experiment_id, tracking_uri)`` for the kit's store, creating the experiment if needed."""
    from mlflow import MlflowClient

    tracking_uri, artifact_location = store_locations(tracking_uri, artifact_location)
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(experiment_name, artifact_location)
    return client, experiment_id, tracking_uri


def search_all_runs(client, experiment_ids: list[str], filter_string: str = ""):
    """Every run matching ``filter_string``, following MLflow's pages (search_runs returns at most 1,000 a call)."""
    token = None
    while True:
        page = client.search_runs(experiment_ids, filter_string=filter_string, max_results=1000, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


class SkinflowMLFlowLogger(MLFlowLogger):
    """``MLFlowLogger`` with the kit's store defaults; creates ``./mlruns`` on first use."""

    def __init__(
        self,
        experiment_name: str = "skinflow",
        run_name: str | None = None,
        tracking_uri: str = DEFAULT_TRACKING_URI,
        artifact_location: str = DEFAULT_ARTIFACTS,
        tags: dict | None = None,
        run_id: str | None = None,
    ):
        tracking_uri, artifact_location = store_locations(tracking_uri, artifact_location)
        super().__init__(
            experiment_name=experiment_name, run_name=run_name, tracking_uri=tracking_uri, tags=tags,
            artifact_location=artifact_location, run_id=run_id, save_dir=None,
        )


class MLflowConfigCallback(SaveConfigCallback):
    """Logs the resolved CLI config (``config.yaml``) and the data report to the run; tags stage and commit."""

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        logger = trainer.logger
        if not isinstance(logger, MLFlowLogger):
            return
        client, run_id = logger.experiment, logger.run_id
        client.log_text(run_id, self.parser.dump(self.config, skip_none=False), "config.yaml")
        client.set_tag(run_id, "skinflow.stage", getattr(pl_module, "stage_name", type(pl_module).__name__))
        client.set_tag(run_id, "mlflow.source.git.commit", git_commit())
        report = getattr(trainer.datamodule, "report", None)
        if report:
            client.log_text(run_id, json.dumps(report, indent=2, default=str), "data_report.json")
