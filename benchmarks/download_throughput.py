"""Download throughput against a loopback server, at concurrency 1 and 16, side by side.

    python benchmarks/download_throughput.py [--images 200] [--latency 0.05]

Serves ``--images`` JPEGs of the real sample (or random ones where it is absent; the bytes' MD5 names each) from
``skinflow.data.fault_server`` with ``--latency`` seconds of server think time per image (a far atlas answers in
tens to hundreds of milliseconds), and times ``skinflow.data.download`` into a fresh folder at each concurrency
(per-host connections = concurrency). Prints images/s, MiB/s and the ratio.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from skinflow.data.download import DownloadConfig, download  # noqa: E402
from skinflow.data.fault_server import FaultServer  # noqa: E402

SAMPLE = REPO.parent / "shared" / "data" / "real-derm-sample" / "images"


def images(n: int) -> dict[str, bytes]:
    paths = sorted(SAMPLE.glob("*.jpg"))[:n]
    blobs = [p.read_bytes() for p in paths]
    rng = np.random.default_rng(0)
    while len(blobs) < n:
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (256, 200, 3), dtype=np.uint8)).save(buf, "JPEG")
        blobs.append(buf.getvalue())
    return {hashlib.md5(b).hexdigest(): b for b in blobs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--latency", type=float, default=0.05)
    ns = parser.parse_args()
    files = images(ns.images)
    rates = {}
    with FaultServer(files, latency=ns.latency) as server, tempfile.TemporaryDirectory() as tmp:
        csv_path = Path(tmp) / "rows.csv"
        csv_path.write_text("md5hash,url\n" + "".join(f"{m},{server.url('ok', m)}\n" for m in files))
        for concurrency in (1, 16):
            out = Path(tmp) / f"c{concurrency}"
            cfg = DownloadConfig(concurrency=concurrency, per_host=concurrency)
            start = time.perf_counter()
            summary = download(csv_path, out, cfg, progress=False)
            seconds = time.perf_counter() - start
            assert summary.fetched == len(files), summary.table()
            rates[concurrency] = len(files) / seconds
            print(f"concurrency {concurrency:>2}: {len(files)} images, {summary.bytes / 2**20:.1f} MiB in {seconds:.2f} s = "
                  f"{rates[concurrency]:.1f} images/s, {summary.bytes / 2**20 / seconds:.2f} MiB/s (server latency {ns.latency * 1000:.0f} ms)")
    print(f"ratio concurrency 16 / 1: {rates[16] / rates[1]:.1f}x")


if __name__ == "__main__":
    main()
