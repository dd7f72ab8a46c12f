"""``python -m skinflow download``: Fitzpatrick17k's CSV of image URLs -> a folder of verified ``<md5hash>.jpg``.

Fitzpatrick17k is distributed as a CSV whose ``url`` column points into two online atlases and whose ``md5hash``
column is the MD5 of each image's bytes. This module fetches every row's image and keeps it only when its bytes
hash to that ``md5hash``.

The HTTP work is urllib3's (a dependency of requests, hence of MLflow, and the layer requests itself retries
with):

- ``PoolManager(maxsize=per_host, block=True)`` bounds the connections to each host (a request waits for a free
  one); a thread pool of ``concurrency`` workers bounds the requests in flight overall;
- ``Retry`` retries connection errors, read timeouts, redirects and the statuses 429/500/502/503/504 with
  exponential backoff plus jitter, and sleeps what a ``Retry-After`` header asks (capped by
  ``retry_after_max``). Failures found only once the body is read (a truncated body, a slow drip past the
  per-attempt deadline, bytes whose MD5 is not the row's) go through the *same* ``Retry`` object
  (``increment`` then ``sleep``), so one budget and one backoff schedule cover every kind of failure;
- a page that is not an image (an HTML error page served with status 200) and a 4xx status are not retried.

Files are written as ``.<md5hash>.jpg.partial-<pid>`` inside the output folder and renamed into place once
verified: an interrupted run leaves no half-written image, the next run removes stale partial files, and a
file already there whose bytes verify is never fetched again. Failures (and rows without a URL) go to
``download_report.csv`` (md5hash, url, attempts, reason) in the output folder, and the counts by reason are
printed at the end.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import logging
import os
import signal
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pandas as pd

from skinflow.data.formats import DataError, read_id_csv

log = logging.getLogger(__name__)

REPORT_NAME = "download_report.csv"
REPORT_COLUMNS = ("md5hash", "url", "attempts", "reason")
PARTIAL = ".partial-"
RETRY_STATUSES = (429, 500, 502, 503, 504)
IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"RIFF", b"BM")


def user_agent(contact: str | None = None) -> str:
    """A polite User-Agent: what is fetching, why, and (optionally) whom to write to."""
    from importlib.metadata import PackageNotFoundError, version

    import urllib3

    try:
        ours = version("skinflow")
    except PackageNotFoundError:
        ours = "dev"
    who = f"; contact: {contact}" if contact else ""
    return f"skinflow-download/{ours} (Fitzpatrick17k research dataset fetch, one request per image{who}) urllib3/{urllib3.__version__}"


@dataclass
class DownloadConfig:
    """How to fetch. Times in seconds."""

    concurrency: int = 8  # requests in flight overall
    per_host: int = 4  # connections to one host at a time
    connect_timeout: float = 10.0
    read_timeout: float = 30.0  # the longest wait for any one read of the socket
    deadline: float = 120.0  # the longest one attempt may take to deliver the whole body (a slow drip)
    retries: int = 5  # further attempts after the first, whatever the failure
    backoff: float = 0.5  # urllib3 backoff_factor: waits of backoff * 2**(n-1) s after the n-th consecutive failure
    jitter: float = 0.5  # plus up to this many seconds at random
    backoff_max: float = 60.0
    retry_after_max: float = 300.0  # a Retry-After asking for longer is cut to this
    max_redirects: int = 5
    max_bytes: int = 64 * 2**20  # a body longer than this is refused (no Fitzpatrick17k image is near it)
    contact: str | None = None  # e-mail or URL put into the User-Agent

    def check(self) -> None:
        for name in ("concurrency", "per_host"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: needs at least 1")
        for name in ("connect_timeout", "read_timeout", "deadline"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)}: needs a positive number of seconds")
        if self.retries < 0:
            raise ValueError(f"retries={self.retries}: needs 0 or more")


@dataclass
class Outcome:
    md5hash: str
    url: str
    ok: bool
    attempts: int = 0
    reason: str = ""
    bytes: int = 0


@dataclass
class Plan:
    """What a run will do: rows to fetch, rows already verified on disk, rows without a URL."""

    fetch: list[tuple[str, str]] = field(default_factory=list)  # (md5hash, url)
    present: list[str] = field(default_factory=list)
    no_url: list[str] = field(default_factory=list)
    unverified_present: list[str] = field(default_factory=list)  # a file is there but its bytes do not verify
    duplicate_rows: int = 0
    rows: int = 0


def file_md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_rows(csv_path: str | Path, labels: list[str] | None = None, limit: int | None = None) -> pd.DataFrame:
    """The CSV's ``md5hash``, ``url`` (and ``label``) columns, validated; ``labels`` and ``limit`` applied."""
    path = Path(csv_path)
    df = read_id_csv(path, ("md5hash", "url"))
    if labels:
        if "label" not in df.columns:
            raise DataError(f"{path}: --labels needs a 'label' column (columns: {list(df.columns)})")
        unknown = sorted(set(labels) - set(df["label"]))
        if unknown:
            raise DataError(f"{path}: no row has label {unknown[0]!r} ({len(unknown)} unknown of {len(labels)} asked for)")
        df = df[df["label"].isin(labels)]
    if limit is not None:
        if limit < 1:
            raise DataError(f"--limit {limit}: needs at least 1 row")
        df = df.head(limit)
    return df.reset_index(drop=True)


