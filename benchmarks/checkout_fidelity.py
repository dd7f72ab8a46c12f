"""Fidelity of the RL path on a Qwen2.5-VL-Instruct checkout: the figures behind the stand-in tests, side by side.

    python benchmarks/checkout_fidelity.py                       # the stand-in checkout (dev extra), ~3 min on 2 cores
    python benchmarks/checkout_fidelity.py --pretrained-path /models/Qwen2.5-VL-3B-Instruct

On the checkout with its own generation config (the public one: repetition penalty 1.05, top-k 1, ...), LoRA with
dropout 0.05 and the DVE, it prints:

1. sampler vs scorer max |d log p| over a rollout at temperatures 0.7 and 1.3 (left-padded prompts of three
   lengths): as the kit samples and scores, with the checkpoint's generation config merged into ``generate`` (the
   kit before the fix), and with LoRA dropout active in the scoring pass (likewise);
2. the k3 KL at Stage I's first step after a short LoRA + DVE warmup: to the reference the kit uses (the
   starting policy) and to the bare base (adapters off, DVE gains 1: the reference before the fix);
3. ``rl/clip_frac`` of Stage I steps with mu = 2 (the first pass's ratio is 1, so it never clips);
4. the export round trip (``python -m skinflow export --merge`` then ``load_exported``): max |d logit|;
5. the checkout's size.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import lightning as L  # noqa: E402
import torch  # noqa: E402

from skinflow.data.datamodule import Fitzpatrick17kDataModule  # noqa: E402
from skinflow.data.synthetic import generate as draw_lesions  # noqa: E402
from skinflow.models.backbone import BackboneSpec, LoRASpec  # noqa: E402
from skinflow.models.dve import DVESpec  # noqa: E402
from skinflow.models.fdlinear import FDLinear  # noqa: E402
from skinflow.models.standin import mixed_prompt_batch  # noqa: E402
from skinflow.rl.grpo import k3_kl, token_logprobs  # noqa: E402
from skinflow.rl.rewards import RewardSpec  # noqa: E402
from skinflow.stages.grpo import GRPOStage  # noqa: E402
from skinflow.stages.warmup import WarmupStage  # noqa: E402


def max_gap(stage: GRPOStage, batch: dict) -> float:
    sampler, scorer, mask = stage.sampler_and_scorer_logprobs(batch)
    return float((sampler[mask] - scorer[mask]).abs().max())


def sampler_scorer(spec: BackboneSpec) -> None:
    torch.manual_seed(0)
    stage = GRPOStage(spec, group_size=4, max_new_tokens=24)
    base = stage.model.get_base_model()
    with torch.no_grad():
        for p in stage.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))  # trained adapters and DVE heads
        base.model.language_model.norm.weight.mul_(10.0)  # a peaked next-token distribution, as a trained model's
    batch = mixed_prompt_batch(stage.processor)
    stage.train()
    dropouts = [m for m in stage.model.modules() if isinstance(m, torch.nn.Dropout)]
    print("1. sampler vs scorer, max |d log p| over a rollout (12 completions x 24 tokens)")
    for temperature in (0.7, 1.3):
        stage.hparams.temperature = temperature
        fixed = max_gap(stage, batch)
        neutral, base.generation_config = base.generation_config, base.checkpoint_generation_config
        merged = max_gap(stage, batch)
        base.generation_config = neutral
        for layer in dropouts:
            layer.p = spec.lora.dropout
        dropped = max_gap(stage, batch)
        for layer in dropouts:
            layer.p = 0.0
        print(f"   T={temperature}: as the kit samples and scores {fixed:.2e}; checkpoint generation config merged "
              f"{merged:.3f}; LoRA dropout {spec.lora.dropout} while scoring {dropped:.3f}")


def warmup_checkpoint(spec: BackboneSpec, data_dir: Path, out: Path) -> Path:
    L.seed_everything(0)
    stage = WarmupStage(spec, lr=2e-3, max_new_tokens=8)
    dm = Fitzpatrick17kDataModule(csv_path=str(data_dir / "labels.csv"), cache_dir=str(out / "cache"), progress=False,
                                  batch_size=4, image_size=112, prompt="mixed")
    trainer = L.Trainer(max_steps=12, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0)
    trainer.fit(stage, dm)
    path = out / "warmup.ckpt"
    trainer.save_checkpoint(path, weights_only=True)
    return path


def first_step_kl(spec: BackboneSpec, ckpt: Path, data_dir: Path, out: Path) -> None:
    stage = GRPOStage(spec, rewards=[RewardSpec("caption_fields")], group_size=4, max_new_tokens=24, init_from=str(ckpt))
    dm = Fitzpatrick17kDataModule(csv_path=str(data_dir / "labels.csv"), cache_dir=str(out / "cache"), progress=False,
                                  batch_size=4, image_size=112, prompt="caption", augment=False)
    dm.processor = stage.processor
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    torch.manual_seed(0)
    rollout = stage.rollout(batch)
    mask = rollout.completion_mask
    with torch.no_grad():
        policy = token_logprobs(stage.completion_logits(stage.model, rollout), rollout.completion_ids)
        reference = stage.reference_logprobs(rollout)
        heads = {n: p.detach().clone() for n, p in stage.named_parameters() if ".visual." in n and p.requires_grad}
        for name, p in stage.named_parameters():  # DVE gains at 1: zero heads, as the old reference held them
            if name in heads:
                p.zero_()
        with stage.model.disable_adapter():
            bare = token_logprobs(stage.completion_logits(stage.model, rollout), rollout.completion_ids)
        for name, p in stage.named_parameters():
            if name in heads:
                p.copy_(heads[name])
    kit, old = (float(k3_kl(policy, r)[mask].mean()) for r in (reference, bare))
    print(f"2. KL (k3, token mean) at Stage I's first step after the LoRA + DVE warmup: to the starting policy "
          f"{kit:.2e}; to the bare base (the reference before the fix) {old:.4f}")


def clip_fraction(spec: BackboneSpec, ckpt: Path, data_dir: Path, out: Path) -> None:
    from skinflow.rl.rewards import REWARDS, register

    # a reward the near-random policy's completions differ in (caption rewards tie at 0 and give no advantage)
    register("completion_length")(lambda completions, targets: torch.tensor([len(c) / 100 for c in completions]))
    L.seed_everything(0)
    stage = GRPOStage(spec, rewards=[RewardSpec("completion_length")], group_size=4, max_new_tokens=24,
                      num_iterations=2, lr=2e-3, init_from=str(ckpt), table_every=0)
    dm = Fitzpatrick17kDataModule(csv_path=str(data_dir / "labels.csv"), cache_dir=str(out / "cache"), progress=False,
                                  batch_size=4, image_size=112, prompt="caption")
    fractions = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, module, *args):
            m = trainer.callback_metrics
            fractions.append((float(m["rl/clip_frac"]), float(m["rl/frac_zero_std_groups"])))

    trainer = L.Trainer(max_steps=6, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, callbacks=[Record()], log_every_n_steps=1)
    trainer.fit(stage, dm)
    REWARDS.pop("completion_length")
    print("3. rl/clip_frac with mu = 2, eps 0.2, lr 2e-3, reward = completion length, per batch (tied-group share): "
          + ", ".join(f"{c:.3f} ({z:.2f})" for c, z in fractions))


def export_round_trip(spec: BackboneSpec, ckpt: Path, out: Path) -> None:
    from skinflow.export import export_stage, load_exported

    stage = WarmupStage(spec, init_from=str(ckpt)).eval()
    batch = mixed_prompt_batch(stage.processor)
    inputs = stage.model_inputs(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["image_grid_thw"])
    export_stage(ckpt, out / "export", merge=True)
    with torch.no_grad():
        gap = (load_exported(out / "export").eval()(**inputs).logits - stage.model(**inputs).logits).abs().max()
    print(f"4. export --merge + load_exported (LoRA merged, DVE re-attached): max |d logit| {float(gap):.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrained-path", help="a local Qwen2.5-VL-Instruct folder (default: build the stand-in)")
    ns = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="checkout-fidelity-"))
    path = ns.pretrained_path
    if path is None:
        from skinflow.models.standin import build_standin

        t0 = time.perf_counter()
        path = str(build_standin(out / "Qwen2.5-VL-3B-Instruct"))
        print(f"built the stand-in in {time.perf_counter() - t0:.0f} s")
    files = [p for p in Path(path).iterdir() if p.is_file()]
    print(f"checkout {path}: {len(files)} files, {sum(p.stat().st_size for p in files) / 2**20:.0f} MiB")
    spec = BackboneSpec(preset="qwen2.5-vl-3b", pretrained_path=path, lora=LoRASpec(r=8, alpha=16, dropout=0.05),
                        dve=DVESpec(enabled=True, num_groups=8))
    draw_lesions(out / "lesions", per_class=2, seed=0, size=112, progress=False)
    sampler_scorer(spec)
    ckpt = warmup_checkpoint(spec, out / "lesions", out)
    first_step_kl(spec, ckpt, out / "lesions", out)
    clip_fraction(spec, ckpt, out / "lesions", out)
    export_round_trip(spec, ckpt, out)
    model = WarmupStage(spec).model
    print(f"5. {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters with LoRA and the DVE; FDLinear "
          f"layers: {sum(isinstance(m, FDLinear) for m in model.modules())}")


if __name__ == "__main__":
    main()
