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
