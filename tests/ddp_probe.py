"""A callback for the two-process tests (tests/test_ddp.py): what each rank saw and held after every step."""

import hashlib
import json
import os
from pathlib import Path

from lightning.pytorch import Callback


class RankProbe(Callback):
    """Appends, per optimizer step, the batch's image ids and a digest of the trainable weights to
    ``<folder>/rank<r>.jsonl``; ``fail_rank``/``fail_step`` raise a data error there (a bad input on one rank)."""

    def __init__(self, folder: str, fail_rank: int = -1, fail_step: int = -1):
        self.folder, self.fail_rank, self.fail_step = Path(folder), fail_rank, fail_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        digest = hashlib.sha256()
        for name, p in sorted(pl_module.named_parameters()):
            if p.requires_grad:
                digest.update(name.encode())
                local = getattr(p, "_local_tensor", p)  # a DTensor (FSDP2): this rank's shard
                digest.update(local.detach().cpu().contiguous().numpy().tobytes())
        row = {"step": trainer.global_step, "ids": [t.md5hash for t in batch["targets"]], "weights": digest.hexdigest()}
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / f"rank{trainer.global_rank}.jsonl", "a") as handle:
            handle.write(json.dumps(row) + "\n")
        if trainer.global_rank == self.fail_rank and trainer.global_step == self.fail_step:
            from skinflow.data.formats import DataError

            raise DataError(f"rank {trainer.global_rank}: every image of a batch could not be read (probe, pid {os.getpid()})")


def read(folder: str | Path, rank: int) -> list[dict]:
    path = Path(folder) / f"rank{rank}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []




if os.environ.get("SKINFLOW_PROBE_REWARD") == "1":  # only in the processes a test starts with it (not in pytest's)
    import torch

    from skinflow.rl.rewards import register

    @register("distinct_characters")
    def distinct_characters(completions, targets) -> torch.Tensor:
        """Tells a random model's samples apart (no caption or answer to score yet)."""
        return torch.tensor([len(set(text)) / 12 for text in completions])
