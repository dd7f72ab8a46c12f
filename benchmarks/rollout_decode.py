"""Rollout decode time, ``compiled`` engine against ``hf``, side by side in one process, on the stand-in
Qwen2.5-VL-3B-Instruct checkout (V = 151,936) with LoRA r 8 and the DVE.

    python benchmarks/rollout_decode.py                      # 8 and 32 sequences, 128 new tokens, 3 repeats
    python benchmarks/rollout_decode.py --sequences 8 --new-tokens 16 --repeats 1     # quick

For each number of sequences N (G = 4 completions per image, N / 4 random 140-px images), one GRPO stage samples a
rollout through each engine (``GRPOStage.rollout``: the stage's own sampling, temperature 1, top-p 1). The first
``compiled`` call of each N compiles the decode step (reported apart as the compile cost); then the engines
alternate for ``--repeats`` rounds and the median is taken. Random weights rarely draw EOS, so every completion runs
``--new-tokens`` steps. Prints milliseconds per token step, generated tokens/s and the ratio compiled / hf.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

G, SIDE = 4, 140


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sequences", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--checkout", help="a stand-in (or real) checkout folder; default: build the stand-in")
    ns = parser.parse_args()

    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    from skinflow.data.collate import VisionLanguageCollator
    from skinflow.data.formats import Target
    from skinflow.data.ontology import ONTOLOGY
    from skinflow.models.backbone import BackboneSpec, LoRASpec
    from skinflow.models.dve import DVESpec
    from skinflow.rl.engines import CompiledEngine, HFEngine
    from skinflow.stages.grpo import GRPOStage

    checkout = ns.checkout
    if checkout is None:
        from skinflow.models.standin import build_standin

        checkout = str(build_standin(Path(tempfile.mkdtemp(prefix="qwen-standin-")) / "Qwen2.5-VL-3B-Instruct"))
    torch.manual_seed(0)
    spec = BackboneSpec(preset="qwen2.5-vl-3b", pretrained_path=checkout, lora=LoRASpec(r=8, alpha=16),
                        dve=DVESpec(enabled=True, num_groups=8))
    stage = GRPOStage(spec, group_size=G, max_new_tokens=ns.new_tokens, temperature=1.0)
    engines = {"hf": HFEngine(), "compiled": CompiledEngine(bucket=64)}
    rng = np.random.default_rng(0)
    print(f"stand-in checkout {checkout}; LoRA r 8 + DVE; G={G}; {ns.new_tokens} new tokens; CPU threads={os.cpu_count()}")
    for n in ns.sequences:
        images = n // G
        items = [{"image": rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8),
                  "target": Target(label, ONTOLOGY.nine(label), ONTOLOGY.three(label))} for label in ONTOLOGY.labels[:images]]
        batch = next(iter(DataLoader(items, batch_size=images, collate_fn=VisionLanguageCollator(stage.processor, "diagnosis"))))

        def timed(name: str) -> tuple[float, int]:
            stage.engine = engines[name]
            start = time.perf_counter()
            rollout = stage.rollout(batch)
            return time.perf_counter() - start, int(rollout.completion_ids.shape[1])

        compile_s, _ = timed("compiled")
        times: dict[str, list[float]] = {"hf": [], "compiled": []}
        steps = ns.new_tokens
        for r in range(ns.repeats):
            for name in (("hf", "compiled") if r % 2 == 0 else ("compiled", "hf")):
                seconds, steps = timed(name)
                times[name].append(seconds)
        med = {name: statistics.median(t) for name, t in times.items()}
        print(f"N={n:3d} sequences: first compiled call {compile_s:.1f} s (compile + one rollout)")
        for name in ("hf", "compiled"):
            print(f"  {name:8s} {med[name]:8.3f} s  {1000 * med[name] / steps:7.1f} ms/token step  "
                  f"{n * steps / med[name]:8.0f} tokens/s  (runs {[round(t, 3) for t in times[name]]})")
        print(f"  ratio compiled/hf at N={n}: {med['compiled'] / med['hf']:.3f}")


if __name__ == "__main__":
    main()