def remove_partials(out: Path) -> int:
    """Delete the partial files an earlier run left when it was killed (only this module's own pattern)."""
    removed = 0
    for path in [*out.glob(f".*.jpg{PARTIAL}*"), *out.glob(f".{REPORT_NAME}{PARTIAL}*")]:
        path.unlink(missing_ok=True)
        removed += 1
    return removed


def plan(df: pd.DataFrame, out: Path, progress: bool = True) -> Plan:
    """Sort rows into fetch / already there (bytes verified) / no URL; repeated md5hashes are fetched once."""
    from tqdm.auto import tqdm

    p = Plan(rows=len(df))
    seen: set[str] = set()
    for md5, url in tqdm(zip(df["md5hash"], df["url"]), total=len(df), desc=f"checking {out}", unit="row",
                         disable=not progress, leave=False):
        if md5 in seen:
            p.duplicate_rows += 1
            continue
        seen.add(md5)
        target = out / f"{md5}.jpg"
        if target.is_file():
            if file_md5(target) == md5:
                p.present.append(md5)
                continue
            p.unverified_present.append(md5)
        url = url.strip()
        if not url:
            p.no_url.append(md5)
        else:
            p.fetch.append((md5, url))
    return p


def make_retry(cfg: DownloadConfig):
    """urllib3's ``Retry`` for one image, counting the requests it allows across the copies it makes of itself
    (``retry.counter[0]``: the failures so far, so attempts = failures + 1 on success)."""
    from urllib3.util.retry import Retry

    class CountingRetry(Retry):
        counter: list[int] | None = None

        def new(self, **kw):
            copy = super().new(**kw)
            copy.counter = self.counter
            return copy

        def increment(self, *args, **kwargs):
            if self.counter is not None:
                self.counter[0] += 1
            return super().increment(*args, **kwargs)

    retry = CountingRetry(
        total=cfg.retries, redirect=cfg.max_redirects, status_forcelist=RETRY_STATUSES, allowed_methods=frozenset({"GET"}),
        backoff_factor=cfg.backoff, backoff_jitter=cfg.jitter, backoff_max=cfg.backoff_max,
        respect_retry_after_header=True, retry_after_max=cfg.retry_after_max, raise_on_status=False,
        raise_on_redirect=True,
    )
    retry.counter = [0]
    return retry


class BodyError(Exception):
    """The response's body is unusable; ``reason`` is the report's word for it."""

    def __init__(self, reason: str, detail: str = "", retry: bool = True):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.retry = reason, retry


def reason_of(err: BaseException) -> str:
    """The report's word for an exception urllib3 gave up on (``MaxRetryError.reason`` or a body error)."""
    from urllib3 import exceptions as e

    if isinstance(err, BodyError):
        return err.reason
    if isinstance(err, e.ProtocolError) and err.args and isinstance(err.args[-1], BodyError):
        return err.args[-1].reason
    if isinstance(err, e.ResponseError):
        text = str(err)
        if "redirect" in text:
            return "too_many_redirects"
        status = [s for s in RETRY_STATUSES if f"{s} error" in text]
        return f"http_{status[0]}" if status else "http_error"
    if isinstance(err, (e.ConnectTimeoutError, e.ReadTimeoutError, TimeoutError)):
        return "timeout"
    if isinstance(err, e.ProtocolError):
        text = str(err)
        return "truncated" if "IncompleteRead" in text or "ended prematurely" in text else "connection_error"
    if isinstance(err, (e.NewConnectionError, e.NameResolutionError, ConnectionError)):
        return "connection_error"
    if isinstance(err, e.SSLError):
        return "ssl_error"
    if isinstance(err, (e.LocationValueError, e.LocationParseError)):
        return "bad_url"
    return f"error_{type(err).__name__}"


