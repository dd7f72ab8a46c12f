"""Preemption and exact resume for ``python -m skinflow fit``.

**How a run is identified.** Every ``fit`` run is tagged ``skinflow.run_key``: a hash of its resolved config
without the arguments that say where to resume from (``ckpt_path``, the logger's ``run_id`` and ``run_name``, the
config file paths). The same command again has the same key. ``--ckpt_path last`` resumes the newest run of the
experiment with this key (or the run named by ``--trainer.logger.init_args.run_id``): it continues that MLflow
run (one run, unbroken curves) from ``last.ckpt`` in the run's checkpoint folder,
``<default_root_dir>/<experiment id>/<run id>/checkpoints/``. With no earlier run it starts a new one and says so
(so a scheduler can requeue the same command); if the newest such run already finished it stops with an error
instead of silently training again. ``--ckpt_path FILE`` continues the MLflow run recorded in the checkpoint when
that run is in this store.

**Preemption.** SIGTERM (what a scheduler sends) is caught by Lightning, which finishes the current step; the
checkpoint callback (``save_on_exception``) then writes ``last.ckpt`` atomically (Lightning writes through an
fsspec transaction: a temporary file moved into place), :class:`Preemption` marks the MLflow run ``KILLED`` with
the step it stopped at, and the process exits with 143 (128 + SIGTERM). Ctrl-C (SIGINT) does the same and exits
with Lightning's status 1. On SLURM, Lightning's ``SLURMEnvironment(auto_requeue=True)`` requeues the job on the
signal it is given; the requeued command should carry ``--ckpt_path last``.

**Exactness.** A checkpoint holds the model, optimiser, scheduler and loop state (Lightning), the random
generators (``SkinflowStage.on_save_checkpoint``) and the data position (``skinflow.data.order``): on CPU a
resumed run logs the same values, step for step, as one never interrupted.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import sys
import threading
import traceback
from pathlib import Path

from lightning.pytorch import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException

from skinflow.errors import UserError

log = logging.getLogger(__name__)

RUN_KEY_TAG = "skinflow.run_key"
SIGTERM_EXIT = 143
# what says where to resume from, or how the config was spelled: not part of a run's identity
NOT_IDENTITY = ("ckpt_path", "config", "trainer.logger.init_args.run_id", "trainer.logger.init_args.run_name")
MLFLOW_LOGGERS = ("skinflow.tracking.mlflow.SkinflowMLFlowLogger", "lightning.pytorch.loggers.MLFlowLogger",
                  "lightning.pytorch.loggers.mlflow.MLFlowLogger")


class ResumeError(UserError):
    """A resume request that cannot be honoured (the message says what to do instead)."""


CONFIG_KEY_TAG = "skinflow.config_key"
# the seeds the ablation grid varies (``skinflow.ablation.seed_args``): runs that differ only in these share a
# config key, which ``compare`` may pool (mean ± std over seeds)
SEED_KEYS = ("seed_everything", "model.init_args.backbone.seed", "data.init_args.seed")


def run_key(parser, config, without: tuple[str, ...] = ()) -> str:
    """The identity of a run: a hash of its resolved config without the keys in ``NOT_IDENTITY`` (and ``without``)."""
    config = config.clone()
    for key in (*NOT_IDENTITY, *without):
        if key in config:
            del config[key]
    return hashlib.sha256(parser.dump(config, skip_none=False, skip_validation=True).encode()).hexdigest()[:16]


def config_key(parser, config) -> str:
    """A run's config without its seeds: the same for the seeds of one ablation cell, different across configs."""
    return run_key(parser, config, SEED_KEYS)


