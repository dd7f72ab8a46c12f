"""What the Dynamic Vision Encoder costs: parameters added and forward time of a 7B-shaped vision block.

    python benchmarks/dve_overhead.py [--tokens 1024] [--reps 9]

1. Parameters added, absolute and as % of the vision tower: the tiny preset (counted on the built model) and
   Qwen2.5-VL-7B with the default DVE settings (counted from shapes, the tower built on the meta device).
2. Forward time of one 7B-shaped vision block (hidden 1280, MLP 3420) on one image of ``--tokens`` tokens, CPU,
   fp32, without and with FDLinear in its gate/up/down projections. Runs alternate (plain, DVE, plain, ...)
   so drift hits both alike; the median of the per-pair ratios is printed last. Target: <= 1.10.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from skinflow.models.backbone import BackboneSpec, build_backbone, preset_config
from skinflow.models.dve import MLP_LINEARS, DVESpec, dve_parameter_count, vision_tower
from skinflow.models.fdlinear import FDLinear


def tower_parameters(vision_config) -> int:
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

    with torch.device("meta"):
        tower = Qwen2_5_VisionTransformerPretrainedModel._from_config(vision_config)
    return sum(p.numel() for p in tower.parameters())


def parameter_report(spec: DVESpec) -> None:
    plain, _ = build_backbone(BackboneSpec())
    dve, _ = build_backbone(BackboneSpec(dve=spec))
    base = sum(p.numel() for p in vision_tower(plain).parameters())
    added = sum(p.numel() for p in vision_tower(dve).parameters()) - base
    print(f"tiny preset: vision tower {base:,} params, DVE adds {added:,} ({100 * added / base:.2f}%)")
    vision = preset_config(BackboneSpec(preset="qwen2.5-vl-7b")).vision_config
    total, added7b = tower_parameters(vision), dve_parameter_count(spec, vision)
    print(f"qwen2.5-vl-7b: vision tower {total:,} params, DVE adds {added7b:,} ({100 * added7b / total:.2f}%; target <= 2%)"
          f" [blocks {list(vision.fullatt_block_indexes)}, K={spec.num_groups}, reduction={spec.reduction:g}]")


def block_inputs(tokens: int):
    """One 7B-shaped vision block and the exact inputs the tower hands it for one image of ``tokens`` patches."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

    vision = preset_config(BackboneSpec(preset="qwen2.5-vl-7b")).vision_config
    vision.depth, vision.fullatt_block_indexes = 1, [0]
    torch.manual_seed(0)
    tower = Qwen2_5_VisionTransformerPretrainedModel._from_config(vision).eval()
    side = int(tokens**0.5)
    assert side * side == tokens and side % 2 == 0, "--tokens must be an even square (e.g. 1024 = 32 x 32)"
    captured = {}
    block = tower.blocks[0]
    handle = block.register_forward_pre_hook(lambda m, a, kw: captured.update(args=a, kwargs=kw), with_kwargs=True)
    pixels = torch.randn(tokens, 3 * 2 * 14 * 14)
    with torch.no_grad():
        tower(pixels, grid_thw=torch.tensor([[1, side, side]]))
    handle.remove()
    return block, captured["args"], captured["kwargs"]


def time_call(fn, args, kwargs) -> float:
    start = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--num-groups", type=int, default=64)
    ns = parser.parse_args()
    spec = DVESpec(enabled=True, num_groups=ns.num_groups)
    parameter_report(spec)

    plain, args, kwargs = block_inputs(ns.tokens)
    dve = copy.deepcopy(plain)
    for name in MLP_LINEARS:
        setattr(dve.mlp, name, FDLinear.from_linear(getattr(plain.mlp, name), spec.num_groups, spec.reduction, spec.min_channels))
    with torch.no_grad():
        ref, out = plain(*args, **kwargs), dve(*args, **kwargs)
        print(f"block output, DVE vs plain at init: max |diff| = {(ref - out).abs().max().item():.2e}")
        for fn in (plain, dve):  # warm-up
            fn(*args, **kwargs)
        ratios, t_plain, t_dve = [], [], []
        for _ in range(ns.reps):
            a, b = time_call(plain, args, kwargs), time_call(dve, args, kwargs)
            t_plain.append(a)
            t_dve.append(b)
            ratios.append(b / a)
    fft = FDLinear.from_linear(plain.mlp.down_proj, spec.num_groups)
    with torch.no_grad():
        beta = torch.ones(spec.num_groups)
        t_fft = statistics.median(time_call(fft.dynamic_weight, (beta,), {}) for _ in range(5))
    print(f"7B-shaped block, {ns.tokens} tokens, {torch.get_num_threads()} threads, fp32 CPU, {ns.reps} interleaved reps:")
    print(f"  plain  median {1000 * statistics.median(t_plain):.1f} ms")
    print(f"  DVE    median {1000 * statistics.median(t_dve):.1f} ms   (one 3420x1280 inverse FFT: {1000 * t_fft:.1f} ms)")
    print(f"forward-time ratio DVE/plain (median of pairs; target <= 1.10): {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
