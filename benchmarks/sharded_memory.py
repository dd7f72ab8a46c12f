"""Per-rank memory of the same tiny full-training warmup under DDP and under FSDP2 (2 CPU processes, gloo).

    python benchmarks/sharded_memory.py [--steps 2] [--lora]

Runs ``python -m skinflow fit`` twice, side by side in one call: ``--trainer.strategy ddp`` and
``--trainer configs/trainer/cpu_fsdp.yaml``, both ``--trainer.devices 2``, with a callback that records on every
rank, after each optimizer step, the bytes this rank holds of the trainable weights, their gradients (taken just
before the step) and the AdamW state, and the process's peak resident memory. Prints one row per strategy and
rank, then the sharded/DDP ratio of the model state. On CPU the resident peak is dominated by the Python
process, torch and the frozen parts that are not trained here; the model-state bytes are the figure that scales
to a 7B model (docs/scaling.md has the arithmetic).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from lightning.pytorch import Callback

REPO = Path(__file__).resolve().parents[1]


def local_bytes(tensor) -> int:
    tensor = getattr(tensor, "_local_tensor", tensor)  # a DTensor: this rank's shard
    return tensor.numel() * tensor.element_size()


class StateBytes(Callback):
    """Appends ``{rank, step, weights, grads, optimizer, peak_rss_mib}`` to ``<folder>/rank<r>.jsonl``."""

    def __init__(self, folder: str):
        self.folder, self.grads = Path(folder), 0

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.grads = sum(local_bytes(p.grad) for p in pl_module.parameters() if p.grad is not None)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        optimizer = trainer.optimizers[0]
        state = sum(local_bytes(v) for s in optimizer.state.values() for v in s.values() if hasattr(v, "numel") and v.dim() > 0)
        row = {"rank": trainer.global_rank, "step": trainer.global_step, "grads": self.grads, "optimizer": state,
               "weights": sum(local_bytes(p) for p in pl_module.parameters() if p.requires_grad),
               "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / f"rank{trainer.global_rank}.jsonl", "a") as handle:
            handle.write(json.dumps(row) + "\n")


def run(strategy: list[str], folder: Path, steps: int, lora: bool) -> list[dict]:
    callback = json.dumps({"class_path": "benchmarks.sharded_memory.StateBytes", "init_args": {"folder": str(folder / "probe")}})
    args = [sys.executable, "-m", "skinflow", "fit", "--config", str(REPO / "configs/experiment/warmup_tiny_synthetic.yaml"),
            *strategy, "--trainer.devices=2", f"--trainer.max_steps={steps}", "--trainer.limit_val_batches=0",
            "--test_after_fit=false", "--trainer.enable_progress_bar=false", "--data.init_args.synthetic_per_class=4",
            "--data.init_args.progress=false", "--data.init_args.batch_size=8", f"--data.init_args.cache_dir={folder.parent / 'cache'}",
            f"--trainer.callbacks+={callback}", *(['--model.init_args.backbone.lora={"r": 8}'] if lora else [])]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    folder.mkdir(parents=True)
    done = subprocess.run(args, cwd=folder, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode:
        sys.exit(f"{' '.join(strategy)} failed:\n{done.stderr[-3000:]}")
    rows = []
    for rank in (0, 1):
        lines = (folder / "probe" / f"rank{rank}.jsonl").read_text().splitlines()
        rows.append(json.loads(lines[-1]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--lora", action="store_true", help="LoRA r=8 instead of full training")
    ns = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = {name: run(strategy, Path(tmp) / name, ns.steps, ns.lora) for name, strategy in
                   (("ddp", ["--trainer.strategy=ddp"]), ("fsdp2", ["--trainer", str(REPO / "configs/trainer/cpu_fsdp.yaml")]))}
    mib = 2**20
    print(f"tiny warmup, {'LoRA r=8' if ns.lora else 'full training'}, 2 CPU processes, after step {ns.steps}")
    print(f"{'strategy':8} {'rank':>4} {'weights MiB':>12} {'grads MiB':>10} {'AdamW MiB':>10} {'state MiB':>10} {'peak RSS MiB':>13}")
    totals = {}
    for name, rows in results.items():
        for row in rows:
            state = row["weights"] + row["grads"] + row["optimizer"]
            totals.setdefault(name, []).append(state)
            print(f"{name:8} {row['rank']:>4} {row['weights'] / mib:>12.2f} {row['grads'] / mib:>10.2f} "
                  f"{row['optimizer'] / mib:>10.2f} {state / mib:>10.2f} {row['peak_rss_mib']:>13.0f}")
    ratio = max(totals["fsdp2"]) / max(totals["ddp"])
    print(f"model state per rank, sharded / DDP: {ratio:.3f} (ideal 1/2 over 2 ranks)")


if __name__ == "__main__":
    main()
