"""One Stage II GRPO step of a Qwen2.5-VL-7B-shaped backbone with LoRA and the DVE, in bf16: memory and time split.

    python benchmarks/gpu_scale.py                 # one GPU, a few minutes: B=4 images, G=8, 128 new tokens
    python benchmarks/gpu_scale.py --pretrained-path /models/Qwen2.5-VL-7B-Instruct   # a real local checkout
    python benchmarks/gpu_scale.py --pretrained-path standin    # the stand-in checkout (real tokenizer, CPU size)
    python benchmarks/gpu_scale.py --tiny          # the tiny backbone on CPU (tests run this)
    python benchmarks/gpu_scale.py --engine compiled --logprob-chunk-mib 0    # one lever on, the other off
    python benchmarks/gpu_scale.py --grid          # 32 and 128 sequences x each lever on/off, one table (GPU, < 10 min)
    python benchmarks/gpu_scale.py --fsdp --full   # the step sharded by FSDP2 (one device: the sharded path's
                                                   # memory and time), every weight trained (no LoRA)

Levers: ``--engine hf|compiled`` (the rollout engine, ``skinflow.rl.engines``) and ``--logprob-chunk-mib`` (64: the
LM head in chunks, ``skinflow.rl.logprobs``; 0: full logits). ``benchmarks/grpo_step_scale.py`` runs the grid.

Without ``--pretrained-path``: random-init weights (nothing downloaded), the kit's tiny tokenizer (its ids are
aligned into the 7B config). With it: the folder's weights, tokenizer, chat template, image processor and
generation config (neutralised, as in training), exactly the researcher's path; ``standin`` builds the
stand-in Qwen2.5-VL-3B-Instruct checkout (``skinflow.models.standin``, needs the dev extra) into a temporary folder.
Random weights rarely emit end-of-sequence, so every completion runs the full 128 tokens: the worst case.
The step runs through a Lightning ``Trainer`` exactly as in training (``GRPOStage.training_step``: rollout,
rewards, reference log-probs with adapters off, policy forward, backward, optimizer). Prints the time of each
phase (``GRPOStage.timings``) of the measured step after ``--warmup`` unmeasured steps, generated tokens per second
for the step and per phase, and peak memory (GPU: allocated by torch; CPU: the process's peak RSS).
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import lightning as L  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from skinflow.data.collate import VisionLanguageCollator  # noqa: E402
from skinflow.data.formats import Target  # noqa: E402
from skinflow.data.ontology import ONTOLOGY  # noqa: E402
from skinflow.models.backbone import BackboneSpec, LoRASpec, count_parameters  # noqa: E402
from skinflow.models.dve import DVESpec  # noqa: E402
from skinflow.rl.engines import build_engine  # noqa: E402
from skinflow.rl.rewards import RewardSpec  # noqa: E402
from skinflow.stages.grpo import GRPOStage  # noqa: E402


class PhaseRecorder(L.Callback):
    def __init__(self):
        self.steps: list[dict[str, float]] = []
        self.start = 0.0

    def on_train_batch_start(self, trainer, module, *args):
        if module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if module.device.type == "cuda":
            torch.cuda.synchronize()
        record = dict(module.timings, total=time.perf_counter() - self.start,
                      tokens=float(trainer.callback_metrics["completions/mean_length"]) * module.hparams.group_size
                      * len(batch["targets"]))
        if module.device.type == "cuda":
            record["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        self.steps.append(record)


EASYR1 = ("EasyR1 / verl, Qwen2.5-VL-7B GRPO on 8 x H100: 1,600-2,000 tokens/s/GPU, counting prompt + response "
          "tokens (verl's perf/throughput)")


def measure(stage: GRPOStage, ns, images: int, device: str) -> dict:
    """One measured Stage II step (after ``ns.warmup`` unmeasured ones) on ``images`` random images."""
    rng = np.random.default_rng(0)
    labels = (ONTOLOGY.labels * (images // len(ONTOLOGY.labels) + 1))[:images]
    items = [{"image": rng.integers(0, 256, (ns.side, ns.side, 3), dtype=np.uint8),
              "target": Target(label, ONTOLOGY.nine(label), ONTOLOGY.three(label))} for label in labels]
    loader = DataLoader(items * (ns.warmup + 1), batch_size=images, collate_fn=VisionLanguageCollator(stage.processor, "diagnosis"))
    recorder = PhaseRecorder()
    strategy, precision = "auto", "bf16-true" if device == "gpu" else "32-true"
    if ns.fsdp:  # FSDP2 (skinflow.stages.fsdp): fp32 shards under 32-true, bf16 compute on a GPU by the policy
        from skinflow.stages.fsdp import ShardedDataParallel

        strategy = ShardedDataParallel(param_dtype="bfloat16" if device == "gpu" else None, reduce_dtype="float32")
        precision = "32-true"
    trainer = L.Trainer(accelerator=device, devices=1, precision=precision, strategy=strategy,
                        max_steps=ns.warmup + 1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[recorder])
    trainer.fit(stage, train_dataloaders=loader)
    prompt_tokens = float(next(iter(loader))["prompt_mask"].sum()) * stage.hparams.group_size
    return dict(recorder.steps[-1], prompt_tokens=prompt_tokens)


def print_step(step: dict) -> None:
    print(f"generated tokens {step['tokens']:.0f}")
    for phase in ("rollout", "reference", "policy_forward", "backward", "optimizer"):
        rate = step["tokens"] / step[phase] if step[phase] > 0 else float("inf")
        print(f"  {phase:15s} {step[phase]:9.4f} s  {rate:12.0f} tokens/s")
    if "peak_gib" in step:
        print(f"peak GPU memory {step['peak_gib']:.2f} GiB")
    else:
        print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    print(f"step tokens/s/GPU {step['tokens'] / step['total']:.0f}")
    print(f"step total {step['total']:.4f} s")


def grid(stage: GRPOStage, ns, device: str) -> None:
    """Every lever on and off at 32 and 128 sequences, on one built model; one table."""
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # one table, not a Trainer banner per cell
    G = stage.hparams.group_size
    levers = [("hf", 0.0), ("hf", 64.0), ("compiled", 0.0), ("compiled", 64.0)]
    print(f"{'seqs':>5s} {'engine':9s} {'chunk':>6s} {'rollout':>8s} {'ref':>7s} {'policy':>7s} {'backward':>8s} "
          f"{'step s':>7s} {'gen tok/s':>10s} {'all tok/s':>10s} {'peak':>9s}")
    for sequences in ns.grid_sequences:
        for engine, chunk in levers:
            stage.engine = build_engine(engine, {"bucket": ns.bucket} if engine == "compiled" else None)
            stage.hparams.logprob_chunk_mib = chunk
            try:
                step = measure(stage, ns, sequences // G, device)
            except torch.OutOfMemoryError:
                print(f"{sequences:5d} {engine:9s} {chunk:6g}  out of memory")
                torch.cuda.empty_cache()
                continue
            peak = f"{step['peak_gib']:.1f} GiB" if "peak_gib" in step else "-"
            print(f"{sequences:5d} {engine:9s} {chunk:6g} {step['rollout']:8.2f} {step['reference']:7.2f} "
                  f"{step['policy_forward']:7.2f} {step['backward']:8.2f} {step['total']:7.2f} "
                  f"{step['tokens'] / step['total']:10.0f} {(step['tokens'] + step['prompt_tokens']) / step['total']:10.0f} "
                  f"{peak:>9s}", flush=True)
    print(EASYR1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny backbone on CPU (smoke run)")
    parser.add_argument("--images", type=int, default=4, help="B")
    parser.add_argument("--group", type=int, default=8, help="G")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--side", type=int, default=448, help="image side in pixels (multiple of 28)")
    parser.add_argument("--micro-batch", type=int, default=8, help="sequences per forward/backward")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured steps first")
    parser.add_argument("--pretrained-path", help="a local Qwen2.5-VL-Instruct folder, or 'standin'")
    parser.add_argument("--engine", default="hf", help="rollout engine: hf | compiled")
    parser.add_argument("--bucket", type=int, default=64, help="compiled engine: prompts padded to a multiple of this")
    parser.add_argument("--logprob-chunk-mib", type=float, default=64.0, help="0: full logits in every scoring pass")
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--beta", type=float, default=0.04)
    parser.add_argument("--no-dve", action="store_true", help="leave the Dynamic Vision Encoder out")
    parser.add_argument("--fsdp", action="store_true", help="shard with FSDP2 (ShardedDataParallel) on the one device")
    parser.add_argument("--full", action="store_true", help="train every weight (no LoRA)")
    parser.add_argument("--grid", action="store_true", help="each lever on and off at --grid-sequences, one table")
    parser.add_argument("--grid-sequences", type=int, nargs="+", default=[32, 128], help="rollout sizes of --grid")
    ns = parser.parse_args()
    if ns.tiny:
        ns.images, ns.group, ns.new_tokens, ns.side, ns.micro_batch = 2, 4, 16, 112, 4
    path = ns.pretrained_path
    if path == "standin":
        import tempfile

        from skinflow.models.standin import build_standin

        path = str(build_standin(Path(tempfile.mkdtemp(prefix="qwen-standin-")) / "Qwen2.5-VL-3B-Instruct"))
    gpu = torch.cuda.is_available() and not ns.tiny
    if path:
        spec = BackboneSpec(preset="qwen2.5-vl-7b", pretrained_path=path, dtype="bfloat16" if gpu else "float32",
                            gradient_checkpointing=gpu, lora=LoRASpec(r=ns.lora_r, alpha=2 * ns.lora_r),
                            dve=DVESpec(enabled=not ns.no_dve, num_groups=64 if gpu else 8))
    elif ns.tiny:
        spec = BackboneSpec(lora=LoRASpec(r=ns.lora_r), dve=DVESpec(enabled=not ns.no_dve, num_groups=8))
    else:
        spec = BackboneSpec(preset="qwen2.5-vl-7b", random_init=True, dtype="bfloat16", gradient_checkpointing=True,
                            lora=LoRASpec(r=ns.lora_r, alpha=2 * ns.lora_r), dve=DVESpec(enabled=not ns.no_dve))
    if ns.full:
        spec.lora = None
        if ns.fsdp and gpu:
            spec.dtype = "float32"  # FSDP2 keeps fp32 master shards and computes in bf16 (its policy)
    device = "gpu" if gpu else "cpu"
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with torch.device("cuda" if device == "gpu" else "cpu"):  # random init where the step runs: seconds, not minutes
        stage = GRPOStage(spec, rewards=[RewardSpec("ranked_diagnosis"), RewardSpec("format", 0.1)], stage="stage2",
                          group_size=ns.group, max_new_tokens=ns.new_tokens, micro_batch_size=ns.micro_batch,
                          beta=ns.beta, lr=5e-7, drop_tied_groups=False, table_every=0, rollout_engine=ns.engine,
                          rollout_options={"bucket": ns.bucket} if ns.engine == "compiled" else None,
                          logprob_chunk_mib=ns.logprob_chunk_mib)
    print(f"built backbone in {time.perf_counter() - t0:.0f} s: {count_parameters(stage.model) / 1e9:.2f} B parameters, "
          f"{count_parameters(stage.model, True) / 1e6:.1f} M trainable ({'every weight' if ns.full else 'LoRA + DVE heads'})")
    print(f"backbone: {spec.pretrained_path or spec.preset}; tokenizer: {len(stage.processor.tokenizer)} tokens, "
          f"stops on {stage.stop_token_ids}")
    if ns.grid:
        grid(stage, ns, device)
        return
    step = measure(stage, ns, ns.images, device)
    print(f"device: {torch.cuda.get_device_name() if device == 'gpu' else 'cpu'}; B={ns.images} G={ns.group} "
          f"new_tokens={ns.new_tokens} side={ns.side} micro_batch={ns.micro_batch} engine={ns.engine} "
          f"logprob_chunk_mib={ns.logprob_chunk_mib:g} strategy={'fsdp2' if ns.fsdp else 'single'} "
          f"training={'full' if ns.full else 'lora'}")
    print_step(step)


if __name__ == "__main__":
    main()
