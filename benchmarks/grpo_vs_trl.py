"""Seconds per GRPO optimisation step: skinflow's ``GRPOStage`` against TRL's ``GRPOTrainer``, side by side.

    pip install "trl==1.16.0" -c <(echo torch==2.13.0)     # a benchmark extra, not a runtime dependency
    python benchmarks/grpo_vs_trl.py [--rounds 3] [--steps 6]

Same tiny Qwen2.5-VL (random init, same seed), same synthetic images (140 px, no augmentation), same reward
(``ranked_diagnosis``), B = 2 prompts x G = 4 completions, 32 new tokens, temperature 1, beta 0.04, mu = 1,
lr 1e-5, fp32 on CPU. Each run is a fresh subprocess (so its peak RSS is its own); runs alternate
skinflow / TRL for ``--rounds`` rounds, and the first step of every run (warm-up) is left out. Step time is
from batch start to batch end inside each framework (rollout, rewards, log-probs, backward, optimizer step).
Prints each framework's median step time and peak memory, then the ratio skinflow / TRL last.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

B, G, NEW_TOKENS, SIDE, LR, BETA = 2, 4, 32, 140, 1e-5, 0.04


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def synthetic_data(folder: Path) -> Path:
    from skinflow.data.synthetic import generate

    if not (folder / "labels.csv").exists():
        generate(folder, per_class=2, seed=0, size=SIDE, progress=False)
    return folder


def run_skinflow(data: Path, steps: int) -> list[float]:
    import lightning as L

    from skinflow.data.datamodule import Fitzpatrick17kDataModule
    from skinflow.rl.rewards import RewardSpec
    from skinflow.stages.grpo import GRPOStage

    class StepTimer(L.Callback):
        def __init__(self):
            self.times, self.phases, self.start = [], [], 0.0

        def on_train_batch_start(self, *args):
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, module, *args):
            self.times.append(time.perf_counter() - self.start)
            self.phases.append(dict(module.timings))

    L.seed_everything(0, verbose=False)
    stage = GRPOStage(rewards=[RewardSpec("ranked_diagnosis")], group_size=G, max_new_tokens=NEW_TOKENS, lr=LR, beta=BETA,
                      temperature=1.0, drop_tied_groups=False, table_every=0)
    dm = Fitzpatrick17kDataModule(csv_path=str(data / "labels.csv"), cache_dir=str(data / "cache"), image_size=SIDE,
                                  augment=False, batch_size=B, prompt="diagnosis", progress=False)
    timer = StepTimer()
    trainer = L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0, callbacks=[timer])
    trainer.fit(stage, dm)
    phases = {k: statistics.median(p[k] for p in timer.phases[1:]) for k in timer.phases[-1]}
    print("skinflow phases (median s): " + ", ".join(f"{k} {v:.3f}" for k, v in phases.items()), file=sys.stderr)
    return timer.times


def run_trl(data: Path, steps: int) -> list[float]:
    import pandas as pd
    import torch
    from datasets import Dataset
    from PIL import Image
    from trl import GRPOConfig, GRPOTrainer

    from skinflow.data.formats import PROMPTS, SYSTEM_PROMPT, Target
    from skinflow.data.ontology import ONTOLOGY
    from skinflow.models.backbone import BackboneSpec, build_model, build_processor
    from skinflow.rl.rewards import ranked_diagnosis_reward

    from trl_peer import ImageOnlyProcessor, StepTimer  # this folder is on sys.path when run as a script

    def reward(prompts, completions, label, **kwargs):
        texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
        targets = [Target(x, ONTOLOGY.nine(x), ONTOLOGY.three(x)) for x in label]
        return ranked_diagnosis_reward(texts, targets).tolist()

    torch.manual_seed(0)
    spec = BackboneSpec()
    ours = build_processor(spec)
    processor = ImageOnlyProcessor(ours.image_processor, ours.tokenizer, chat_template=ours.tokenizer.chat_template)
    model = build_model(spec, ours.tokenizer)
    rows = pd.read_csv(data / "labels.csv", dtype=str)
    prompt = [{"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]},
              {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPTS["diagnosis"]}]}]
    dataset = Dataset.from_list([
        {"prompt": prompt, "image": Image.open(data / "images" / f"{r.md5hash}.jpg").convert("RGB").resize((SIDE, SIDE)), "label": r.label}
        for r in rows.itertuples()
    ])
    with tempfile.TemporaryDirectory() as out:
        # TRL builds its frozen reference (beta > 0, no PEFT) by loading the model's path again: give it one
        model.save_pretrained(Path(out) / "model")
        config = GRPOConfig(
            output_dir=out, per_device_train_batch_size=B * G, num_generations=G, max_completion_length=NEW_TOKENS,
            learning_rate=LR, beta=BETA, num_iterations=1, temperature=1.0, top_p=1.0, top_k=0, max_steps=steps,
            use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False, report_to=[], save_strategy="no",
            logging_steps=10_000, seed=0, dataloader_num_workers=0, remove_unused_columns=False, disable_tqdm=True,
            model_init_kwargs={"dtype": torch.float32},
        )
        timer = StepTimer()
        trainer = GRPOTrainer(model=str(Path(out) / "model"), reward_funcs=[reward], args=config, train_dataset=dataset,
                              processing_class=processor, callbacks=[timer])
        trainer.train()
    return timer.times


def worker(name: str, data: Path, steps: int) -> None:
    baseline = peak_rss_mib()
    times = (run_skinflow if name == "skinflow" else run_trl)(data, steps)
    print(json.dumps({"times": times, "peak_rss_mib": peak_rss_mib(), "rss_before_mib": baseline}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6, help="optimisation steps per run (the first is left out)")
    parser.add_argument("--data", default=".cache/skinflow/bench-grpo", help="where the synthetic images go")
    parser.add_argument("--worker", choices=["skinflow", "trl"], help=argparse.SUPPRESS)
    ns = parser.parse_args()
    data = Path(ns.data)
    if ns.worker:
        worker(ns.worker, data, ns.steps)
        return
    try:
        import trl  # noqa: F401
    except ImportError:
        sys.exit('TRL is not installed: pip install "trl==1.16.0" -c <(echo torch==2.13.0)')
    synthetic_data(data)
    results = {"skinflow": {"times": [], "peak": []}, "trl": {"times": [], "peak": []}}
    for r in range(ns.rounds):
        for name in ("skinflow", "trl"):
            out = subprocess.run([sys.executable, __file__, "--worker", name, "--steps", str(ns.steps), "--data", str(data)],
                                 capture_output=True, text=True)
            if out.returncode:
                sys.exit(f"{name} run failed:\n{out.stderr[-3000:]}")
            record = json.loads(out.stdout.strip().splitlines()[-1])
            phases = [line for line in out.stderr.splitlines() if line.startswith("skinflow phases")]
            if phases:
                print(f"round {r + 1} {phases[-1]}")
            results[name]["times"] += record["times"][1:]
            results[name]["peak"].append(record["peak_rss_mib"] - record["rss_before_mib"])
            print(f"round {r + 1} {name:8s}: steps {[round(t, 3) for t in record['times']]} s, "
                  f"peak RSS {record['peak_rss_mib']:.0f} MiB ({record['peak_rss_mib'] - record['rss_before_mib']:.0f} above start)")
    medians = {name: statistics.median(r["times"]) for name, r in results.items()}
    for name, r in results.items():
        print(f"{name:8s}: median {medians[name]:.3f} s/step over {len(r['times'])} steps; "
              f"peak RSS above start {max(r['peak']):.0f} MiB")
    print(f"B={B} G={G} new_tokens={NEW_TOKENS} fp32 CPU threads={os.cpu_count()}; target ratio <= 0.8")
    print(f"ratio skinflow/TRL (median s/step): {medians['skinflow'] / medians['trl']:.3f}")


if __name__ == "__main__":
    main()