def pipeline_config_key(source_text: str, skip, extra_args: dict, all_args: list[str]) -> str:
    """A pipeline parent run's config key: its file, skipped stages and arguments, seed arguments left out."""
    import json

    unseeded = [a for a in all_args if not a.lstrip("-").split("=", 1)[0] in SEED_KEYS]
    blob = json.dumps({"pipeline": source_text, "skip": sorted(skip), "stage_args": extra_args, "args": unseeded}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def mlflow_logger_args(config):
    """The ``init_args`` of the config's MLflow logger, or ``None`` when the run logs elsewhere (or not at all)."""
    logger = config.get("trainer.logger") if "trainer.logger" in config else None
    if logger is None or isinstance(logger, (bool, list)) or not hasattr(logger, "class_path"):
        return None
    return logger.init_args if logger.class_path in MLFLOW_LOGGERS else None


def stage_label(config) -> str:
    """``stage1`` for a GRPO stage named so, ``warmup`` for ``WarmupStage``: what a run name starts with."""
    model = config.get("model")
    if model is None or not hasattr(model, "class_path"):
        return "run"
    stage = model.init_args.get("stage") if model.init_args is not None else None
    return stage or model.class_path.rsplit(".", 1)[-1].removesuffix("Stage").lower() or "run"


def default_run_name(config) -> str:
    """``<stage>-<config file stem>-seed<N>``, e.g. ``warmup-warmup_tiny_synthetic-seed0``."""
    parts = [stage_label(config)]
    files = config.get("config") or []
    if files:
        parts.append(Path(str(files[-1])).stem)
    seed = config.get("seed_everything")
    if isinstance(seed, int) and not isinstance(seed, bool):
        parts.append(f"seed{seed}")
    return "-".join(parts)


def checkpoint_folder(default_root_dir: str | Path, experiment_id: str, run_id: str) -> Path:
    """Where Lightning's ``ModelCheckpoint`` writes for an MLflow run (sqlite store: no logger ``save_dir``)."""
    return Path(default_root_dir) / experiment_id / run_id / "checkpoints"


def resolve_resume(config, key: str, default_root_dir: str, recorded_run: str | None = None) -> None:
    """Turn ``--ckpt_path last`` into the file and MLflow run to continue, and make ``--ckpt_path FILE`` continue
    the run it came from (``recorded_run``, read from the file); edits ``config`` in place (see the module's
    docstring)."""
    from skinflow.tracking.store import existing_client

    ckpt = config.get("ckpt_path")
    logger = mlflow_logger_args(config)
    if ckpt is None or logger is None:
        return
    client = existing_client(logger.tracking_uri)
    if ckpt != "last":
        if logger.get("run_id") or client is None:
            return
        if recorded_run and _run_or_none(client, recorded_run) is not None:
            logger.run_id = recorded_run
            print(f"[resume] {ckpt}: continuing MLflow run {recorded_run}")
        return
    run = None
    if logger.get("run_id"):
        run = _run_or_none(client, logger.run_id) if client is not None else None
        if run is None:
            raise ResumeError(f"--ckpt_path last: no MLflow run {logger.run_id!r} in {logger.tracking_uri}")
    elif client is not None:
        experiment = client.get_experiment_by_name(logger.experiment_name)
        if experiment is not None:
            runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{key}'",
                                      order_by=["attributes.start_time DESC"], max_results=1)
            run = runs[0] if runs else None
    if run is None:
        print(f"[resume] --ckpt_path last: no earlier run of this config (run key {key}) in experiment "
              f"{logger.experiment_name!r} of {logger.tracking_uri}; starting a new run")
        config.ckpt_path = None
        return
    if run.info.status == "FINISHED" and not logger.get("run_id"):
        raise ResumeError(
            f"--ckpt_path last: the newest run of this config, {run.info.run_id} ({run.info.run_name}), already "
            "finished; pass --ckpt_path <file> to continue from one of its checkpoints, or leave --ckpt_path out "
            "to start a new run")
    logger.run_id = run.info.run_id
    from skinflow.stages.fsdp import checkpoint_exists

    last = checkpoint_folder(default_root_dir, run.info.experiment_id, run.info.run_id) / "last.ckpt"
    if checkpoint_exists(last):  # a file, or a sharded (FSDP2) folder
        config.ckpt_path = str(last)
        print(f"[resume] continuing MLflow run {run.info.run_id} ({run.info.run_name}) from {last}")
    else:  # a checkpoint callback with its own dirpath: Lightning searches it for last*.ckpt
        print(f"[resume] continuing MLflow run {run.info.run_id} ({run.info.run_name}); {last} not found, so "
              "Lightning looks in the checkpoint callback's folder")


