"""The Lightning side of the front door: ``SkinflowCLI`` (LightningCLI in subclass mode: any stage as ``model``,
any DataModule as ``data``; MLflow is the default logger) and ``lightning_cli``, which ``fit``/``validate``/
``test``/``predict``, the pipeline and ``analysis.runs`` all build their trainer with.

Parser errors print one line naming the full key (``skinflow.errors.condense_parser_error``) instead of the usage
text; ``--debug`` (or ``JSONARGPARSE_DEBUG=true``) restores jsonargparse's own output and tracebacks.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from lightning.pytorch import LightningDataModule, LightningModule  # noqa: E402
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI  # noqa: E402

from skinflow.errors import condense_parser_error  # noqa: E402
from skinflow.progress import PlainProgress  # noqa: E402
from skinflow.resume import Preemption, DistributedFailure, SigtermWatch, default_run_name, mlflow_logger_args, resolve_resume, run_key  # noqa: E402
from skinflow.stages.base import read_stage_checkpoint  # noqa: E402
# imported so that jsonargparse knows the kit's classes by their short names: `fit --help` lists them and
# `--model.help GRPOStage` / `--model GRPOStage` resolve
import skinflow.data.datamodule  # noqa: E402,F401
import skinflow.stages.grpo  # noqa: E402,F401
import skinflow.stages.warmup  # noqa: E402,F401
from skinflow.tracking.checkpoint_io import AtomicCheckpointIO  # noqa: E402
from skinflow.tracking.mlflow import MLflowConfigCallback  # noqa: E402

class _DropAdvert(logging.Filter):
    """Lightning prints a litlogger advertisement at every trainer it builds: noise between a stage's lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropAdvert())
# Lightning's own pytree helper trips torch's LeafSpec deprecation once per stage; nothing a user can act on
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")

PROG = "python -m skinflow"
TRAINER_DEFAULTS = {
    "logger": {"class_path": "skinflow.tracking.mlflow.SkinflowMLFlowLogger"},
    "default_root_dir": "mlruns",
    # LightningCLI appends default callbacks to the configured ones; PlainProgress prints only when no terminal shows
    # the progress bar
    "callbacks": [Preemption(), DistributedFailure(), PlainProgress()],
}


class SkinflowArgumentParser(LightningArgumentParser):
    """A bad key or value: ``error: --model.init_args.loss: 'grpoo' is not one of grpo, dr_grpo, dapo`` and a hint
    where the options are listed, exit status 2 (jsonargparse prints the whole usage first, then nested union
    errors)."""

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error or os.environ.get("JSONARGPARSE_DEBUG", "").lower() == "true":  # jsonargparse's debug switch
            return super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        prog = parser.prog.replace(" [options]", "")
        sys.stderr.write(f"error: {condense_parser_error(message)}\n(`{prog} --help` lists the options)\n")
        sys.exit(2)


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
        check_accelerator(config)
        logger = mlflow_logger_args(config)
        if logger is None:
            return
        if not logger.get("run_name"):
            logger.run_name = default_run_name(config)
        if self.subcommand == "fit":
            resolve_resume(config, run_key(self._parser(self.subcommand), config),
                           config.trainer.default_root_dir or "mlruns", getattr(self, "recorded_run", None))

    def _instantiate_trainer(self, config: dict, callbacks: list):
        """Checkpoint files renamed into place on their own file system (``AtomicCheckpointIO``), unless the config
        names a checkpoint plugin of its own. Added here rather than as a parser default, so that the resolved
        config (and the run key hashed from it) stays free of instances."""
        from lightning.fabric.plugins import CheckpointIO

        plugins = config.get("plugins")
        plugins = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            config["plugins"] = [*plugins, AtomicCheckpointIO()]
        return super()._instantiate_trainer(config, callbacks)

    def _run_subcommand(self, subcommand: str) -> None:
        """The subcommand, then ``SigtermWatch.check``: a SIGTERM Lightning noted but did not raise (during an
        evaluation's last batch, ``--test_after_fit``'s test) still ends the command with 143 and a KILLED run."""
        with SigtermWatch() as watch:
            super()._run_subcommand(subcommand)
            watch.check(self.trainer, subcommand)

    def after_fit(self) -> None:
        if self.config[self.subcommand].get("test_after_fit"):
            ckpt = "best" if self.trainer.checkpoint_callback and self.trainer.checkpoint_callback.best_model_path else None
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt)


def check_accelerator(config) -> None:
    """A GPU trainer file on a machine without a GPU: one line before the model is built (Lightning says "No
    supported gpu backend found!" only after a 7B model has loaded)."""
    import torch

    from skinflow.errors import ConfigError

    accelerator = str(config.get("trainer.accelerator") or "auto")
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator={accelerator!r} but this machine has no usable GPU (torch sees no CUDA "
                          "device); use a CPU trainer file (configs/trainer/cpu.yaml, cpu_rl.yaml) or run where a GPU is")


def config_files(words: list[str]) -> list[str]:
    """The files ``--config``/``-c`` name in a command line.

    >>> config_files(["fit", "--config", "a.yaml", "-c=b.yaml", "--config=c.yaml", "--model.lr=1"])
    ['a.yaml', 'b.yaml', 'c.yaml']
    """
    found = []
    for i, word in enumerate(words):
        if word in ("--config", "-c") and i + 1 < len(words):
            found.append(words[i + 1])
        elif word.startswith(("--config=", "-c=")):
            found.append(word.split("=", 1)[1])
    return found


def check_config_files(words: list[str]) -> None:
    """Each ``--config`` file, and each file it composes (a top-level or ``trainer`` value ending in .yaml), exists and
    parses as YAML; otherwise one error naming the file and the line (jsonargparse names neither)."""
    import yaml

    from skinflow.errors import ConfigError

    for name in config_files(words):
        path = Path(name)
        if not path.is_file():
            raise ConfigError(f"config file {name} not found")
        try:
            content = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            raise ConfigError(f"{name}: not valid YAML{where} ({getattr(err, 'problem', None) or err})") from None
        if not isinstance(content, dict):
            continue
        trainer = content.get("trainer")
        values = [*content.items(), *((f"trainer.{k}", v) for k, v in (trainer.items() if isinstance(trainer, dict) else ()))]
        for key, value in values:
            if isinstance(value, str) and value.endswith((".yaml", ".yml")) and "://" not in value:
                if not (path.parent / value).is_file() and not Path(value).is_file():
                    raise ConfigError(f"{name}: {key}: {value} not found (looked beside {name} and in {Path.cwd()})")


def lightning_cli(args: list[str] | None = None, run: bool = True) -> SkinflowCLI:
    check_config_files(list(sys.argv[1:] if args is None else args))
    return SkinflowCLI(
        LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
        save_config_callback=MLflowConfigCallback, save_config_kwargs={"save_to_log_dir": False},
        trainer_defaults=TRAINER_DEFAULTS, args=args, run=run, auto_configure_optimizers=False,
        parser_class=SkinflowArgumentParser, parser_kwargs={"prog": PROG},
    )
