"""Does Stage I have room to learn, and does GRPO find it? From the same starting checkpoints: Stage I GRPO for
N steps against supervised steps on the same caption targets, both measured on the validation images.

    python benchmarks/learning_over_seeds.py           # once: writes each seed's warmup.ckpt under mlruns/checkpoints/
    python benchmarks/stage1_headroom.py --checkpoints A/warmup.ckpt B/warmup.ckpt C/warmup.ckpt [--seeds 0 1 2]
        [--rl-steps 100] [--rl-batch-size 8] [--rl-set lr=2e-5 --rl-set credit=field ...] [--sft-steps 120] [--sft-lr 1e-4]

Seed k goes with the k-th checkpoint (it seeds the backbone, the data order and the sampling, as in
``configs/ablation/demo_seeds.yaml``). The stage is ``configs/model/stage1_tiny.yaml`` with ``--rl-set`` overrides,
the data ``configs/data/synthetic_caption.yaml``; the supervised arm is a ``WarmupStage`` on the caption prompt
(batch 16, ``--sft-lr`` cosine-decayed over the steps, content weight 10 as in the warmup). Measured on the
validation images, before and after each arm:

- greedy: the mean ``caption_fields`` reward of the greedy captions (what the demo logs as
  ``val/reward/caption_fields``);
- sampled: the mean reward of ``--samples`` captions per image at the stage's temperature (what GRPO maximises),
  drawn with a fixed torch seed.

Last: per arm, the mean ± std of each gain over the seeds and in how many it rose. ``--checkpoint none`` starts
from the random tiny model (a smoke test; the figures mean nothing).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def init_args(relative: str) -> dict:
    return dict(yaml.safe_load((REPO / relative).read_text())["init_args"])


def datamodule(seed: int, opts, batch_size: int, processor):
    from skinflow.data.datamodule import Fitzpatrick17kDataModule

    args = init_args("configs/data/synthetic_caption.yaml")
    if opts.per_class is not None:
        args["synthetic_per_class"] = opts.per_class
    if opts.cache_dir is not None:
        args["cache_dir"] = opts.cache_dir
    dm = Fitzpatrick17kDataModule(**{**args, "batch_size": batch_size, "seed": seed, "progress": False})
    dm.processor = processor
    dm.prepare_data()  # draws the synthetic images on first use
    dm.setup("fit")
    return dm


def measure(stage, batches: list, samples: int, temperature: float) -> tuple[float, float]:
    """(greedy, sampled) mean ``caption_fields`` reward over ``batches``."""
    import torch

    from skinflow.rl.rewards import caption_fields_reward

    stage.eval()
    greedy, sampled = [], []
    torch.manual_seed(777)
    with torch.no_grad():
        for batch in batches:
            greedy += caption_fields_reward(stage.generate_text(batch), batch["targets"]).tolist()
            inputs = stage.model_inputs(batch["prompt_ids"], batch["prompt_mask"], batch["pixel_values"], batch["image_grid_thw"])
            out = stage.model.generate(**inputs, do_sample=True, temperature=temperature, top_k=0,
                                       num_return_sequences=samples, **stage.generation_kwargs())
            texts = stage.processor.decode(out[:, batch["prompt_ids"].shape[1]:])
            sampled += caption_fields_reward(texts, [t for t in batch["targets"] for _ in range(samples)]).tolist()
    return sum(greedy) / len(greedy), sum(sampled) / len(sampled)


def fit(stage, dm, steps: int) -> None:
    import lightning as L

    trainer = L.Trainer(max_steps=steps, max_epochs=-1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        limit_val_batches=0, num_sanity_val_steps=0, enable_model_summary=False, accelerator="cpu")
    stage.train()  # ``measure`` left it in eval mode
    trainer.fit(stage, dm)


def run_arm(arm: str, checkpoint: str | None, seed: int, opts) -> tuple[tuple[float, float], tuple[float, float]]:
    import lightning as L

    from skinflow.models.backbone import BackboneSpec
    from skinflow.rl.rewards import RewardSpec
    from skinflow.stages.grpo import GRPOStage
    from skinflow.stages.warmup import WarmupStage

    L.seed_everything(seed, verbose=False)
    rl = init_args("configs/model/stage1_tiny.yaml")
    backbone = BackboneSpec(**{**rl["backbone"], "seed": seed})
    rl.update(opts.rl_set)
    rl.update(backbone=backbone, rewards=[RewardSpec(**r) for r in rl["rewards"]], init_from=checkpoint, table_every=0)
    if arm == "grpo":
        stage, steps = GRPOStage(**rl), opts.rl_steps
        batch_size = opts.rl_batch_size or init_args("configs/data/synthetic_caption.yaml")["batch_size"]
    else:
        stage = WarmupStage(backbone, lr=opts.sft_lr, warmup_steps=0, content_weight=10.0,
                            max_new_tokens=rl["max_new_tokens"], init_from=checkpoint)
        steps, batch_size = opts.sft_steps, 16
    dm = datamodule(seed, opts, batch_size, stage.processor)
    val = list(dm.val_dataloader())
    before = measure(stage, val, opts.samples, rl["temperature"])
    fit(stage, dm, steps)
    return before, measure(stage, val, opts.samples, rl["temperature"])


def parse_set(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--rl-set {text!r}: expected key=value (a GRPOStage argument)")
    return key, yaml.safe_load(value)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoints", nargs="+", required=True, help="starting checkpoints, one per seed ('none': random)")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="one per checkpoint (default 0, 1, ...)")
    parser.add_argument("--rl-steps", type=int, default=100)
    parser.add_argument("--rl-set", type=parse_set, action="append", default=[], metavar="KEY=VALUE",
                        help="override a configs/model/stage1_tiny.yaml argument, e.g. lr=2e-5 or credit=field")
    parser.add_argument("--rl-batch-size", type=int, default=None, help="B, images per GRPO step (default: the config's)")
    parser.add_argument("--sft-steps", type=int, default=120)
    parser.add_argument("--sft-lr", type=float, default=1e-4)
    parser.add_argument("--samples", type=int, default=4, help="sampled captions per validation image")
    parser.add_argument("--per-class", type=int, default=None, help="synthetic images per class (default: the config's)")
    parser.add_argument("--cache-dir", default=None, help="where the synthetic images go (default: the config's)")
    opts = parser.parse_args(argv)
    opts.rl_set = dict(opts.rl_set)
    seeds = opts.seeds if opts.seeds is not None else list(range(len(opts.checkpoints)))
    if len(seeds) != len(opts.checkpoints):
        parser.error(f"{len(seeds)} seeds for {len(opts.checkpoints)} checkpoints")
    for path in opts.checkpoints:
        if path != "none" and not Path(path).is_file():
            parser.error(f"checkpoint {path} not found (benchmarks/learning_over_seeds.py writes one per seed)")
    batch = f"B={opts.rl_batch_size} " if opts.rl_batch_size else ""
    arms = {"grpo": f"GRPO {opts.rl_steps} steps {batch}{opts.rl_set or ''}".strip(),
            "supervised": f"supervised {opts.sft_steps} steps lr {opts.sft_lr:g}"}
    gains: dict[tuple[str, str], list[float]] = {}
    print(f"{'seed':>4}  {'arm':<11} {'greedy start -> end (gain)':<29} sampled start -> end (gain)")
    for seed, path in zip(seeds, opts.checkpoints):
        for arm in arms:
            (g0, s0), (g1, s1) = run_arm(arm, None if path == "none" else path, seed, opts)
            gains.setdefault((arm, "greedy"), []).append(g1 - g0)
            gains.setdefault((arm, "sampled"), []).append(s1 - s0)
            print(f"{seed:>4}  {arm:<11} {g0:.4f} -> {g1:.4f} ({g1 - g0:+.4f})    {s0:.4f} -> {s1:.4f} ({s1 - s0:+.4f})", flush=True)
    for (arm, measure_name), values in gains.items():
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"{arms[arm]}: {measure_name} gain {statistics.mean(values):+.4f} ± {spread:.4f} over {len(values)} seeds, "
              f"rose in {sum(v > 0 for v in values)}/{len(values)}")


if __name__ == "__main__":
    main()