def _run_or_none(client, run_id: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException:
        return None


class Preemption(Callback):
    """On SIGTERM or Ctrl-C: tag the MLflow run with where it stopped and mark it ``KILLED`` (not ``FAILED``).
    The checkpoint callback's ``save_on_exception`` writes ``last.ckpt`` right after (Lightning runs checkpoint
    callbacks last)."""

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if not isinstance(exception, (SIGTERMException, KeyboardInterrupt)):
            return
        what = "SIGTERM" if isinstance(exception, SIGTERMException) else "SIGINT"
        logger = trainer.logger
        if logger is not None and hasattr(logger, "run_id") and hasattr(logger, "final_status"):
            logger.final_status = "KILLED"
            if trainer.is_global_zero:
                logger.experiment.set_tag(logger.run_id, "skinflow.interrupted", f"{what} at step {trainer.global_step}")
        if trainer.is_global_zero:
            again = "--resume last" if getattr(logger, "hold_finished", False) else "--ckpt_path last"  # a pipeline's
            print(f"\n[skinflow] {what} at step {trainer.global_step}: writing last.ckpt; resume with the same "
                  f"command plus {again}")


class SigtermWatch:
    """Ends the process on a SIGTERM at any phase, not only between training steps.

    Lightning catches SIGTERM only while a trainer runs, and raises it only between training steps and between
    evaluation batches other than the last: a signal during a test's last batch, while the next stage's model is
    built, or between stages would be noted and then swallowed (or, outside a trainer, kill the process before
    the run is marked). Inside this context a SIGTERM is noted (Lightning composes this handler with its own while
    a trainer runs, so both see it); ``check`` after each trainer call and between stages then marks the run
    ``KILLED`` with ``skinflow.interrupted`` and raises ``SIGTERMException`` (exit status 143 from the CLI)."""

    def __init__(self):
        self.received = False
        self._previous = None

    def __enter__(self) -> "SigtermWatch":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._note)
        return self

    def _note(self, signum, frame) -> None:
        self.received = True

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def check(self, trainer, phase: str) -> None:
        """Raise ``SIGTERMException`` if a SIGTERM came (here or to ``trainer``), marking ``trainer``'s MLflow run."""
        if not (self.received or (trainer is not None and trainer.received_sigterm)):
            return
        logger = getattr(trainer, "logger", None)
        step = trainer.global_step if trainer is not None else 0
        if logger is not None and hasattr(logger, "run_id") and trainer.is_global_zero and logger.run_id:
            logger.experiment.set_tag(logger.run_id, "skinflow.interrupted", f"SIGTERM during {phase} at step {step}")
            logger.experiment.set_terminated(logger.run_id, "KILLED")
        print(f"\n[skinflow] SIGTERM during {phase}: stopping (the run is marked KILLED)", file=sys.stderr)
        raise SIGTERMException


class DistributedFailure(Callback):
    """An error on one process of a multi-process run stops them all, with the error printed, instead of the
    others waiting forever in their next collective (and the failing one in the collective of a checkpoint save).

    Signals are left to Lightning, which stops all ranks at the same step and saves together. For any other
    error: no checkpoint on exception (its save is a collective), the traceback is printed at once, and rank 0
    kills the ranks it launched while another rank exits, which rank 0's process observer sees and ends the run."""

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if trainer.world_size < 2 or isinstance(exception, (SIGTERMException, KeyboardInterrupt)):
            return
        for callback in trainer.checkpoint_callbacks:
            callback.save_on_exception = False
        traceback.print_exception(exception)
        sys.stderr.flush()
        if trainer.global_rank == 0:
            for proc in getattr(trainer.strategy.launcher, "procs", []):
                proc.kill()
        else:
            os._exit(1)
