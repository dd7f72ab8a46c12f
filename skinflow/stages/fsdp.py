"""``ShardedDataParallel``: FSDP2 over every process, as a Lightning strategy (``trainer.strategy`` in
``configs/trainer/gpu_bf16_fsdp.yaml`` and its CPU twin ``cpu_fsdp.yaml``).

It is Lightning's ``ModelParallelStrategy`` with the mesh fixed to pure data parallelism (one ``data_parallel``
dimension over all processes, no tensor parallelism), the mixed-precision policy of ``ShardingSpec`` as init
arguments, and three changes for skinflow's slim checkpoints:

- a distributed checkpoint holds only the trainable weights (LoRA adapters, DVE; every weight under full
  training), so resuming loads exactly those keys (Lightning's own loader asks the checkpoint for every weight of
  the model and fails on the frozen ones);
- it is written to ``<name>.partial`` and renamed over ``<name>`` once every rank has written its shard, so a hard
  kill during a save leaves the previous ``last.ckpt`` whole (the single-file ``AtomicCheckpointIO``'s promise);
- the stage shards itself in ``configure_model`` (``skinflow.models.sharding.shard_backbone``) with this
  strategy's ``sharding`` spec.

``read_stage_checkpoint`` reads such a folder without a process group (the whole trainable state on one process),
so ``init_from`` between stages and ``export`` take sharded checkpoints as they take single files.
"""

from __future__ import annotations

import shutil
import warnings
from datetime import timedelta
from pathlib import Path

import torch
from lightning.pytorch.strategies import ModelParallelStrategy

from skinflow.models.sharding import ShardingSpec

METADATA = "meta.pt"  # Lightning's name for the non-tensor part of a distributed checkpoint


def is_sharded_checkpoint(path: str | Path) -> bool:
    """A distributed checkpoint: a folder with Lightning's metadata file and DCP's ``.metadata``."""
    path = Path(path)
    return path.is_dir() and (path / METADATA).is_file() and (path / ".metadata").is_file()


def checkpoint_exists(path: str | Path) -> bool:
    """``path`` is a checkpoint: a file, or a distributed checkpoint folder."""
    path = Path(path)
    return path.is_file() or is_sharded_checkpoint(path)


def read_sharded_checkpoint(path: str | Path) -> dict:
    """A distributed checkpoint's metadata and its whole (gathered) trainable ``state_dict``, on this process
    alone (no process group needed): what ``init_from`` and ``export`` read."""
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys

    path = Path(path)
    checkpoint = torch.load(path / METADATA, map_location="cpu", weights_only=False)
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.filterwarnings("ignore", message="torch.distributed is unavailable or uninitialized")
        checkpoint["state_dict"] = _load_state_dict_from_keys({"state_dict"}, checkpoint_id=str(path))["state_dict"]
    return checkpoint


class ShardedDataParallel(ModelParallelStrategy):
    """FSDP2 over all processes (``fully_shard`` per decoder layer and vision block, then the root).

    Args:
        param_dtype: dtype the units compute in (``bfloat16`` on GPUs; the sharded parameters keep their own dtype,
            fp32 under ``precision: 32-true``); null: the parameters' own.
        reduce_dtype: dtype gradients are reduce-scattered in; null: the parameters' own.
        reshard_after_forward: free each unit's gathered parameters after its forward (``false``: ZeRO-2-like).
        save_distributed_checkpoint: each rank writes its shard (a folder); ``false``: rank 0 gathers one file.
        process_group_backend: ``gloo`` on CPU, ``nccl`` on GPUs (default: chosen from the device).
        timeout: collective timeout.
    """

    def __init__(self, param_dtype: str | None = None, reduce_dtype: str | None = None, reshard_after_forward: bool = True,
                 save_distributed_checkpoint: bool = True, process_group_backend: str | None = None,
                 timeout: timedelta | None = timedelta(minutes=30)):
        super().__init__(data_parallel_size="auto", tensor_parallel_size=1,
                         save_distributed_checkpoint=save_distributed_checkpoint,
                         process_group_backend=process_group_backend, timeout=timeout)
        self.sharding = ShardingSpec(param_dtype, reduce_dtype, reshard_after_forward)
        self.sharding.mixed_precision()  # a bad dtype is one line before any process starts

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes  # every process is a data-parallel shard
        super().setup_environment()

    def save_checkpoint(self, checkpoint: dict, filepath, storage_options=None) -> None:
        if not self._save_distributed_checkpoint:
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        path = Path(self.broadcast(str(filepath)))
        partial, old = path.with_name(path.name + ".partial"), path.with_name(path.name + ".old")
        if self.is_global_zero:
            shutil.rmtree(partial, ignore_errors=True)
        self.barrier("skinflow_ckpt_partial")
        super().save_checkpoint(checkpoint, partial, storage_options)
        self.barrier("skinflow_ckpt_written")
        if self.is_global_zero:
            if path.is_file():
                path.unlink()
            elif path.exists():
                path.rename(old)
            partial.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        self.barrier("skinflow_ckpt_renamed")

    def load_checkpoint(self, checkpoint_path, weights_only: bool | None = None) -> dict:
        path = Path(self.broadcast(str(checkpoint_path)))
        if not is_sharded_checkpoint(path):
            return super().load_checkpoint(path, weights_only)
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict, set_optimizer_state_dict

        from skinflow.stages.base import trainable_state_keys

        module = self.lightning_module
        trainable = trainable_state_keys(module)
        state = {k: v for k, v in get_model_state_dict(module).items() if k in trainable}
        dcp.load({"state_dict": state}, checkpoint_id=path)
        module.load_state_dict(state, strict=False)
        for index, optimizer in enumerate(self.optimizers):
            key = f"optimizer_{index}"
            optim_state = {key: get_optimizer_state_dict(module, optimizer)}
            dcp.load(optim_state, checkpoint_id=path)
            set_optimizer_state_dict(module, optimizer, optim_state_dict=optim_state[key],
                                     options=StateDictOptions(cpu_offload=True))
        return torch.load(path / METADATA, map_location="cpu", weights_only=False if weights_only is None else weights_only)
