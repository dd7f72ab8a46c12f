"""Forward+backward of a Qwen2.5-VL-7B-shaped vision tower with and without the DVE, in bf16 on one GPU.

    python benchmarks/dve_gpu.py [--images 8] [--side 32] [--reps 5]     # on a GPU machine, a few minutes
    python benchmarks/dve_gpu.py --tiny                                   # CPU smoke run (tests use it)

Random-init weights (nothing downloaded). Each step embeds ``--images`` images of side x side patches
(1,024 tokens each at the default), sums the merged features and backpropagates into the DVE heads (base
frozen, as under LoRA) or, for the plain tower, into nothing but the input (so both pay the backward through
all blocks). Prints median step time and peak memory for each, interleaved, and their ratios last.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from skinflow.models.backbone import BackboneSpec, preset_config
from skinflow.models.dve import DVESpec, attach_dve, set_dve_trainable


def build_tower(tiny: bool, dve: bool, device: torch.device, dtype: torch.dtype):
    from transformers import Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

    spec = BackboneSpec(preset="tiny" if tiny else "qwen2.5-vl-7b")
    vision = preset_config(spec).vision_config
    torch.manual_seed(0)
    with torch.device(device):
        tower = Qwen2_5_VisionTransformerPretrainedModel._from_config(vision, dtype=dtype)
    for p in tower.parameters():
        p.requires_grad_(False)
    if dve:
        holder = torch.nn.Module()  # attach_dve looks for <model>.model.visual
        holder.model = torch.nn.Module()
        holder.model.visual = tower
        spec = DVESpec(enabled=True, num_groups=8 if tiny else 64)
        attach_dve(holder, spec)
        set_dve_trainable(holder, spec, base_trainable=False)
    return tower


def step(tower, pixels, grid, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = tower(pixels, grid_thw=grid).pooler_output
    out.float().sum().backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--side", type=int, default=32, help="patches per side (even); 32 -> 1,024 tokens per image")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--tiny", action="store_true", help="tiny tower on CPU in fp32 (smoke test)")
    ns = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() and not ns.tiny else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if ns.tiny:
        ns.images, ns.side, ns.reps = 2, 8, 2
    grid = torch.tensor([[1, ns.side, ns.side]] * ns.images, device=device)
    pixels = torch.randn(ns.images * ns.side * ns.side, 3 * 2 * 14 * 14, device=device, dtype=dtype, requires_grad=True)
    results = {}
    for name in ("plain", "dve"):
        tower = build_tower(ns.tiny, name == "dve", device, dtype)
        step(tower, pixels, grid, device)  # warm-up
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times = [step(tower, pixels, grid, device) for _ in range(ns.reps)]
        peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
        results[name] = (statistics.median(times), peak)
        print(f"{name:5s}: {ns.images} images x {ns.side * ns.side} tokens, {dtype}, {device}: "
              f"median step {1000 * results[name][0]:.1f} ms, peak memory {peak:.2f} GiB")
        del tower
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(f"ratio DVE/plain: time {results['dve'][0] / results['plain'][0]:.3f}, "
          f"peak memory {results['dve'][1] / results['plain'][1]:.3f}")


if __name__ == "__main__":
    main()
