"""Checkpoint files written atomically on their own file system.

Lightning's ``_atomic_save`` writes a local checkpoint through an fsspec transaction, whose temporary file lies in
the system's temporary folder: when that is another file system than the checkpoint folder (``/tmp`` on tmpfs, the
run on a network disk), the final move is a copy, and a kill or a full disk during it leaves a truncated
``last.ckpt``. ``AtomicCheckpointIO`` writes local paths to a temporary file *beside* the target, flushes it to
disk, then renames it over the target (``os.replace``: atomic on one file system), so a checkpoint file is always
either the old one or the new one, whole. Other URLs (s3://, gs://, ...) go through Lightning's own path.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.callbacks import ModelCheckpoint
from fsspec.implementations.local import LocalFileSystem


def atomic_write(data: bytes, path: str | Path) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, fsync'd, then renamed into place.

    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> atomic_write(b"new", folder / "last.ckpt"); (folder / "last.ckpt").read_bytes(), sorted(p.name for p in folder.iterdir())
    (b'new', ['last.ckpt'])
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except OSError as err:
        Path(temp).unlink(missing_ok=True)
        raise OSError(err.errno, err.strerror, str(path)) from err  # named by the checkpoint, not the temporary file
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves are ``atomic_write`` (see the module docstring)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            return super().save_checkpoint(checkpoint, path, storage_options)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write(buffer.getvalue(), path)


class LastCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that, with ``save_top_k: 0`` and ``save_last``, keeps exactly one file, ``last.ckpt``,
    written on the callback's schedule (every epoch, every N steps) and at a signal or error.

    Lightning's own callback, given ``save_top_k: 0``, writes nothing on its schedule (it writes ``last.ckpt`` only
    after a top-k file), and with ``save_top_k: 1`` keeps a second full copy, ``epoch=…-step=….ckpt``, beside
    ``last.ckpt``, plus one more at every stop (``save_on_exception``). Here the top-k file *is* ``last.ckpt``. Any
    other ``save_top_k`` is Lightning's behaviour unchanged."""

    def _only_last(self) -> bool:
        return self.save_top_k == 0 and bool(self.save_last)

    def _save_topk_checkpoint(self, trainer, monitor_candidates) -> None:
        if self._only_last():
            self._save_last_checkpoint(trainer, monitor_candidates)
            return
        super()._save_topk_checkpoint(trainer, monitor_candidates)

    def _save_last_checkpoint(self, trainer, monitor_candidates) -> None:
        if self._only_last() and self._last_checkpoint_saved and self._last_global_step_saved == trainer.global_step \
                and self.last_model_path:
            return  # already written at this step
        super()._save_last_checkpoint(trainer, monitor_candidates)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if not self._only_last():
            return super().on_exception(trainer, pl_module, exception)
        if self._should_save_on_exception(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
