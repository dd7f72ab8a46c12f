"""``python -m skinflow judge --run-id RUN``: grade a run's ranked answers with an LLM judge, as SkinFlow reports.

The kit's own grading goes through its ontology (exact labels, the 114 -> 9 -> 3 tree). SkinFlow's headline
numbers come from an LLM judge under a permissive clinical hierarchy; this command adds those numbers beside the
kit's, to the same MLflow run.

- Input: the run's ``predictions/test.json`` table (every test image's gold label and parsed ranked answer; the
  stages log it when they test) or ``--table`` for another (``predictions/start/test.json``).
- For each image the judge is told the hierarchy (a synonym or the same disease under another name is correct;
  a near miss whose treatment would be the same is correct; a different disease is not) and asked, as JSON,
  whether the first answer and any of the six are correct, and whether the answer is a dangerous miss (a
  malignant or urgent lesion answered as benign or harmless).
- ``--runs`` k requests per image (default 3) are aggregated by majority per field; a malformed reply is left
  out of the vote (ties and images with no valid reply count as not correct / not dangerous, and are counted).
- Logged to the run: ``judge/top1``, ``judge/top6``, ``judge/dangerous_miss`` (shares of the judged images),
  ``judge/kappa_top1`` and ``judge/kappa_top6`` (Cohen's kappa between the judge and the ontology grading:
  an answer is ontology-correct when it names the gold label or a synonym), ``judge/images``,
  ``judge/unjudged``; the per-image verdicts as ``judge/verdicts.json``; tags for the model and prompt version.
- Answers are cached on disk by (prompt version, model, input, run index): a re-run costs nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from skinflow.data.formats import split_parsed
from skinflow.data.ontology import ONTOLOGY, synonym_group
from skinflow.llm.client import EndpointError, Usage, chat, make_client

log = logging.getLogger(__name__)

JUDGE_PROMPT_VERSION = "skinflow-judge-v1"
JUDGE_SYSTEM = ("You are a board-certified dermatologist grading a model's differential diagnosis against the "
                "reference diagnosis of a clinical photograph.")
JUDGE_INSTRUCTION = """Reference diagnosis: {label} (group: {nine}; {three}).
Model's ranked differential, most likely first:
{answers}

Grade under this clinical hierarchy:
- A synonym, a spelling variant or the same disease under another name counts as correct.
- A near miss counts as correct when it is the same disease family and the treatment would be the same.
- A different disease, or a vaguer category than the reference, is not correct.
- A dangerous miss: the reference is malignant or urgent and the first answer is benign or harmless.

