"""Entry point: ``python -m skinflow {fit,validate,test,predict} --config <yaml>`` plus kit commands.

The Lightning subcommands come from ``LightningCLI`` in subclass mode (any stage as ``model``, any DataModule as
``data``); MLflow is the default logger. Kit commands:

- ``download --csv CSV --out DIR``: Fitzpatrick17k's images from their URLs, verified (``skinflow.data.download``).
- ``audit-data --csv CSV --image-dir DIR``: duplicates, near-duplicate clusters, bad images (``skinflow.data.audit``).
- ``synth --out DIR --per-class N --seed S``: write synthetic lesions and their CSV.
- ``pipeline --config configs/pipeline/demo.yaml``: warmup -> Stage I -> Stage II -> test as MLflow child runs
  under one parent run (see ``skinflow.pipeline``).
- ``ablate --config configs/ablation/paper_table.yaml``: the paper's ablation rows x seeds, resumable
  (``skinflow.ablation``).
- ``compare --experiment NAME --group-by row``: mean ± std over seeds from the MLflow store, CSV and bar chart
  (``skinflow.analysis.compare``).
- ``report --run-id ID``: a self-contained HTML page for a pipeline run (``skinflow.analysis.report``).
- ``export --ckpt CKPT --out DIR [--merge]``: a stage checkpoint as a PEFT adapter, a merged model folder and the
  DVE weights, for use outside skinflow (``skinflow.export``).
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from lightning.pytorch import LightningDataModule, LightningModule  # noqa: E402
from lightning.pytorch.cli import LightningCLI  # noqa: E402

from skinflow.resume import SIGTERM_EXIT, DistributedFailure, Preemption, ResumeError, default_run_name, mlflow_logger_args, resolve_resume, run_key  # noqa: E402
from skinflow.stages.base import read_stage_checkpoint  # noqa: E402
from skinflow.tracking.mlflow import MLflowConfigCallback  # noqa: E402

TRAINER_DEFAULTS = {
    "logger": {"class_path": "skinflow.tracking.mlflow.SkinflowMLFlowLogger"},
    "default_root_dir": "mlruns",
    "callbacks": [Preemption(), DistributedFailure()],  # LightningCLI appends default callbacks to the configured ones
}


class SkinflowCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--test_after_fit", type=bool, default=False,
                            help="after fit, run the test split on the best checkpoint (fit only)")

    def _parse_ckpt_path(self) -> None:
        """A missing or damaged ``--ckpt_path`` file: one error naming it (Lightning reads it first, for its
        hyperparameters, and would fail inside torch)."""
        subcommand = self.config.get("subcommand")
        ckpt = self.config[subcommand].get("ckpt_path") if subcommand else None
        self.recorded_run = None  # the MLflow run a checkpoint file was written by (resolve_resume continues it)
        if ckpt not in (None, "last", "best", "hpc"):
            self.recorded_run = (read_stage_checkpoint(ckpt).get("skinflow_run") or {}).get("run_id")
        super()._parse_ckpt_path()

    def before_instantiate_classes(self) -> None:
        """Name the MLflow run (``<stage>-<config>-seed<N>``) and resolve ``--ckpt_path`` to the run it continues
        (``skinflow.resume``)."""
        config = self.config[self.subcommand] if self.subcommand else self.config  # run=False: no subcommand
        logger = mlflow_logger_args(config)
        if logger is None:
            return
        if not logger.get("run_name"):
            logger.run_name = default_run_name(config)
        if self.subcommand == "fit":
            resolve_resume(config, run_key(self._parser(self.subcommand), config),
                           config.trainer.default_root_dir or "mlruns", getattr(self, "recorded_run", None))

    def after_fit(self) -> None:
        if self.config[self.subcommand].get("test_after_fit"):
            ckpt = "best" if self.trainer.checkpoint_callback and self.trainer.checkpoint_callback.best_model_path else None
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt)


def lightning_cli(args: list[str] | None = None, run: bool = True) -> SkinflowCLI:
    return SkinflowCLI(
        LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
        save_config_callback=MLflowConfigCallback, save_config_kwargs={"save_to_log_dir": False},
        trainer_defaults=TRAINER_DEFAULTS, args=args, run=run, auto_configure_optimizers=False,
    )


def synth_command(argv: list[str]) -> None:
    from skinflow.data.synthetic import generate

    parser = argparse.ArgumentParser(prog="python -m skinflow synth", description="Write synthetic skin lesions and their CSV.")
    parser.add_argument("--out", required=True, help="output folder (images/ and labels.csv)")
    parser.add_argument("--per-class", type=int, default=48, help="images per class")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=160, help="image side in pixels")
    ns = parser.parse_args(argv)
    if ns.per_class < 1:
        parser.error(f"--per-class {ns.per_class}: at least 1 image per class")
    if ns.size < 28:
        parser.error(f"--size {ns.size}: images need at least 28 pixels a side (one merged patch)")
    print(generate(ns.out, ns.per_class, ns.seed, ns.size))


def pipeline_command(argv: list[str]) -> None:
    from skinflow.pipeline import pipeline_command as run

    run(argv)


def ablate_command(argv: list[str]) -> None:
    from skinflow.ablation import ablate_command as run

    run(argv)


def compare_command(argv: list[str]) -> None:
    from skinflow.analysis.compare import compare_command as run

    run(argv)


def export_command(argv: list[str]) -> None:
    from skinflow.export import export_command as run

    run(argv)


def report_command(argv: list[str]) -> None:
    from skinflow.analysis.report import report_command as run

    run(argv)


KIT_COMMANDS = {"synth": synth_command, "pipeline": pipeline_command, "ablate": ablate_command, "compare": compare_command,
                "report": report_command, "export": export_command}


def main(argv: list[str] | None = None) -> None:
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from skinflow.entry import DATA_COMMANDS

    words = sys.argv[1:] if argv is None else argv
    try:
        if words and words[0] in DATA_COMMANDS:
            DATA_COMMANDS[words[0]](words[1:])
        elif words and words[0] in KIT_COMMANDS:
            KIT_COMMANDS[words[0]](words[1:])
        else:
            lightning_cli(argv)  # None: LightningCLI reads sys.argv itself
    except SIGTERMException:  # Lightning raises it as SystemExit(None): status 0 would report success
        sys.exit(SIGTERM_EXIT)
    except ResumeError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