def looks_like_image(body: bytes) -> bool:
    return body.startswith(IMAGE_MAGIC)


class Downloader:
    """Fetches ``(md5hash, url)`` pairs into ``out`` with one shared connection pool (thread-safe)."""

    def __init__(self, out: Path, cfg: DownloadConfig, stop: threading.Event | None = None):
        import urllib3

        cfg.check()
        self.out, self.cfg = out, cfg
        self.stop = stop or threading.Event()
        self.timeout = urllib3.Timeout(connect=cfg.connect_timeout, read=cfg.read_timeout)
        self.http = urllib3.PoolManager(num_pools=64, maxsize=cfg.per_host, block=True,
                                        headers={"User-Agent": user_agent(cfg.contact), "Accept": "image/*"})

    def _read_body(self, response) -> bytes:
        start, chunks, size = time.monotonic(), [], 0
        for chunk in response.stream(1 << 16):
            size += len(chunk)
            if size > self.cfg.max_bytes:
                raise BodyError("too_large", f"over {self.cfg.max_bytes} bytes", retry=False)
            if time.monotonic() - start > self.cfg.deadline:
                raise BodyError("too_slow", f"{size} bytes in {self.cfg.deadline:g} s")
            if self.stop.is_set():
                raise BodyError("interrupted", retry=False)
            chunks.append(chunk)
        return b"".join(chunks)

    def _write(self, md5: str, body: bytes) -> None:
        final = self.out / f"{md5}.jpg"
        partial = self.out / f".{md5}.jpg{PARTIAL}{os.getpid()}-{threading.get_ident()}"
        try:
            with open(partial, "wb") as f:
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
            os.replace(partial, final)
        finally:
            partial.unlink(missing_ok=True)

    def fetch(self, md5: str, url: str) -> Outcome:
        """Fetch one image; never raises (an unexpected error becomes the outcome's reason)."""
        from urllib3.exceptions import HTTPError, MaxRetryError, ProtocolError

        retry = make_retry(self.cfg)
        counter = retry.counter
        while True:
            if self.stop.is_set():
                return Outcome(md5, url, False, counter[0], "interrupted")
            response, consumed = None, False
            try:
                response = self.http.request("GET", url, retries=retry, timeout=self.timeout, preload_content=False,
                                             redirect=True)
                retry = response.retries or retry
                if response.status != 200:  # a retried status was counted by the Retry that gave up on it
                    counted = response.status in RETRY_STATUSES
                    return Outcome(md5, url, False, counter[0] + (not counted), f"http_{response.status}")
                body = self._read_body(response)
                consumed = True
                if hashlib.md5(body).hexdigest() != md5:
                    if not looks_like_image(body):
                        kind = response.headers.get("Content-Type", "unknown type").split(";")[0]
                        raise BodyError("not_an_image", kind, retry=False)
                    raise BodyError("md5_mismatch", f"{len(body)} bytes")
                try:
                    self._write(md5, body)
                except OSError as err:  # the disk, not the server: retrying the request would not help
                    return Outcome(md5, url, False, counter[0] + 1, f"write_error: {err.strerror or err}")
                return Outcome(md5, url, True, counter[0] + 1, "", len(body))
            except MaxRetryError as err:
                return Outcome(md5, url, False, counter[0], reason_of(err.reason or err))
            except (BodyError, ProtocolError, HTTPError, OSError) as err:
                if isinstance(err, BodyError) and not err.retry:
                    return Outcome(md5, url, False, counter[0] + 1, err.reason)
                wrapped = err if isinstance(err, (ProtocolError, HTTPError)) else ProtocolError(str(err), err)
                try:  # the same Retry urllib3 used: one budget, one backoff schedule
                    retry = retry.increment("GET", url, error=wrapped)
                except MaxRetryError as final:
                    return Outcome(md5, url, False, counter[0], reason_of(final.reason or err))
                except Exception as final:  # noqa: BLE001  a Retry that will not retry this error re-raises it
                    return Outcome(md5, url, False, counter[0], reason_of(final))
                retry.sleep()
            except Exception as err:  # noqa: BLE001  a bug or an odd URL: reported for this row, the run goes on
                return Outcome(md5, url, False, counter[0] + 1, reason_of(err))
            finally:
                if response is not None:
                    if not consumed:  # a body left unread would be read as the next response on this connection
                        response.close()
                    response.release_conn()


