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

from skinflow.tracking.store import (DEFAULT_ARTIFACTS, DEFAULT_TRACKING_URI, StoreError, ensure_experiment, git_commit,
                                     store_locations)


class SkinflowMLFlowLogger(MLFlowLogger):
    """``MLFlowLogger`` with the kit's store defaults; creates ``./mlruns`` on first use (under a lock, so
    concurrent first runs are safe). A tracking server (http/https URI) must answer within ``connect_timeout``
    seconds (default ``$SKINFLOW_TRACKING_TIMEOUT`` or 10), or the command stops with one line naming it. A ``run_id`` continues that run: it is marked RUNNING again. A run stopped
    by a signal ends ``KILLED`` (``final_status``, set by ``skinflow.resume.Preemption``), not ``FAILED``."""

    def __init__(
        self,
        experiment_name: str = "skinflow",
        run_name: str | None = None,
        tracking_uri: str = DEFAULT_TRACKING_URI,
        artifact_location: str = DEFAULT_ARTIFACTS,
        tags: dict | None = None,
        run_id: str | None = None,
        connect_timeout: float | None = None,
    ):
        if connect_timeout is not None and connect_timeout <= 0:
            raise StoreError(f"connect_timeout={connect_timeout} must be positive (seconds)")
        tracking_uri, artifact_location = store_locations(tracking_uri, artifact_location, connect_timeout)
        if rank_zero_only.rank == 0 and run_id is None:
            ensure_experiment(tracking_uri, experiment_name, artifact_location)
        super().__init__(
            experiment_name=experiment_name, run_name=run_name, tracking_uri=tracking_uri, tags=tags,
            artifact_location=artifact_location, run_id=run_id, save_dir=None,
        )
        self.final_status: str | None = None
        self._resumed = run_id is not None
        self._continues = run_id is not None
        self._logged_before: dict[str, int] | None = None  # key -> last step the run had when this process began
        self._reported_drop = False
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
    def log_metrics(self, metrics, step: int | None = None) -> None:
        """Log, except a value at a step the continued run already holds for that key.

        A process killed without warning (SIGKILL, out of memory) logged steps after its last checkpoint; the run
        resumed from that checkpoint computes those steps again. Their values from the first process are kept and
        the repeats are dropped, so every step appears once (on CPU a resumed run recomputes the same values; on a
        GPU they may differ in the last digits)."""
        if self._logged_before is None:
            self._logged_before = already_logged(self.experiment, self.run_id) if self._continues else {}
        if self._logged_before and step is not None:
            kept = {k: v for k, v in metrics.items() if step > self._logged_before.get(k, -1)}
            if len(kept) < len(metrics) and not self._reported_drop:
                self._reported_drop = True
                print(f"[resume] run {self.run_id} already holds steps up to {max(self._logged_before.values())} (logged "
                      "after its last checkpoint by the process that stopped): those steps are not logged again")
            metrics = kept
        if metrics:
            super().log_metrics(metrics, step)

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        if status == "failed" and self.final_status:
            status = self.final_status
        if self.hold_finished and status in ("success", "finished", "FINISHED"):
            if self._initialized and self._checkpoint_callback:
                self._scan_and_log_checkpoints(self._checkpoint_callback)
            return
        super().finalize(status)


def already_logged(client, run_id: str) -> dict[str, int]:
    """The last step of every metric a run holds: {key: step}."""
    keys = client.get_run(run_id).data.metrics
    return {key: max(m.step for m in client.get_metric_history(run_id, key)) for key in keys}


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
