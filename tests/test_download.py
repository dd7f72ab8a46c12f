"""The downloader against a loopback server that fails the way the atlases do (skinflow.data.fault_server)."""

from __future__ import annotations

import csv
import hashlib
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skinflow.data.download import REPORT_COLUMNS, DownloadConfig, download
from skinflow.data.fault_server import FaultServer

REPO = Path(__file__).resolve().parent.parent
# short waits so that every retry path runs in seconds; the defaults are for the real atlases
FAST = DownloadConfig(concurrency=8, per_host=8, connect_timeout=1.0, read_timeout=0.4, deadline=0.8, retries=2,
                      backoff=0.01, jitter=0.01)


def jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture
def files() -> dict[str, bytes]:
    images = [jpeg(i) for i in range(60)]
    return {hashlib.md5(b).hexdigest(): b for b in images}


def write_csv(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["md5hash", "url", "label"])
        writer.writerows(rows)
    return path


def read_report(out: Path) -> dict[str, dict]:
    with open(out / "download_report.csv") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == REPORT_COLUMNS
        return {row["md5hash"]: row for row in reader}


MODES = {  # mode -> (image kept, reason in the report, requests the server sees at FAST.retries == 2)
    "ok": (True, None, 1),
    "redirect": (True, None, 1),  # one to the redirecting path (and one to /ok/)
    "429-once": (True, None, 2), "500-once": (True, None, 2), "reset-once": (True, None, 2),
    "stall-once": (True, None, 2), "truncated-once": (True, None, 2), "wrong-once": (True, None, 2),
    "429": (False, "http_429", 3), "500": (False, "http_500", 3), "reset": (False, "connection_error", 3),
    "stall": (False, "timeout", 3), "truncated": (False, "truncated", 3), "wrong": (False, "md5_mismatch", 3),
    "drip": (False, "too_slow", 3), "loop": (False, "too_many_redirects", 3),
    "html": (False, "not_an_image", 1), "404": (False, "http_404", 1),  # not retried: retrying will not help
}


def test_every_fault_is_retried_or_reported_and_only_verified_bytes_are_kept(tmp_path, files):
    md5s = list(files)
    out = tmp_path / "images"
    with FaultServer(files, stall=1.2, drip_every=0.05) as server:
        rows = [(md5, server.url(mode, md5), "psoriasis") for md5, mode in zip(md5s, MODES)]
        no_url = md5s[len(MODES)]
        rows.append((no_url, "", "psoriasis"))
        summary = download(write_csv(tmp_path / "f.csv", rows), out, FAST, progress=False)
        hits = {mode: len(server.hits(mode, md5)) for md5, mode in zip(md5s, MODES)}
        first_429 = server.hits("429-once", md5s[list(MODES).index("429-once")])
        agents = server.user_agents
    report = read_report(out)
    for (md5, mode), (kept, reason, requests) in zip(zip(md5s, MODES), MODES.values()):
        target = out / f"{md5}.jpg"
        assert target.is_file() == kept, mode
        if kept:
            assert target.read_bytes() == files[md5], mode
            assert md5 not in report, mode
        else:
            assert report[md5]["reason"] == reason, mode
            assert int(report[md5]["attempts"]) == requests, mode
        assert hits[mode] == requests, mode
    assert report[no_url]["reason"] == "no_url" and report[no_url]["attempts"] == "0"
    assert summary.fetched == sum(k for k, _, _ in MODES.values()) and summary.no_url == 1
    assert summary.by_reason["timeout"] == 1 and summary.by_reason["no_url"] == 1
    # Retry-After: 1 was honoured (the backoff alone would have waited 0.01 s)
    assert first_429[1] - first_429[0] >= 0.95
    assert len(agents) == 1 and next(iter(agents)).startswith("skinflow-download/")
    assert not list(out.glob(".*partial*")), "no partial file may stay behind"


