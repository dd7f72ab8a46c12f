"""Calibrate the audit's near-duplicate threshold: precision and recall on transformed copies of real images.

    python benchmarks/near_duplicates.py [--sources 300] [--seed 0]

Takes ``--sources`` images of ``../shared/data/real-derm-sample`` (1,500 real Fitzpatrick17k photographs), makes
five copies of each (``skinflow.data.audit.near_copies``: half size, JPEG quality 30, 90% centre crop, mirror
image, brighter and more saturated) and compares every copy with all 1,500 originals, as the audit compares
images (phash, distance the smaller of image-image and image-mirror). At each threshold:

Thresholds are phash/dhash bits (of 64 each; 64: dhash not required).

- recall: the share of copies within the threshold of their own source;
- precision: of all (copy, original) pairs within the threshold, the share whose original is the copy's source.
  Every other original counts as unrelated, so this is a lower bound: the sample holds real near-duplicates
  (the audit finds some), and a copy matched to its source's duplicate counts as false here;
- pairs of originals within the threshold (what the audit would cluster in the sample).

Also prints the audit's throughput on the 1,500 images (all CPUs, and one process).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from skinflow.data.audit import AuditConfig, audit, hamming_pairs, image_hashes, near_copies  # noqa: E402

SAMPLE = REPO.parent / "shared" / "data" / "real-derm-sample"


GRID = [(t, 64) for t in (6, 8, 10, 12, 14, 16)] + [(t, td) for t in (12, 14, 16) for td in (10, 12, 14)]


def measure(sources: int, seed: int, thresholds=GRID) -> dict:
    paths = sorted((SAMPLE / "images").glob("*.jpg"))
    originals = [image_hashes(Image.open(p)) for p in paths]
    h = np.stack([a for a, _ in originals])
    m = np.stack([b for _, b in originals])
    chosen = np.random.default_rng(seed).choice(len(paths), size=min(sources, len(paths)), replace=False)
    copies, source_of, kinds = [], [], []
    for i in chosen:
        with Image.open(paths[i]) as img:
            for kind, copy in near_copies(img).items():
                copies.append(image_hashes(copy)[0])
                source_of.append(i)
                kinds.append(kind)
    c = np.stack(copies)

    def dist(other):  # (copies, originals, 2): phash and dhash bits apart
        return np.bitwise_count(c[:, None] ^ other[None]).reshape(len(c), len(h), 2, -1).sum(-1)

    plain, mirrored = dist(h), dist(m)
    rows = []
    for t, td in thresholds:
        limit = np.array([t, td])
        within = (plain <= limit).all(-1) | (mirrored <= limit).all(-1)
        own = within[np.arange(len(c)), source_of]
        tp = int(own.sum())
        fp = int(within.sum()) - tp
        orig_pairs = len(hamming_pairs(h, m, (t, td)))
        per_kind = {k: float(np.mean([o for o, kk in zip(own, kinds) if kk == k])) for k in dict.fromkeys(kinds)}
        rows.append({"threshold": f"{t}/{td}", "recall": tp / len(c), "precision": tp / max(tp + fp, 1), "false_pairs": fp,
                     "original_pairs": orig_pairs, "per_kind": per_kind})
    return {"copies": len(c), "sources": len(chosen), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sources", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    ns = parser.parse_args()
    if not SAMPLE.is_dir():
        sys.exit(f"the real sample is not at {SAMPLE}")
    result = measure(ns.sources, ns.seed)
    print(f"{result['copies']} copies of {result['sources']} images against all {len(list((SAMPLE / 'images').glob('*.jpg')))} originals")
    kinds = list(result["rows"][0]["per_kind"])
    print(f"{'bits':>5} {'recall':>7} {'precision':>9} {'false pairs':>11} {'original pairs':>14}  " + " ".join(f"{k:>11}" for k in kinds))
    for r in result["rows"]:
        print(f"{r['threshold']:>5} {r['recall']:7.3f} {r['precision']:9.3f} {r['false_pairs']:>11} {r['original_pairs']:>14}  "
              + " ".join(f"{r['per_kind'][k]:11.3f}" for k in kinds))
    for workers in (0, 1):
        start = time.perf_counter()
        report = audit(SAMPLE / "labels.csv", SAMPLE / "images", Path("/tmp/skinflow-audit-bench"), AuditConfig(workers=workers), progress=False)
        print(f"audit of {report['images_found']} images, {report['workers']} process(es): {report['images_per_second']} images/s "
              f"hashing, {time.perf_counter() - start:.1f} s in all; {report['clusters']} clusters, {report['exact_duplicate_groups']} exact groups")


if __name__ == "__main__":
    main()
