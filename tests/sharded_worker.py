"""Two-rank FSDP2 runs of the stages' own computations, without Lightning (tests/test_sharding.py).

``run(kind, rank, world, ...)`` builds one stage the same way on every process, shards it (``world > 1``), and
takes three AdamW steps in float64. On ``world`` ranks rank r trains on its batches ``2*s + r``; in one process
(``world == 1``) each step averages the losses of both batches, which is what FSDP2's averaged gradients give.

- ``warmup``: full training with the DVE on, the teacher-forced loss (hidden states and the chunked LM head inside
  one forward of the sharded root).
- ``grpo``: LoRA + DVE moved off zero, temperature 0.7: a rollout sampled with ``generate`` on the sharded model
  (ranks with other prompt lengths decode in lock-step), scored by the chunked log-probabilities, the KL
  reference held as each rank's shard, and the GRPO policy loss with fixed advantages.

Each process saves what it saw (losses, sampled tokens, reference and policy log-probabilities, whole weights
after each step) to ``<out>/<kind>-<world>-rank<r>.pt``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

STEPS = 3


def batches(synth_dir: str, cache: str, processor, prompt: str, n: int) -> list[dict]:
    from skinflow.data.datamodule import Fitzpatrick17kDataModule

    dm = Fitzpatrick17kDataModule(csv_path=f"{synth_dir}/labels.csv", cache_dir=cache, progress=False, batch_size=2,
                                  augment=False, prompt=prompt)
    dm.processor = processor
    dm.setup()
    loader = iter(dm.train_dataloader())
    out = [next(loader) for _ in range(n)]
    for batch in out:  # float64 throughout: the one-process and sharded sums then agree to ~1e-12
        batch["pixel_values"] = batch["pixel_values"].double()
    return out


def full(tensor: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return (tensor.full_tensor() if isinstance(tensor, DTensor) else tensor).detach().clone()


def whole_trainable(stage) -> dict[str, torch.Tensor]:
    return {n: full(p) for n, p in stage.named_parameters() if p.requires_grad}


def run(kind: str, rank: int, world: int, synth_dir: str, cache: str, out: str) -> None:
    from skinflow.models.backbone import BackboneSpec, LoRASpec
    from skinflow.models.dve import DVESpec
    from skinflow.models.sharding import ShardingSpec, shard_backbone

    torch.manual_seed(0)
    if kind == "warmup":
        from skinflow.stages.warmup import WarmupStage

        stage = WarmupStage(BackboneSpec(dve=DVESpec(enabled=True, num_groups=4)), max_new_tokens=6, content_weight=3.0)
    else:
        from skinflow.stages.grpo import GRPOStage

        stage = GRPOStage(BackboneSpec(lora=LoRASpec(r=2), dve=DVESpec(enabled=True, num_groups=4)), max_new_tokens=6,
                          group_size=2, temperature=0.7, beta=0.5, logprob_chunk_mib=0.001)
        with torch.no_grad():  # LoRA B and the DVE heads start at zero: move them so every path carries signal
            for p in stage.trainable_parameters():
                p.add_(0.1 * torch.randn_like(p))
    stage.double()
    if kind == "grpo":
        from skinflow.models.reference import snapshot_trainable

        # a third of the vocabulary stops a completion: lengths differ within and across ranks, so a rank whose
        # completions have all ended keeps stepping with the other (synced_gpus) instead of leaving it waiting
        stage.model.generation_config.eos_token_id = list(range(0, stage.processor.tokenizer.vocab_size, 3))
        stage._reference_weights = snapshot_trainable(stage)  # the starting policy, as the stage takes it
    data = batches(synth_dir, cache, stage.processor, "warmup" if kind == "warmup" else "diagnosis", 2 * STEPS)
    if world > 1:
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("data_parallel",))
        shard_backbone(stage.model, mesh, ShardingSpec())
        stage.after_sharding()
    optimizer = torch.optim.AdamW(stage.trainable_parameters(), lr=1e-3)
    mine = [0, 1] if world == 1 else [rank]  # one process: both ranks' batches
    record: dict = {"losses": [], "weights": [], "tokens": [], "policy": [], "reference": []}
    for step in range(STEPS):
        losses = [step_loss(kind, stage, data[2 * step + r], seed=100 * step + r, record=record) for r in mine]
        loss = torch.stack(losses).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        record["losses"].append([float(v.detach()) for v in losses])
        record["weights"].append(whole_trainable(stage))
    torch.save(record, Path(out) / f"{kind}-{world}-rank{rank}.pt")


def step_loss(kind: str, stage, batch: dict, seed: int, record: dict) -> torch.Tensor:
    if kind == "warmup":
        return stage.teacher_forced_loss(batch, stage.hparams.content_weight)
    from skinflow.rl.grpo import LOSS_WEIGHTS, policy_loss

    torch.manual_seed(seed)
    rollout = stage.rollout(batch)
    logp, _ = stage.completion_logprobs(stage.model, rollout)
    ref = stage.reference_logprobs(rollout)
    advantages = torch.linspace(-1, 1, logp.shape[0], dtype=logp.dtype)
    weights = LOSS_WEIGHTS["grpo"](rollout.completion_mask, stage.max_new_tokens)
    loss, _ = policy_loss(logp, logp.detach(), ref, advantages, weights, 0.2, 0.2, stage.hparams.beta)
    record["tokens"].append(rollout.completion_ids.tolist())
    record.setdefault("lengths", []).append(rollout.completion_mask.sum(1).tolist())
    record["policy"].append(logp.detach().clone())
    record["reference"].append(ref.clone())
    return loss


def worker(rank: int, world: int, init_file: str, kind: str, synth_dir: str, cache: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        run(kind, rank, world, synth_dir, cache, out)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":  # python tests/sharded_worker.py <kind> <world> <synth_dir> <cache> <out>
    kind, world, synth_dir, cache, out = sys.argv[1], int(sys.argv[2]), *sys.argv[3:6]
    if world == 1:
        torch.set_num_threads(1)
        run(kind, 0, 1, synth_dir, cache, out)
    else:
        import torch.multiprocessing as mp

        init_file = os.path.join(out, f"{kind}.init")  # the file rendezvous needs a file no earlier run used
        if os.path.exists(init_file):
            os.remove(init_file)
        mp.spawn(worker, args=(world, init_file, kind, synth_dir, cache, out), nprocs=world, join=True)
