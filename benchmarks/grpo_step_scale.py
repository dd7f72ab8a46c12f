"""One Stage II GRPO step on the stand-in Qwen2.5-VL-3B-Instruct checkout (V = 151,936): peak memory and time of
full-logits scoring against chunked scoring, at micro-batch 1 and 8, beside TRL 1.16's GRPOTrainer on the same
checkout and batch. Side by side in one run; each cell a fresh subprocess, so each peak RSS is its own.

    python benchmarks/grpo_step_scale.py                  # 4 skinflow cells + 2 TRL cells (if TRL is installed)
    python benchmarks/grpo_step_scale.py --no-trl --new-tokens 16      # quick

Every cell: LoRA r 8 on the language linears (no DVE, which TRL lacks), beta 0.04, 2 random 140-px images x G 4,
``--new-tokens`` (128) new tokens at temperature 1 (random weights rarely draw EOS: every completion runs to the
limit, the worst case), fp32 on CPU, one optimizer step. skinflow runs ``benchmarks/gpu_scale.py`` (the stage's own
``training_step`` through a Lightning Trainer); TRL runs ``GRPOTrainer`` with ``per_device_train_batch_size`` =
micro-batch and ``generation_batch_size`` 8 (one rollout of 8 per optimizer step, as ours). The figure the issue
sets: peak RSS at micro-batch 8 minus at 1 (growth), target <= ~260 MiB for the chunked path.
pip install "trl==1.16.0" -c <(echo torch==2.13.0) for the TRL cells (a benchmark extra, not a dependency).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

HERE = Path(__file__).resolve().parent
B, G, SIDE, LORA_R, BETA = 2, 4, 140, 8, 0.04


def skinflow_cell(checkout: str, micro: int, chunk_mib: float, new_tokens: int) -> dict:
    out = subprocess.run([sys.executable, str(HERE / "gpu_scale.py"), "--pretrained-path", checkout, "--images", str(B),
                          "--group", str(G), "--new-tokens", str(new_tokens), "--side", str(SIDE), "--micro-batch", str(micro),
                          "--warmup", "0", "--lora-r", str(LORA_R), "--beta", str(BETA), "--no-dve",
                          "--logprob-chunk-mib", str(chunk_mib)], capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"skinflow cell failed:\n{out.stderr[-3000:]}")
    text = out.stdout
    return {"peak_mib": float(re.search(r"peak RSS (\d+) MiB", text)[1]),
            "step_s": float(re.search(r"step total ([\d.]+) s", text)[1]),
            "scoring_s": sum(float(re.search(rf"  {p}\s+([\d.]+) s", text)[1]) for p in ("reference", "policy_forward", "backward"))}


def trl_worker(checkout: str, micro: int, new_tokens: int) -> None:
    import numpy as np
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from PIL import Image
    from trl import GRPOConfig, GRPOTrainer

    from skinflow.data.formats import PROMPTS, SYSTEM_PROMPT
    from skinflow.data.ontology import ONTOLOGY
    from skinflow.models.backbone import LANGUAGE_LINEARS, BackboneSpec, build_processor

    from trl_peer import ImageOnlyProcessor, StepTimer  # this folder is on sys.path when run as a script

    torch.manual_seed(0)
    ours = build_processor(BackboneSpec(preset="qwen2.5-vl-3b", pretrained_path=checkout))
    processor = ImageOnlyProcessor(ours.image_processor, ours.tokenizer, chat_template=ours.tokenizer.chat_template)
    rng = np.random.default_rng(0)
    prompt = [{"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]},
              {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPTS["diagnosis"]}]}]
    dataset = Dataset.from_list([{"prompt": prompt, "image": Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)),
                                  "label": label} for label in ONTOLOGY.labels[:B]])
    with tempfile.TemporaryDirectory() as out:
        config = GRPOConfig(
            output_dir=out, per_device_train_batch_size=micro, generation_batch_size=B * G, num_generations=G,
            max_completion_length=new_tokens, learning_rate=5e-7, beta=BETA, num_iterations=1, temperature=1.0, top_p=1.0,
            top_k=0, max_steps=1, use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False, report_to=[],
            save_strategy="no", logging_steps=10_000, seed=0, dataloader_num_workers=0, remove_unused_columns=False,
            disable_tqdm=True, model_init_kwargs={"dtype": torch.float32}, gradient_accumulation_steps=B * G // micro,
        )
        timer = StepTimer()
        trainer = GRPOTrainer(model=checkout, reward_funcs=[lambda completions, **kw: [0.0] * len(completions)], args=config,
                              train_dataset=dataset, processing_class=processor, callbacks=[timer],
                              peft_config=LoraConfig(r=LORA_R, lora_alpha=2 * LORA_R, target_modules=LANGUAGE_LINEARS))
        trainer.train()
    print(json.dumps({"peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "step_s": timer.times[-1]}))


def trl_cell(checkout: str, micro: int, new_tokens: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--trl-worker", checkout, "--micro", str(micro), "--new-tokens",
                          str(new_tokens)], capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"TRL cell failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--no-trl", action="store_true", help="skip the TRL cells")
    parser.add_argument("--checkout", help="a stand-in (or real) checkout folder; default: build the stand-in")
    parser.add_argument("--trl-worker", help=argparse.SUPPRESS)
    parser.add_argument("--micro", type=int, default=8, help=argparse.SUPPRESS)
    ns = parser.parse_args()
    if ns.trl_worker:
        trl_worker(ns.trl_worker, ns.micro, ns.new_tokens)
        return
    checkout = ns.checkout
    if checkout is None:
        from skinflow.models.standin import build_standin

        checkout = str(build_standin(Path(tempfile.mkdtemp(prefix="qwen-standin-")) / "Qwen2.5-VL-3B-Instruct"))
    with_trl = not ns.no_trl
    if with_trl:
        try:
            import trl  # noqa: F401
        except ImportError:
            print('TRL is not installed (pip install "trl==1.16.0" -c <(echo torch==2.13.0)): its cells are left out')
            with_trl = False
    cells = {}
    for micro in (1, 8):
        for name, chunk in (("full logits", 0.0), ("chunked", 64.0)):
            cells[(name, micro)] = skinflow_cell(checkout, micro, chunk, ns.new_tokens)
            print(f"{name:12s} micro-batch {micro}: {cells[(name, micro)]}", flush=True)
        if with_trl:
            cells[("TRL 1.16", micro)] = trl_cell(checkout, micro, ns.new_tokens)
            print(f"{'TRL 1.16':12s} micro-batch {micro}: {cells[('TRL 1.16', micro)]}", flush=True)
    print(f"\nstand-in Qwen2.5-VL-3B-Instruct checkout (V=151,936), LoRA r {LORA_R}, beta {BETA}, {B} images x G {G}, "
          f"{ns.new_tokens} new tokens, fp32, CPU threads={os.cpu_count()}")
    print(f"{'scoring':12s} {'peak RSS mb1':>13s} {'peak RSS mb8':>13s} {'growth':>8s} {'step s mb1':>11s} {'step s mb8':>11s}")
    names = ["full logits", "chunked"] + (["TRL 1.16"] if with_trl else [])
    for name in names:
        one, eight = cells[(name, 1)], cells[(name, 8)]
        print(f"{name:12s} {one['peak_mib']:10.0f} MiB {eight['peak_mib']:10.0f} MiB {eight['peak_mib'] - one['peak_mib']:5.0f} MiB "
              f"{one['step_s']:11.2f} {eight['step_s']:11.2f}")
    full, chunked = cells[("full logits", 8)], cells[("chunked", 8)]
    print(f"ratio chunked/full at micro-batch 8: peak RSS {chunked['peak_mib'] / full['peak_mib']:.3f}, "
          f"step time {chunked['step_s'] / full['step_s']:.3f}, scoring time {chunked['scoring_s'] / full['scoring_s']:.3f}")
    growth = chunked["peak_mib"] - cells[("chunked", 1)]["peak_mib"]
    print(f"chunked growth micro-batch 1 -> 8: {growth:.0f} MiB (target <= ~260 MiB)")


if __name__ == "__main__":
    main()
