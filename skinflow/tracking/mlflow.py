"""MLflow for Lightning (the store itself: ``skinflow.tracking.store``). Lightning's stock config-saving
callback needs a log directory that an sqlite logger does not have; :class:`MLflowConfigCallback` logs the
resolved config as an artifact instead and tags the run with the stage name and the git commit.
"""

from __future__ import annotations

import json

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only

from skinflow.tracking.store import DEFAULT_ARTIFACTS, DEFAULT_TRACKING_URI, ensure_experiment, git_commit, store_locations


class SkinflowMLFlowLogger(MLFlowLogger):
    """``MLFlowLogger`` with the kit's store defaults; creates ``./mlruns`` on first use (under a lock, so
    concurrent first runs are safe). A ``run_id`` continues that run: it is marked RUNNING again. A run stopped
    by a signal ends ``KILLED`` (``final_status``, set by ``skinflow.resume.Preemption``), not ``FAILED``."""

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
        if rank_zero_only.rank == 0 and run_id is None:
            ensure_experiment(tracking_uri, experiment_name, artifact_location)
        super().__init__(
            experiment_name=experiment_name, run_name=run_name, tracking_uri=tracking_uri, tags=tags,
            artifact_location=artifact_location, run_id=run_id, save_dir=None,
        )
        self.final_status: str | None = None
        self._resumed = run_id is not None
        # the pipeline sets it: a stage's child run is FINISHED when the pipeline says the stage is done, not when
        # its start-of-stage validate() or its fit() ends (failures and signals still end the run at once)
        self.hold_finished = False

    @property
    @rank_zero_experiment
    def experiment(self):
        client = super().experiment
        if self._resumed:
            self._resumed = False
            client.update_run(self.run_id, "RUNNING")
        return client

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        if status == "failed" and self.final_status:
            status = self.final_status
        if self.hold_finished and status in ("success", "finished", "FINISHED"):
            if self._initialized and self._checkpoint_callback:
                self._scan_and_log_checkpoints(self._checkpoint_callback)
            return
        super().finalize(status)


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
        from skinflow.resume import CONFIG_KEY_TAG, RUN_KEY_TAG, config_key, run_key

        client.set_tag(run_id, RUN_KEY_TAG, run_key(self.parser, self.config))
        client.set_tag(run_id, CONFIG_KEY_TAG, config_key(self.parser, self.config))
        report = getattr(trainer.datamodule, "report", None)
        if report:
            client.log_text(run_id, json.dumps(report, indent=2, default=str), "data_report.json")
