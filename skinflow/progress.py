"""Plain progress lines for output that is not a terminal (a log file on a cluster, CI).

Lightning's progress bar redraws one terminal line; sent to a file it appears only when a stage ends, so a log shows
nothing for minutes. :class:`PlainProgress` prints, when standard output is not a terminal (or the bar is off), one
line at the first optimizer step, then every ``$SKINFLOW_PROGRESS_SECONDS`` seconds (30 by default), and at the end:

    [warmup] step 12/180 (epoch 2/15)  1.84 steps/s  ETA 1m31s  train/loss 2.314
"""

from __future__ import annotations

import os
import sys
import time

from lightning.pytorch import Callback

PROGRESS_SECONDS_ENV = "SKINFLOW_PROGRESS_SECONDS"


def duration(seconds: float) -> str:
    """``95`` -> ``1m35s``; ``4000`` -> ``1h06m``.

    >>> duration(42), duration(95), duration(4000)
    ('42s', '1m35s', '1h06m')
    """
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class PlainProgress(Callback):
    """One progress line now and then when nobody sees the progress bar (see the module docstring)."""

    def __init__(self, every_seconds: float | None = None):
        self.every_seconds = every_seconds  # None: $SKINFLOW_PROGRESS_SECONDS (read as each fit starts), else 30
        self.every = 30.0
        self.active = False
        self.start = self.last = 0.0
        self.first_step = 0

    def on_train_start(self, trainer, pl_module) -> None:
        self.every = (float(os.environ.get(PROGRESS_SECONDS_ENV, "30")) if self.every_seconds is None
                      else self.every_seconds)
        self.active = trainer.is_global_zero and (not sys.stdout.isatty() or trainer.progress_bar_callback is None)
        self.start = self.last = time.monotonic()
        self.first_step = trainer.global_step  # a resumed run's rate counts from where it resumed

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        if not self.active:
            return
        now = time.monotonic()
        if trainer.global_step - self.first_step == 1 or now - self.last >= self.every:
            self.report(trainer, pl_module, now)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.active:
            self.report(trainer, pl_module, time.monotonic())

    def report(self, trainer, pl_module, now: float) -> None:
        self.last = now
        step, total = trainer.global_step, trainer.estimated_stepping_batches
        done = step - self.first_step
        rate = done / max(now - self.start, 1e-9)
        line = f"[{getattr(pl_module, 'stage_name', 'fit')}] step {step}"
        if total not in (None, float("inf")):
            line += f"/{int(total)}"
        if trainer.max_epochs not in (None, -1):
            line += f" (epoch {min(trainer.current_epoch + 1, trainer.max_epochs)}/{trainer.max_epochs})"  # at the end: the last
        line += f"  {rate:.2f} steps/s"
        if total not in (None, float("inf")) and rate > 0 and step < total:
            line += f"  ETA {duration((total - step) / rate)}"
        for key in ("train/loss", "reward"):
            value = trainer.progress_bar_metrics.get(key, trainer.callback_metrics.get(key))
            if value is not None:
                line += f"  {key} {float(value):.4g}"
        print(line, flush=True)
