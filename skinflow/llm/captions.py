"""``python -m skinflow captions``: reference captions for Stage I, made and verified by language models.

SkinFlow's recipe: a vision model describes each image under the eight-field caption schema; a second model
(it may be the same) reads the caption alone, without the image, and names the diagnosis; the caption is kept
when that diagnosis is the gold label or a synonym of it (``skinflow.data.ontology``), else the describer tries
again with the reader's miss as feedback, up to ``--max-attempts`` (default 5). A caption that names the
diagnosis (the gold label, a synonym or an alias of either) is a leak: refused, whatever the reader says.

Output, beside each other:

- ``--out`` (JSONL, the DataModule's ``captions_path``): one line per accepted caption: ``md5hash``, the eight
  fields, ``attempts``, ``verified_as``, the models and ``prompt_version``;
- ``<out>.review.jsonl``: images still refused after the last attempt, with every attempt (caption, reader's
  diagnosis, reason), for an expert to revise;
- ``<out>.prompts.json``: the prompts' texts and versions, the models and the endpoint.

Resumable: images already in either file are skipped, and a line cut short by a kill is dropped on the next start.
Requests go through ``skinflow.llm.client`` (retries, ``Retry-After``, timeouts); ``--concurrency`` images are
worked on at once; tokens and cost are counted; a request that still fails leaves its image for the next run.
"""

from __future__ import annotations

import argparse
import json
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

import pandas as pd

from skinflow.data.formats import CAPTION_FIELDS, PROMPTS, DataError, image_files, parse_answer, parse_caption, read_id_csv
from skinflow.data.ontology import ALIASES, ONTOLOGY, normalize_text, synonym_group
from skinflow.llm.client import EndpointError, Usage, chat, image_data_url, make_client, scrub

log = logging.getLogger(__name__)

CAPTION_PROMPT_VERSION = "skinflow-caption-v1"
VERIFY_PROMPT_VERSION = "skinflow-verify-v1"
CAPTION_SYSTEM = ("You are a dermatologist describing a clinical photograph for a teaching atlas. Describe what is "
                  "visible; never name or hint at the diagnosis.")
CAPTION_INSTRUCTION = (PROMPTS["caption"] + " Write exactly one line per field as 'field: value', inside "
                       "<caption></caption>. Do not name the disease or any diagnosis.")
VERIFY_SYSTEM = "You are a dermatologist. You see no image: only a written description of a skin lesion."
VERIFY_INSTRUCTION = ("Description:\n{caption}\n\nName the single most likely diagnosis for this lesion. Answer as "
                      "<answer>\n1. <diagnosis>\n</answer>")


def prompts_record() -> dict:
    return {"caption": {"version": CAPTION_PROMPT_VERSION, "system": CAPTION_SYSTEM, "instruction": CAPTION_INSTRUCTION},
            "verify": {"version": VERIFY_PROMPT_VERSION, "system": VERIFY_SYSTEM, "instruction": VERIFY_INSTRUCTION}}


def feedback_for(attempt: dict) -> str:
    """What the describer is told about its previous attempt (never the gold label)."""
    if attempt["reason"] == "leak":
        return ("Your previous description named the diagnosis. Describe only what is visible, in the eight fields, "
                "and do not name or hint at any disease.")
    if attempt["reason"] == "malformed":
        return ("Your previous answer did not follow the format. Write <caption></caption> with one 'field: value' "
                "line for each of: " + ", ".join(CAPTION_FIELDS) + ".")
    named = attempt.get("verified_as") or "no recognisable diagnosis"
    return (f"A dermatologist who read only your previous description concluded: {named}. That is not what the image "
            "shows. Describe the distinguishing visible features more precisely, without naming any diagnosis.")


def caption_messages(image_url: str, previous: list[dict]) -> list[dict]:
    content = [{"type": "image_url", "image_url": {"url": image_url}}, {"type": "text", "text": CAPTION_INSTRUCTION}]
    if previous:
        content.append({"type": "text", "text": feedback_for(previous[-1])})
    return [{"role": "system", "content": CAPTION_SYSTEM}, {"role": "user", "content": content}]


def verify_messages(caption_block: str) -> list[dict]:
    return [{"role": "system", "content": VERIFY_SYSTEM},
            {"role": "user", "content": VERIFY_INSTRUCTION.format(caption=caption_block)}]


def leak_terms(label: str) -> list[str]:
    """Normalised names of ``label`` and its synonyms (labels and aliases), longest first."""
    group = synonym_group(label)
    names = set(group) | {alias for alias, target in ALIASES.items() if target in group}
    return sorted({normalize_text(n) for n in names if normalize_text(n)}, key=len, reverse=True)