def write_report(out: Path, failures: list[Outcome]) -> Path:
    path = out / REPORT_NAME
    partial = out / f".{REPORT_NAME}{PARTIAL}{os.getpid()}"
    with open(partial, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(REPORT_COLUMNS)
        for o in sorted(failures, key=lambda o: (o.reason, o.md5hash)):
            writer.writerow((o.md5hash, o.url, o.attempts, o.reason))
    os.replace(partial, path)
    return path


@dataclass
class Summary:
    rows: int
    present: int
    fetched: int
    failed: int
    no_url: int
    not_attempted: int
    by_reason: dict[str, int]
    seconds: float
    bytes: int
    report: Path | None
    interrupted: bool = False
    duplicate_rows: int = 0

    def table(self) -> str:
        rate = self.fetched / self.seconds if self.seconds else 0.0
        repeats = f"  ({self.duplicate_rows} repeat an md5hash: fetched once)" if self.duplicate_rows else ""
        lines = [f"rows                   {self.rows}{repeats}",
                 f"already verified       {self.present}",
                 f"fetched and verified   {self.fetched}  ({rate:.1f} images/s, {self.bytes / 2**20:.1f} MiB in {self.seconds:.1f} s)",
                 f"failed                 {self.failed}",
                 f"no url                 {self.no_url}"]
        if self.not_attempted:
            lines.append(f"not attempted          {self.not_attempted}  (interrupted: run the command again to continue)")
        if self.by_reason:
            lines.append("failures by reason:")
            lines += [f"  {reason:<20} {n}" for reason, n in sorted(self.by_reason.items(), key=lambda kv: (-kv[1], kv[0]))]
        if self.report:
            lines.append(f"report: {self.report}")
        return "\n".join(lines)


def download(csv_path: str | Path, out: str | Path, cfg: DownloadConfig | None = None, labels: list[str] | None = None,
             limit: int | None = None, progress: bool = True, stop: threading.Event | None = None) -> Summary:
    """Fetch every row's image into ``out``; return the counts (the report is written even when interrupted:
    set ``stop``, or press Ctrl-C, and the images already verified stay)."""
    from tqdm.auto import tqdm

    cfg = cfg or DownloadConfig()
    cfg.check()
    out = Path(out)
    df = read_rows(csv_path, labels, limit)
    out.mkdir(parents=True, exist_ok=True)
    stale = remove_partials(out)
    if stale:
        log.warning("removed %d partial file(s) an interrupted run left in %s", stale, out)
    todo = plan(df, out, progress=progress)
    if todo.unverified_present:
        log.warning("%d file(s) in %s do not hash to their md5hash; fetching them again (replaced only by verified bytes)",
                    len(todo.unverified_present), out)
    stop = stop or threading.Event()
    downloader = Downloader(out, cfg, stop)
    failures = [Outcome(md5, "", False, 0, "no_url") for md5 in todo.no_url]
    fetched = nbytes = 0
    start = time.monotonic()
    pool = ThreadPoolExecutor(max_workers=cfg.concurrency, thread_name_prefix="skinflow-download")
    bar = tqdm(total=len(todo.fetch), desc=f"downloading to {out}", unit="img", disable=not progress)
    try:
        futures = [pool.submit(downloader.fetch, md5, url) for md5, url in todo.fetch]
        for future in as_completed(futures):
            outcome = future.result()
            if outcome.ok:
                fetched += 1
                nbytes += outcome.bytes
            elif outcome.reason != "interrupted":  # not a failure: fetched next time, not reported
                failures.append(outcome)
            bar.update()
            bar.set_postfix(ok=fetched, failed=len(failures) - len(todo.no_url), refresh=False)
    except KeyboardInterrupt:
        stop.set()  # the workers drop what they are reading (no partial file stays) and the rest never start
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    failed = len(failures) - len(todo.no_url)
    summary = Summary(rows=todo.rows, present=len(todo.present), fetched=fetched, failed=failed,
                      no_url=len(todo.no_url), not_attempted=len(todo.fetch) - fetched - failed,
                      by_reason=dict(Counter(o.reason for o in failures)), seconds=time.monotonic() - start,
                      bytes=nbytes, report=write_report(out, failures), interrupted=stop.is_set(),
                      duplicate_rows=todo.duplicate_rows)
    log.info("download: %s", summary.by_reason)
    return summary


def dry_run(csv_path: str | Path, out: str | Path, labels: list[str] | None = None, limit: int | None = None) -> str:
    """What a download would do, without a request or a file written."""
    out = Path(out)
    df = read_rows(csv_path, labels, limit)
    todo = plan(df, out, progress=False)  # a folder not there yet: every row with a URL is to fetch
    hosts = Counter(urlsplit(url).hostname or "?" for _, url in todo.fetch)
    lines = [f"rows {todo.rows} ({todo.duplicate_rows} repeat an md5hash), already verified in {out}: {len(todo.present)}, "
             f"no url: {len(todo.no_url)}, to fetch: {len(todo.fetch)}"
             + (f" ({len(todo.unverified_present)} present but not verifying)" if todo.unverified_present else "")]
    lines += [f"  {host:<32} {n}" for host, n in hosts.most_common()]
    return "\n".join(lines)


def download_command(argv: list[str]) -> None:
    defaults = DownloadConfig()
    parser = argparse.ArgumentParser(
        prog="python -m skinflow download",
        description="Fetch Fitzpatrick17k's images from the CSV's url column into a folder of <md5hash>.jpg, "
                    "each verified against its md5hash; run it again to resume.")
    parser.add_argument("--csv", required=True, help="the Fitzpatrick17k CSV (md5hash and url columns)")
    parser.add_argument("--out", required=True, help="image folder to fill (created if missing)")
    parser.add_argument("--labels", nargs="+", metavar="LABEL", help="only rows with these labels")
    parser.add_argument("--limit", type=int, help="only the first N rows (after --labels)")
    parser.add_argument("--dry-run", action="store_true", help="print what would be fetched; fetch and write nothing")
    parser.add_argument("--concurrency", type=int, default=defaults.concurrency, help="requests in flight overall (default %(default)s)")
    parser.add_argument("--per-host", type=int, default=defaults.per_host, help="connections to one host (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=defaults.read_timeout, help="seconds to wait for any one read (default %(default)s)")
    parser.add_argument("--connect-timeout", type=float, default=defaults.connect_timeout, help="default %(default)s")
    parser.add_argument("--deadline", type=float, default=defaults.deadline,
                        help="seconds one attempt may take for the whole image (default %(default)s)")
    parser.add_argument("--retries", type=int, default=defaults.retries, help="further attempts per image (default %(default)s)")
    parser.add_argument("--backoff", type=float, default=defaults.backoff, help="backoff factor in seconds (default %(default)s)")
    parser.add_argument("--jitter", type=float, default=defaults.jitter, help="random extra wait, up to this (default %(default)s)")
    parser.add_argument("--retry-after-max", type=float, default=defaults.retry_after_max,
                        help="longest Retry-After wait honoured (default %(default)s)")
    parser.add_argument("--contact", help="an e-mail or URL to put into the User-Agent, for the atlases' operators")
    parser.add_argument("--no-progress", action="store_true")
    ns = parser.parse_args(argv)
    cfg = DownloadConfig(concurrency=ns.concurrency, per_host=ns.per_host, connect_timeout=ns.connect_timeout,
                         read_timeout=ns.timeout, deadline=ns.deadline, retries=ns.retries, backoff=ns.backoff,
                         jitter=ns.jitter, retry_after_max=ns.retry_after_max, contact=ns.contact)
    try:
        cfg.check()
        if ns.dry_run:
            print(dry_run(ns.csv, ns.out, ns.labels, ns.limit))
            return
        stop = threading.Event()
        terminated = []

        def on_sigterm(*_):
            terminated.append(True)
            stop.set()

        previous = signal.signal(signal.SIGTERM, on_sigterm)
        try:
            summary = download(ns.csv, ns.out, cfg, ns.labels, ns.limit, progress=not ns.no_progress, stop=stop)
        finally:
            signal.signal(signal.SIGTERM, previous)
    except (DataError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(summary.table())
    if summary.interrupted:  # the shells' convention: 128 + the signal's number
        sys.exit(128 + (signal.SIGTERM if terminated else signal.SIGINT))
