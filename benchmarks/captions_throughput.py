"""Captioning throughput against the loopback OpenAI-compatible server, at concurrency 1 and 8, side by side.

    python benchmarks/captions_throughput.py [--images 48] [--latency 0.2]

Captions ``--images`` synthetic lesions (drawn into a temporary folder) through ``skinflow.llm.captions`` with
``skinflow.llm.fake_server`` answering every request after ``--latency`` seconds (a large VLM behind vLLM takes
seconds per caption; the point is the overlap). The scripted describer writes a schema-shaped caption; the
scripted reader names the right label, so each image costs two requests. Prints images/s and the ratio.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from skinflow.data.formats import CAPTION_FIELDS  # noqa: E402
from skinflow.data.synthetic import generate  # noqa: E402
from skinflow.llm.captions import CAPTION_SYSTEM, CaptionConfig, make_captions  # noqa: E402
from skinflow.llm.client import make_client  # noqa: E402
from skinflow.llm.fake_server import FakeOpenAI, images_in, text_of  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--latency", type=float, default=0.2)
    ns = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp) / "data", per_class=max(1, -(-ns.images // 15)), seed=0, progress=False)
        df = pd.read_csv(Path(tmp) / "data" / "labels.csv", dtype=str).head(ns.images)
        df.to_csv(Path(tmp) / "rows.csv", index=False)
        labels = dict(zip(df.md5hash, df.label))

        def reply(request):
            if text_of(request, "system") == CAPTION_SYSTEM:
                md5 = hashlib.md5(images_in(request)[0]).hexdigest()
                return "<caption>\n" + "\n".join(f"{f}: {md5[:12] if f == 'location' else 'x'}" for f in CAPTION_FIELDS) + "\n</caption>"
            key = text_of(request, "user").split("location: ")[1][:12]
            return f"<answer>\n1. {next(v for k, v in labels.items() if k.startswith(key))}\n</answer>"

        rates = {}
        with FakeOpenAI(reply, latency=ns.latency) as server:
            os.environ["SKINFLOW_BENCH_KEY"] = server.api_key
            client = make_client(server.base_url, "SKINFLOW_BENCH_KEY")
            for concurrency in (1, 8):
                start = time.perf_counter()
                summary = make_captions(client, Path(tmp) / "rows.csv", Path(tmp) / "data" / "images",
                                        Path(tmp) / f"c{concurrency}.jsonl", CaptionConfig(model="m", concurrency=concurrency),
                                        progress=False)
                seconds = time.perf_counter() - start
                assert summary.accepted_at == {1: len(df)}, summary.table()
                rates[concurrency] = len(df) / seconds
                print(f"concurrency {concurrency}: {len(df)} images ({summary.usage['requests']} requests) in {seconds:.2f} s = "
                      f"{rates[concurrency]:.2f} images/s (server latency {ns.latency * 1000:.0f} ms per request)")
    print(f"ratio concurrency 8 / 1: {rates[8] / rates[1]:.1f}x")


if __name__ == "__main__":
    main()