def leaked(text: str, label: str) -> str | None:
    """The diagnosis name ``text`` contains (as whole words), or ``None``.

    >>> leaked("colour: red\\nshape: a plaque typical of psoriasis", "psoriasis")
    'psoriasis'
    >>> leaked("colour: red\\nsurface: scaly", "psoriasis") is None
    True
    """
    words = f" {normalize_text(text)} "
    return next((term for term in leak_terms(label) if f" {term} " in words), None)


def render_fields(fields: dict[str, str]) -> str:
    return "\n".join(f"{name}: {fields[name]}" for name in CAPTION_FIELDS if fields.get(name))


@dataclass
class CaptionConfig:
    model: str
    verifier_model: str | None = None  # default: the describer
    max_attempts: int = 5
    min_fields: int = 6  # a caption with fewer of the eight fields is malformed
    concurrency: int = 4
    temperature: float | None = 0.7
    max_tokens: int = 400

    @property
    def verifier(self) -> str:
        return self.verifier_model or self.model


def caption_image(client, cfg: CaptionConfig, md5: str, image_path: Path, label: str, usage: Usage,
                  stop: threading.Event | None = None) -> dict:
    """Every attempt at one image until one is accepted or ``max_attempts`` are spent; raises what the client
    raises once its own retries are spent (the image is then left for the next run)."""
    url = image_data_url(image_path)
    attempts: list[dict] = []
    options = {"max_tokens": cfg.max_tokens}
    if cfg.temperature is not None:
        options["temperature"] = cfg.temperature
    for k in range(1, cfg.max_attempts + 1):
        if stop is not None and stop.is_set():
            return {"md5hash": md5, "status": "interrupted", "attempts": attempts}
        text = chat(client, cfg.model, caption_messages(url, attempts), usage, **options)
        fields, status = parse_caption(text)
        attempt = {"attempt": k, "caption": text}
        if status not in ("ok", "unclosed") or len(fields) < cfg.min_fields:
            attempt["reason"] = "malformed"
        elif (term := leaked(render_fields(fields), label)) is not None:
            attempt.update(reason="leak", leaked=term)
        else:
            answer = chat(client, cfg.verifier, verify_messages(render_fields(fields)), usage, max_tokens=64, temperature=0)
            named = parse_answer(answer, k=1).labels
            attempt["verified_as"] = named[0] if named else None
            if named and named[0] in synonym_group(label):
                attempts.append({**attempt, "reason": "accepted"})
                return {"md5hash": md5, "status": "accepted", "fields": fields, "attempts": attempts}
            attempt["reason"] = "verifier_miss"
            attempt["verifier_answer"] = answer
        attempts.append(attempt)
    return {"md5hash": md5, "status": "rejected", "attempts": attempts}


class JsonlAppender:
    """Appends whole lines, flushed and fsynced, under a lock; repairs a line a kill cut short."""

    def __init__(self, path: Path):
        self.path, self.lock = path, threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and path.stat().st_size:
            data = path.read_bytes()
            if not data.endswith(b"\n"):
                keep = data.rfind(b"\n") + 1
                log.warning("%s: dropped a last line cut short by an interrupted run (%d bytes)", path, len(data) - keep)
                with open(path, "r+b") as f:
                    f.truncate(keep)

    def done(self) -> set[str]:
        if not self.path.exists():
            return set()
        out = set()
        for number, line in enumerate(self.path.read_text().splitlines(), start=1):
            if line.strip():
                try:
                    out.add(json.loads(line)["md5hash"])
                except (json.JSONDecodeError, KeyError, TypeError) as err:
                    raise DataError(f"{self.path} line {number}: not a captions record ({err})") from None
        return out

    def append(self, record: dict) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self.lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())


def side_files(out: Path) -> tuple[Path, Path]:
    stem = out.name[: -len(".jsonl")] if out.name.endswith(".jsonl") else out.name
    return out.with_name(f"{stem}.review.jsonl"), out.with_name(f"{stem}.prompts.json")


def read_images(csv_path: Path, image_dir: Path, labels: list[str] | None, limit: int | None) -> tuple[pd.DataFrame, int]:
    df = read_id_csv(csv_path, ("md5hash", "label"), image_dir)
    unknown = ~df["label"].isin(ONTOLOGY.labels)
    if unknown.any():
        row = int(unknown.to_numpy().nonzero()[0][0])
        raise DataError(f"{csv_path} row {row + 2}: label {df['label'].iloc[row]!r} is not a Fitzpatrick17k label")
    df = df.drop_duplicates("md5hash")
    if labels:
        df = df[df["label"].isin(labels)]
    df = df.assign(file=image_files(df["md5hash"], image_dir))
    missing = int(df["file"].isna().sum())
    df = df[df["file"].notna()]
    if limit is not None:
        df = df.head(limit)
    return df.reset_index(drop=True), missing