Reply with JSON only: {{"top1": true|false, "top6": true|false, "dangerous_miss": true|false}}
where top1 says whether the first answer is correct and top6 whether any of the answers is."""
FIELDS = ("top1", "top6", "dangerous_miss")


def judge_messages(label: str, answers: list[str]) -> list[dict]:
    listing = "\n".join(f"{k}. {a}" for k, a in enumerate(answers[:6], start=1)) or "(no answer)"
    text = JUDGE_INSTRUCTION.format(label=label, nine=ONTOLOGY.nine(label), three=ONTOLOGY.three(label), answers=listing)
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": text}]


def parse_verdict(text: str) -> dict[str, bool] | None:
    """The judge's three booleans, or ``None`` when the reply holds no such JSON object.

    >>> parse_verdict('Sure. {"top1": false, "top6": true, "dangerous_miss": false}')
    {'top1': False, 'top6': True, 'dangerous_miss': False}
    >>> parse_verdict('{"top1": "maybe"}') is None
    True
    """
    for match in re.finditer(r"\{[^{}]*\}", text or ""):
        try:
            obj = json.loads(match.group(0))
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and all(isinstance(obj.get(f), bool) for f in FIELDS):
            return {f: obj[f] for f in FIELDS}
    return None


def majority(verdicts: list[dict[str, bool] | None]) -> dict[str, bool] | None:
    """Per field, true when more than half of the valid verdicts say so (a tie is false); ``None`` if none is valid.

    >>> majority([{"top1": True, "top6": True, "dangerous_miss": False}, None,
    ...           {"top1": False, "top6": True, "dangerous_miss": True}])
    {'top1': False, 'top6': True, 'dangerous_miss': False}
    """
    valid = [v for v in verdicts if v is not None]
    if not valid:
        return None
    return {f: sum(v[f] for v in valid) * 2 > len(valid) for f in FIELDS}


def cohen_kappa(a: list[bool], b: list[bool]) -> float:
    """Cohen's kappa of two binary ratings of the same items; ``nan`` when chance agreement is total.

    >>> round(cohen_kappa([1, 1, 0, 0, 1, 0], [1, 0, 0, 0, 1, 1]), 4)
    0.3333
    """
    n = len(a)
    if n == 0 or n != len(b):
        return float("nan")
    observed = sum(x == y for x, y in zip(a, b)) / n
    pa, pb = sum(map(bool, a)) / n, sum(map(bool, b)) / n
    expected = pa * pb + (1 - pa) * (1 - pb)
    return float("nan") if expected == 1 else (observed - expected) / (1 - expected)


def ontology_correct(label: str, answers: list[str], k: int) -> bool:
    return any(a in synonym_group(label) for a in answers[:k])


class Cache:
    """One JSON file per (prompt version, model, input, run index) under ``folder``."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.hits = 0

    def key(self, model: str, messages: list[dict], run: int) -> str:
        blob = json.dumps([JUDGE_PROMPT_VERSION, model, messages, run], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def get(self, key: str) -> str | None:
        path = self.folder / f"{key}.json"
        if path.is_file():
            self.hits += 1
            return json.loads(path.read_text())["reply"]
        return None

    def put(self, key: str, reply: str) -> None:
        path = self.folder / f"{key}.json"
        partial = path.with_name(f".{path.name}.partial-{os.getpid()}-{id(reply)}")
        partial.write_text(json.dumps({"reply": reply, "prompt_version": JUDGE_PROMPT_VERSION}))
        os.replace(partial, path)


@dataclass
class JudgeResult:
    metrics: dict[str, float]
    verdicts: list[dict]
    usage: dict
    cache_hits: int
    seconds: float


def judge_rows(client, model: str, rows: list[dict], runs: int = 3, cache: Cache | None = None, concurrency: int = 4,
               usage: Usage | None = None, temperature: float | None = None, progress: bool = True) -> JudgeResult:
    """Grade ``rows`` (``label``, ``parsed``: ranked labels joined by ``"; "``) ``runs`` times each; aggregate."""
    from tqdm.auto import tqdm

    usage = usage or Usage()
    start = time.monotonic()
    answers = [split_parsed(row.get("parsed")) for row in rows]
    jobs = [(i, r, judge_messages(row["label"], answers[i])) for i, row in enumerate(rows) for r in range(runs)]

    def ask(job) -> tuple[int, int, dict | None]:
        i, r, messages = job
        key = cache.key(model, messages, r) if cache else None
        reply = cache.get(key) if cache else None
        if reply is None:
            options = {"max_tokens": 80}
            if temperature is not None:
                options["temperature"] = temperature
            reply = chat(client, model, messages, usage, **options)
            if cache and parse_verdict(reply) is not None:  # a malformed reply is asked again next time
                cache.put(key, reply)
        return i, r, parse_verdict(reply)

    replies: dict[int, list] = {i: [] for i in range(len(rows))}
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for i, _, verdict in tqdm(pool.map(ask, jobs), total=len(jobs), desc="judging", unit="req", disable=not progress):
            replies[i].append(verdict)
    verdicts, unjudged, malformed = [], 0, 0
    for i, row in enumerate(rows):
        malformed += sum(v is None for v in replies[i])
        vote = majority(replies[i])
        unjudged += vote is None
        vote = vote or {f: False for f in FIELDS}
        verdicts.append({"md5hash": row.get("md5hash", ""), "label": row["label"], "parsed": row.get("parsed", ""),
                         **{f"judge_{f}": vote[f] for f in FIELDS},
                         "ontology_top1": ontology_correct(row["label"], answers[i], 1),
                         "ontology_top6": ontology_correct(row["label"], answers[i], 6),
                         "valid_runs": sum(v is not None for v in replies[i])})
    n = len(verdicts)
    metrics = {"judge/images": float(n), "judge/unjudged": float(unjudged), "judge/malformed_replies": float(malformed)}
    if n:
        for f in FIELDS:
            metrics[f"judge/{f}"] = sum(v[f"judge_{f}"] for v in verdicts) / n
        for k in ("top1", "top6"):
            kappa = cohen_kappa([v[f"judge_{k}"] for v in verdicts], [v[f"ontology_{k}"] for v in verdicts])
            if kappa == kappa:  # not nan
                metrics[f"judge/kappa_{k}"] = kappa
    return JudgeResult(metrics, verdicts, usage.as_dict(), cache.hits if cache else 0, time.monotonic() - start)


def read_predictions(client, run_id: str, table: str) -> list[dict]:
    import tempfile

    from mlflow.exceptions import MlflowException

    try:
        client.get_run(run_id)
    except MlflowException:
        raise EndpointError(f"no run {run_id!r} in {client.tracking_uri}: check --run-id and --tracking-uri") from None

    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, table, tmp)
        except Exception as err:  # noqa: BLE001  MLflow raises several kinds for a missing artifact
            raise EndpointError(f"run {run_id} has no {table} ({type(err).__name__}): test the run first "
                                "(python -m skinflow test ...), or name another table with --table") from None
        data = json.loads(Path(path).read_text())
    columns, values = data["columns"], data["data"]
    for needed in ("label", "parsed"):
        if needed not in columns:
            raise EndpointError(f"{table} of run {run_id} has no {needed!r} column (columns: {columns})")
    return [dict(zip(columns, row)) for row in values]


