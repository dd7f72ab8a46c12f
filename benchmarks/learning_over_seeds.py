"""Are the demo's learning claims more than one lucky seed? Each stage's gain over its own start, over seeds.

    python benchmarks/learning_over_seeds.py [--config configs/ablation/demo_seeds.yaml]

Runs the grid of the ablation file (resumable: finished cells are reused, so a second call only prints), then
reads, for every finished cell, the child runs of Stage I and Stage II and prints the gains the demo test
(tests/test_demo_pipeline.py) measures, each against the stage's starting checkpoint evaluated on the same images
(``evaluate_start``):

- Stage I: greedy ``caption_fields`` reward on the validation images (``val/reward/caption_fields``);
- Stage II: test graded top-6 (the score its reward optimises), graded top-1, top-1, malignant-miss rate.

Last: mean ± std of each gain over seeds, how many seeds gained, and the demo test's margin beside it. Seed 0
is the demo test's own trajectory on the same machine (measured: equal to four decimals).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.test_demo_pipeline import STAGE2_GRADED_TOP6_FALL, STAGE2_MALIGNANT_MISS_CUT  # noqa: E402

# (label, child stage, metric, the demo test's bound on the gain, or None): graded top-6 may not fall by more than
# its bound (gain >= -0.03); malignant miss (lower is better) must fall by at least its bound (gain <= -0.02)
GAINS = (
    ("stage1 val caption_fields", "stage1", "val/reward/caption_fields", None),
    ("stage2 test graded_top6", "stage2", "test/graded_top6", -STAGE2_GRADED_TOP6_FALL),
    ("stage2 test graded_top1", "stage2", "test/graded_top1", None),
    ("stage2 test top1_exact", "stage2", "test/top1_exact", None),
    ("stage2 test malignant_miss_top1", "stage2", "test/malignant_miss_top1", -STAGE2_MALIGNANT_MISS_CUT),
)


def cell_gains(metrics: dict[str, dict[str, float]]) -> dict[str, tuple[float, float]]:
    """``{label: (start, end)}`` from the child runs' metrics (``{stage: {metric: value}}``).

    >>> cell_gains({"stage1": {"val/reward/caption_fields": 0.6, "start/val/reward/caption_fields": 0.5}, "stage2": {}})
    {'stage1 val caption_fields': (0.5, 0.6)}
    """
    out = {}
    for label, stage, metric, _ in GAINS:
        values = metrics.get(stage, {})
        if metric in values and f"start/{metric}" in values:
            out[label] = (values[f"start/{metric}"], values[metric])
    return out


def summary_lines(per_seed: dict[int, dict[str, tuple[float, float]]]) -> list[str]:
    """Per seed start -> end (gain), then mean ± std of the gains, seeds gaining, and the stated margin."""
    lines = []
    for label, _, _, margin in GAINS:
        gains = []
        for seed, cells in sorted(per_seed.items()):
            if label in cells:
                start, end = cells[label]
                gains.append(end - start)
                lines.append(f"  seed {seed}  {label:32s} {start:.4f} -> {end:.4f}  ({end - start:+.4f})")
        if not gains:
            continue
        std = statistics.stdev(gains) if len(gains) > 1 else float("nan")
        better = sum(g < 0 for g in gains) if "malignant" in label else sum(g > 0 for g in gains)
        stated = f"; the demo test's bound {margin:+.3f}" if margin is not None else ""
        lines.append(f"{label}: gain {statistics.mean(gains):+.4f} ± {std:.4f} over {len(gains)} seeds, "
                     f"improved in {better}/{len(gains)}{stated}")
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/ablation/demo_seeds.yaml")
    parser.add_argument("--no-run", action="store_true", help="only read the finished cells")
    ns = parser.parse_args(argv)

    from skinflow.ablation import load_ablation, run_ablation
    from skinflow.analysis.compare import client_for
    from skinflow.analysis.runs import cell_runs

    ablation = load_ablation(ns.config)
    if not ns.no_run:
        result = run_ablation(ablation)
        print(f"[learning_over_seeds] {len(result['ran'])} cells run, {len(result['skipped'])} reused, "
              f"{result['seconds'] / 60:.1f} min")
    client = client_for(ablation.pipeline.tracking_uri)
    for row in ablation.rows:
        per_seed = {}
        for seed in ablation.seeds:
            try:
                children = cell_runs(ablation.name, row.name, seed, ablation.pipeline.tracking_uri)
            except (LookupError, ValueError) as error:  # no such experiment, or the cell has no finished run
                print(f"[learning_over_seeds] {error}: left out")
                continue
            metrics = {stage: client.get_run(run_id).data.metrics for stage, run_id in children.items()}
            per_seed[seed] = cell_gains(metrics)
        print(f"\n{ablation.name} / {row.name}: gain of each stage over its own starting checkpoint")
        print("\n".join(summary_lines(per_seed)))


if __name__ == "__main__":
    main()