@dataclass
class CaptionSummary:
    images: int = 0
    skipped_done: int = 0
    missing_images: int = 0
    accepted_at: dict[int, int] = field(default_factory=dict)
    rejected: int = 0
    leak_attempts: int = 0
    rejected_for_leak: int = 0
    verifier_misses: int = 0
    malformed_attempts: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    interrupted: int = 0
    usage: dict = field(default_factory=dict)
    seconds: float = 0.0

    def table(self) -> str:
        accepted = sum(self.accepted_at.values())
        done = accepted + self.rejected
        lines = [f"images to caption      {self.images}  ({self.skipped_done} done before, {self.missing_images} without an image file)",
                 f"accepted               {accepted}" + "".join(f"\n  at attempt {k:<10} {n}" for k, n in sorted(self.accepted_at.items())),
                 f"rejected (to review)   {self.rejected}  ({self.rejected_for_leak} whose last attempt leaked the diagnosis)",
                 f"attempts leaking       {self.leak_attempts}",
                 f"verifier misses        {self.verifier_misses}",
                 f"malformed captions     {self.malformed_attempts}",
                 f"errors (left for the next run) {sum(self.errors.values())}" + "".join(f"\n  {k:<20} {n}" for k, n in sorted(self.errors.items())),
                 f"requests {self.usage.get('requests', 0)}, tokens in {self.usage.get('prompt_tokens', 0)} / out "
                 f"{self.usage.get('completion_tokens', 0)}, cost {self.usage.get('cost', 0):.4f}",
                 f"time {self.seconds:.1f} s ({done / self.seconds if self.seconds else 0:.2f} images/s)"]
        if self.interrupted:
            lines.append(f"interrupted: {self.interrupted} images not finished; run the command again to continue")
        return "\n".join(lines)


FATAL = ("AuthenticationError", "PermissionDeniedError", "NotFoundError", "BadRequestError")


def make_captions(client, csv_path: str | Path, image_dir: str | Path, out: str | Path, cfg: CaptionConfig,
                  labels: list[str] | None = None, limit: int | None = None, progress: bool = True,
                  stop: threading.Event | None = None, usage: Usage | None = None, endpoint: str | None = None) -> CaptionSummary:
    from tqdm.auto import tqdm

    csv_path, image_dir, out = Path(csv_path), Path(image_dir), Path(out)
    df, missing = read_images(csv_path, image_dir, labels, limit)
    review_path, prompts_path = side_files(out)
    accepted_file, review_file = JsonlAppender(out), JsonlAppender(review_path)
    done = accepted_file.done() | review_file.done()
    todo = df[~df["md5hash"].isin(done)]
    prompts_path.write_text(json.dumps({**prompts_record(), "model": cfg.model, "verifier_model": cfg.verifier,
                                        "endpoint": endpoint, "max_attempts": cfg.max_attempts,
                                        "min_fields": cfg.min_fields}, indent=2))
    summary = CaptionSummary(images=len(todo), skipped_done=len(df) - len(todo), missing_images=missing)
    usage = usage or Usage()
    stop = stop or threading.Event()
    fatal: list[BaseException] = []
    start = time.monotonic()

    def work(row) -> dict:
        if stop.is_set():
            return {"md5hash": row.md5hash, "status": "interrupted", "attempts": []}
        try:
            return caption_image(client, cfg, row.md5hash, image_dir / row.file, row.label, usage, stop)
        except Exception as err:  # noqa: BLE001  the client's retries are spent: this image waits for the next run
            name = type(err).__name__
            if name in FATAL:
                fatal.append(err)
                stop.set()
            return {"md5hash": row.md5hash, "status": "error", "error": name,
                    "detail": scrub(str(err), getattr(client, "api_key", None))[:300]}

    bar = tqdm(total=len(todo), desc=f"captions -> {out}", unit="img", disable=not progress)
    pool = ThreadPoolExecutor(max_workers=cfg.concurrency, thread_name_prefix="skinflow-captions")
    accepted_at: Counter = Counter()
    errors: Counter = Counter()
    try:
        futures = [pool.submit(work, row) for row in todo.itertuples()]
        for future in as_completed(futures):
            result = future.result()
            attempts = result.get("attempts", [])
            summary.leak_attempts += sum(a["reason"] == "leak" for a in attempts)
            summary.verifier_misses += sum(a["reason"] == "verifier_miss" for a in attempts)
            summary.malformed_attempts += sum(a["reason"] == "malformed" for a in attempts)
            meta = {"model": cfg.model, "verifier_model": cfg.verifier, "prompt_version": CAPTION_PROMPT_VERSION,
                    "verify_prompt_version": VERIFY_PROMPT_VERSION}
            if result["status"] == "accepted":
                accepted_file.append({"md5hash": result["md5hash"], **result["fields"], "attempts": len(attempts),
                                      "verified_as": attempts[-1]["verified_as"], **meta})
                accepted_at[len(attempts)] += 1
            elif result["status"] == "rejected":
                review_file.append({"md5hash": result["md5hash"], "label": df.set_index("md5hash").at[result["md5hash"], "label"],
                                    "attempts": attempts, **meta})
                summary.rejected += 1
                summary.rejected_for_leak += attempts[-1]["reason"] == "leak"
            elif result["status"] == "error":
                errors[result["error"]] += 1
                if result["error"] not in FATAL:  # a fatal error ends the run with one line instead
                    log.warning("captions: %s failed (%s: %s); left for the next run", result["md5hash"], result["error"],
                                result["detail"])
            bar.update()  # an interrupted image is counted below, from what is left
    except KeyboardInterrupt:
        stop.set()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    summary.interrupted = len(todo) - sum(accepted_at.values()) - summary.rejected - sum(errors.values())
    summary.accepted_at, summary.errors = dict(accepted_at), dict(errors)
    summary.usage, summary.seconds = usage.as_dict(), time.monotonic() - start
    if fatal:
        raise EndpointError(f"the endpoint refused the request ({type(fatal[0]).__name__}: {str(fatal[0])[:200]}); "
                            "check --base-url, --model and the API key")
    return summary