def test_connections_per_host_are_bounded(tmp_path, files):
    md5s = list(files)[:24]
    cfg = DownloadConfig(**{**FAST.__dict__, "concurrency": 8, "per_host": 2})
    with FaultServer(files, latency=0.05) as server:
        rows = [(md5, server.url("ok", md5), "x") for md5 in md5s]
        summary = download(write_csv(tmp_path / "f.csv", rows), tmp_path / "out", cfg, progress=False)
        most = server.max_in_flight
    assert summary.fetched == len(md5s)
    assert most == 2  # 8 workers, 2 connections to the one host: never more, and the two were used


def test_verified_files_are_never_fetched_again_and_bad_ones_are(tmp_path, files):
    md5s = list(files)[:6]
    out = tmp_path / "out"
    out.mkdir()
    repeated = [(md5s[3], "http://127.0.0.1:9/never-asked.jpg", "x")]  # a second row for one image: fetched once
    (out / f"{md5s[0]}.jpg").write_bytes(files[md5s[0]])  # verified: kept, not fetched
    (out / f"{md5s[1]}.jpg").write_bytes(b"\xff\xd8\xff truncated by an old tool")  # does not verify: fetched again
    (out / f".{md5s[2]}.jpg.partial-99999-1").write_bytes(b"half")  # what a killed run leaves
    with FaultServer(files) as server:
        rows = [(md5, server.url("ok", md5), "x") for md5 in md5s]
        summary = download(write_csv(tmp_path / "f.csv", rows + repeated), out, FAST, progress=False)
        hits = [len(server.hits("ok", md5)) for md5 in md5s]
    assert hits == [0, 1, 1, 1, 1, 1]
    assert summary.present == 1 and summary.fetched == 5 and summary.failed == 0
    assert summary.duplicate_rows == 1 and "1 repeat an md5hash" in summary.table()
    assert all((out / f"{m}.jpg").read_bytes() == files[m] for m in md5s)
    assert not list(out.glob(".*partial*"))