def judge_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m skinflow judge",
                                     description="Grade a run's test answers with an LLM judge; log judge/* to the run.")
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--tracking-uri", help="the MLflow store (default: the kit's, sqlite:///mlruns/mlflow.db)")
    parser.add_argument("--table", default="predictions/test.json", help="the run's prediction table (default %(default)s)")
    parser.add_argument("--base-url", help="the endpoint (default: api.openai.com)")
    parser.add_argument("--model", required=True)
    parser.add_argument("--api-key-env", default="OPENAI_API_KEY")
    parser.add_argument("--runs", type=int, default=3, help="judgements per image, majority-voted (default %(default)s)")
    parser.add_argument("--temperature", type=float, help="the judge's sampling temperature (default: the endpoint's)")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--retries", type=int, default=5)
    parser.add_argument("--cache-dir", default=".cache/skinflow/judge", help="replies cached here (default %(default)s)")
    parser.add_argument("--price-in", type=float, default=0.0)
    parser.add_argument("--price-out", type=float, default=0.0)
    parser.add_argument("--no-progress", action="store_true")
    return parser


def judge_command(argv: list[str]) -> None:
    parser = judge_parser()
    ns = parser.parse_args(argv)
    if ns.runs < 1 or ns.concurrency < 1:
        parser.error("--runs and --concurrency need at least 1")
    from skinflow.tracking.store import DEFAULT_TRACKING_URI, StoreError, client_for_existing  # MLflow: after --help

    try:
        store = client_for_existing(ns.tracking_uri or DEFAULT_TRACKING_URI)
        rows = read_predictions(store, ns.run_id, ns.table)
        client = make_client(ns.base_url, ns.api_key_env, ns.timeout, ns.retries)
        result = judge_rows(client, ns.model, rows, ns.runs, Cache(Path(ns.cache_dir)), ns.concurrency,
                            Usage(ns.price_in, ns.price_out), ns.temperature, not ns.no_progress)
    except (StoreError, EndpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except Exception as err:  # noqa: BLE001  the client's retries are spent: one line, nothing logged to the run
        print(f"error: the judge endpoint failed ({type(err).__name__}: {str(err)[:200]}); nothing was logged "
              "(cached replies are kept: run again to continue)", file=sys.stderr)
        sys.exit(1)
    for key, value in result.metrics.items():
        store.log_metric(ns.run_id, key, value)
    store.set_tag(ns.run_id, "skinflow.judge.model", ns.model)
    store.set_tag(ns.run_id, "skinflow.judge.prompt_version", JUDGE_PROMPT_VERSION)
    store.set_tag(ns.run_id, "skinflow.judge.runs", str(ns.runs))
    table = {key: [v[key] for v in result.verdicts] for key in result.verdicts[0]} if result.verdicts else {}
    if table:
        store.log_table(ns.run_id, data=table, artifact_file="judge/verdicts.json")
    for key, value in result.metrics.items():
        print(f"{key:<24} {value:.4f}" if not key.endswith(("images", "unjudged", "replies")) else f"{key:<24} {int(value)}")
    print(f"requests {result.usage['requests']} ({result.cache_hits} answered from the cache), tokens in "
          f"{result.usage['prompt_tokens']} / out {result.usage['completion_tokens']}, cost {result.usage['cost']:.4f}, "
          f"{result.seconds:.1f} s; logged to run {ns.run_id}")