def captions_command(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m skinflow captions",
        description="Make Stage I reference captions with a vision model behind an OpenAI-compatible endpoint, "
                    "keeping those from which a second model recovers the diagnosis; resumable.")
    parser.add_argument("--csv", required=True, help="label CSV (md5hash, label)")
    parser.add_argument("--image-dir", required=True, help="folder of <md5hash>.jpg|png")
    parser.add_argument("--out", required=True, help="captions JSONL to append to (the DataModule's captions_path)")
    parser.add_argument("--base-url", help="the endpoint, e.g. http://localhost:8000/v1 for vLLM (default: api.openai.com)")
    parser.add_argument("--model", required=True, help="the vision model that writes captions")
    parser.add_argument("--verifier-model", help="the model that diagnoses from the caption alone (default: --model)")
    parser.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the key (default %(default)s)")
    parser.add_argument("--max-attempts", type=int, default=5)
    parser.add_argument("--min-fields", type=int, default=6, help="fewer of the eight fields: a malformed caption (default %(default)s)")
    parser.add_argument("--concurrency", type=int, default=4, help="images worked on at once (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request (default %(default)s)")
    parser.add_argument("--retries", type=int, default=5, help="client retries per request (default %(default)s)")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--price-in", type=float, default=0.0, help="price per million prompt tokens, for the cost line")
    parser.add_argument("--price-out", type=float, default=0.0, help="price per million completion tokens")
    parser.add_argument("--labels", nargs="+", metavar="LABEL")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--no-progress", action="store_true")
    ns = parser.parse_args(argv)
    if ns.max_attempts < 1 or ns.concurrency < 1 or not 0 <= ns.min_fields <= len(CAPTION_FIELDS):
        parser.error("--max-attempts and --concurrency need at least 1, --min-fields 0..8")
    cfg = CaptionConfig(model=ns.model, verifier_model=ns.verifier_model, max_attempts=ns.max_attempts,
                        min_fields=ns.min_fields, concurrency=ns.concurrency, temperature=ns.temperature)
    stop = threading.Event()
    terminated: list[bool] = []

    def on_sigterm(*_):
        terminated.append(True)
        stop.set()

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        client = make_client(ns.base_url, ns.api_key_env, ns.timeout, ns.retries)
        summary = make_captions(client, ns.csv, ns.image_dir, ns.out, cfg, ns.labels, ns.limit, not ns.no_progress, stop,
                                Usage(ns.price_in, ns.price_out), endpoint=ns.base_url)
    except (DataError, EndpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(summary.table())
    if stop.is_set() and summary.interrupted:
        sys.exit(128 + (signal.SIGTERM if terminated else signal.SIGINT))
    answered = sum(summary.accepted_at.values()) + summary.rejected
    if summary.images and not answered:
        print(f"error: none of the {summary.images} images got a caption or a review entry: every request failed "
              f"({', '.join(f'{k} {n}' for k, n in sorted(summary.errors.items()))}); nothing was written, run again "
              "once the endpoint answers", file=sys.stderr)
        sys.exit(1)
