"""How many near-duplicate clusters each split preset puts on two sides, without and with ``clusters_path``.

    python benchmarks/split_leakage.py [--clusters audit/clusters.csv]

Audits ``../shared/data/real-derm-sample`` (1,500 real Fitzpatrick17k photographs) with the default settings
unless ``--clusters`` names an audit's ``clusters.csv`` (with ``--csv`` / ``--image-dir`` for other data), then
builds each preset through the DataModule twice, without and with the clusters, and counts clusters with images
in two of train / val / test.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from skinflow.data.audit import audit  # noqa: E402
from skinflow.data.datamodule import Fitzpatrick17kDataModule  # noqa: E402
from skinflow.data.splits import FST_HOLDOUTS, clusters_on_two_sides, read_clusters  # noqa: E402

SAMPLE = REPO.parent / "shared" / "data" / "real-derm-sample"


def sides(dm: Fitzpatrick17kDataModule) -> pd.Series:
    dm.setup()
    return pd.Series({m: name for name, ds in dm.splits.items() for m in ds.records["md5hash"]}, dtype=object)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--csv", default=str(SAMPLE / "labels.csv"))
    parser.add_argument("--image-dir", default=str(SAMPLE / "images"))
    parser.add_argument("--clusters")
    ns = parser.parse_args()
    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        clusters_path = ns.clusters
        if clusters_path is None:
            report = audit(ns.csv, ns.image_dir, Path(tmp) / "audit", progress=False)
            clusters_path = str(Path(tmp) / "audit" / "clusters.csv")
            print(f"audit: {report['clusters']} clusters ({report['images_in_clusters']} images), "
                  f"{report['exact_duplicate_groups']} exact-duplicate groups, {report['label_conflict_clusters']} with two labels")
        table = read_clusters(clusters_path)
        groups = pd.Series(dict(zip(table["md5hash"], table["cluster"])))
        print(f"{'preset':<10} {'images':>7} {'clusters placed':>15} {'on two sides, without clusters_path':>36} {'with':>5}")
        for preset in ("random", *FST_HOLDOUTS, "clean"):
            counts = []
            for with_clusters in (False, True):
                if preset == "clean" and not with_clusters:
                    counts.append(None)
                    continue
                dm = Fitzpatrick17kDataModule(csv_path=ns.csv, image_dir=ns.image_dir, cache_dir=str(Path(tmp) / "cache"),
                                              split=preset, progress=False,
                                              clusters_path=clusters_path if with_clusters else None)
                side = sides(dm)
                g = groups.reindex(side.index)
                counts.append((len(side), int(g.nunique()), len(clusters_on_two_sides(side, g))))
            base = counts[0] if counts[0] else counts[1]
            without = "n/a" if counts[0] is None else f"{counts[0][2]} of {counts[0][1]}"
            print(f"{preset:<10} {base[0]:>7} {counts[1][1]:>15} {without:>36} {counts[1][2]:>5}")


if __name__ == "__main__":
    main()