@pytest.mark.parametrize("sig, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "Ctrl-C"])
def test_interrupted_run_loses_nothing_and_resumes(tmp_path, files, sig, status):
    """Killed mid-run: it exits 128 + signal after a report; every file there verifies; the next run fetches
    only the rest."""
    md5s = list(files)
    out = tmp_path / "out"
    with FaultServer(files, latency=0.15) as server:
        csv_path = write_csv(tmp_path / "f.csv", [(m, server.url("ok", m), "x") for m in md5s])
        cmd = [sys.executable, "-m", "skinflow", "download", "--csv", str(csv_path), "--out", str(out),
               "--concurrency", "2", "--no-progress"]
        # SIGINT at its default in the child: a suite started as a background job of a non-interactive shell
        # (`make test &`) passes SIGINT down ignored, and Python then installs no KeyboardInterrupt handler
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": str(REPO)},
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.monotonic() + 60
        while len(list(out.glob("*.jpg"))) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == status, stderr
        assert "not attempted" in stdout
        first = {m for m in md5s if (out / f"{m}.jpg").exists()}
        assert 6 <= len(first) < len(md5s)
        assert all((out / f"{m}.jpg").read_bytes() == files[m] for m in first)
        assert not list(out.glob(".*partial*"))
        assert read_report(out) == {}  # interrupted files are not failures
        before = {m: len(server.hits("ok", m)) for m in md5s}
        summary = download(csv_path, out, FAST, progress=False)
        again = {m: len(server.hits("ok", m)) - before[m] for m in md5s}
    assert summary.present == len(first) and summary.fetched == len(md5s) - len(first)
    assert all(again[m] == 0 for m in first) and all(again[m] == 1 for m in md5s if m not in first)


def test_labels_limit_and_dry_run(tmp_path, files):
    md5s = list(files)[:6]
    rows = [(m, f"http://127.0.0.1:9/ok/{m}.jpg", "psoriasis" if i % 2 else "eczema") for i, m in enumerate(md5s)]
    csv_path = write_csv(tmp_path / "f.csv", rows)
    out = tmp_path / "never"
    run = subprocess.run([sys.executable, "-m", "skinflow", "download", "--csv", str(csv_path), "--out", str(out),
                          "--labels", "psoriasis", "--limit", "2", "--dry-run"], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "rows 2" in run.stdout and "to fetch: 2" in run.stdout and "127.0.0.1" in run.stdout
    assert not out.exists()  # a dry run writes nothing


@pytest.mark.parametrize("rows, needle", [
    ([("not-an-md5", "http://x/a.jpg", "x")], "row 2: md5hash 'not-an-md5'"),
    ([("../../etc/passwd", "http://x/a.jpg", "x")], "row 2"),
])
def test_bad_rows_fail_before_any_request_naming_the_row(tmp_path, rows, needle):
    csv_path = write_csv(tmp_path / "f.csv", rows)
    run = subprocess.run([sys.executable, "-m", "skinflow", "download", "--csv", str(csv_path), "--out", str(tmp_path / "o")],
                         cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 2 and needle in run.stderr and run.stderr.count("\n") == 1, run.stderr


def test_a_file_that_cannot_be_written_is_reported_not_retried(tmp_path, files, monkeypatch):
    from skinflow.data import download as module

    md5s = list(files)[:3]

    def full_disk(self, md5, body):
        if md5 == md5s[1]:
            raise OSError(28, "No space left on device")
        return real_write(self, md5, body)

    real_write = module.Downloader._write
    monkeypatch.setattr(module.Downloader, "_write", full_disk)
    with FaultServer(files) as server:
        rows = [(md5, server.url("ok", md5), "x") for md5 in md5s]
        summary = download(write_csv(tmp_path / "f.csv", rows), tmp_path / "out", FAST, progress=False)
        hits = len(server.hits("ok", md5s[1]))
    assert summary.fetched == 2 and hits == 1
    assert read_report(tmp_path / "out")[md5s[1]]["reason"] == "write_error: No space left on device"


def test_an_unread_error_body_is_not_read_as_the_next_response(tmp_path, files):
    """One worker, one kept-alive connection: after a 404 (or a 500 given up on) whose body was never read, the
    next image on that connection is fetched with one request, not misread and retried."""
    md5s = list(files)[:6]
    cfg = DownloadConfig(**{**FAST.__dict__, "concurrency": 1, "per_host": 1})
    with FaultServer(files) as server:
        rows = [(md5s[0], server.url("404", md5s[0]), "x"), (md5s[1], server.url("ok", md5s[1]), "x"),
                (md5s[2], server.url("500", md5s[2]), "x"), (md5s[3], server.url("ok", md5s[3]), "x")]
        summary = download(write_csv(tmp_path / "f.csv", rows), tmp_path / "out", cfg, progress=False)
        hits = [len(server.hits("ok", m)) for m in (md5s[1], md5s[3])]
    assert summary.fetched == 2 and hits == [1, 1]


def test_a_long_retry_after_is_cut_to_retry_after_max():
    """A server asking for an hour's wait gets ``retry_after_max`` seconds; a short ask is honoured as given."""
    from urllib3 import HTTPResponse

    from skinflow.data.download import DownloadConfig, make_retry

    retry = make_retry(DownloadConfig(retry_after_max=7.0))
    assert retry.get_retry_after(HTTPResponse(status=429, headers={"Retry-After": "3600"})) == 7.0
    assert retry.get_retry_after(HTTPResponse(status=503, headers={"Retry-After": "2"})) == 2.0


def test_an_image_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    """The bytes go to a partial file beside the target and are renamed into place after fsync: a failure while
    writing leaves neither a target nor a partial file, and a success leaves only the target."""
    import os

    from skinflow.data.download import DownloadConfig, Downloader

    downloader = Downloader(tmp_path, DownloadConfig())
    downloader._write("a" * 32, b"jpeg bytes")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a" * 32 + ".jpg"]

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        downloader._write("b" * 32, b"other bytes")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a" * 32 + ".jpg"]
    assert (tmp_path / ("a" * 32 + ".jpg")).read_bytes() == b"jpeg bytes"
