"""The LLM judge in-process: what it asks, what it records per image, the numbers it logs to a run and what the
command accepts (the subprocess tests in test_llm.py check the same command from outside). Seconds in all."""

from __future__ import annotations

import json
import math
import os
import re
import threading
import time
from collections import Counter
from types import SimpleNamespace

import pytest

from skinflow.llm import judge as judge_module
from skinflow.llm.judge import (FIELDS, JUDGE_INSTRUCTION, JUDGE_PROMPT_VERSION, JUDGE_SYSTEM, Cache, cohen_kappa,
                                judge_command, judge_messages, judge_parser, judge_rows, parse_verdict, read_predictions)

KEY_ENV = "SKINFLOW_JUDGE_TEST_KEY"


def verdict(top1: bool, top6: bool, danger: bool = False) -> str:
    return json.dumps({"top1": top1, "top6": top6, "dangerous_miss": danger})


class Judge:
    """An OpenAI-shaped client: ``replies[first answer]`` lists the replies to that image's successive requests."""

    api_key = "k"

    def __init__(self, replies: dict[str, list[str]], delay: float = 0.0):
        self.replies, self.delay = replies, delay
        self.requests: list[dict] = []
        self.lock, self.busy, self.peak, self.seen = threading.Lock(), 0, 0, Counter()
        self.chat = SimpleNamespace(completions=SimpleNamespace(create=self.create))

    def create(self, **kwargs):
        user = kwargs["messages"][1]["content"]
        first = user.split("1. ")[1].split("\n")[0] if "\n1. " in user else "(none)"
        with self.lock:
            self.requests.append(kwargs)
            self.busy += 1
            self.peak = max(self.peak, self.busy)
            self.seen[first] += 1
            text = self.replies[first][(self.seen[first] - 1) % len(self.replies[first])]
        time.sleep(self.delay)
        with self.lock:
            self.busy -= 1
        return SimpleNamespace(usage=SimpleNamespace(prompt_tokens=100, completion_tokens=10),
                               choices=[SimpleNamespace(message=SimpleNamespace(content=text))])


def test_the_judge_is_asked_with_the_reference_its_groups_and_at_most_six_answers():
    answers = ["eczema", "psoriasis", "acne", "rosacea", "melanoma", "vitiligo", "scabies"]
    messages = judge_messages("psoriasis", answers)
    listing = "\n".join(f"{k}. {a}" for k, a in enumerate(answers[:6], start=1))
    assert messages == [{"role": "system", "content": JUDGE_SYSTEM},
                        {"role": "user", "content": JUDGE_INSTRUCTION.format(label="psoriasis", nine="inflammatory",
                                                                             three="non-neoplastic", answers=listing)}]
    assert "7. scabies" not in messages[1]["content"]
    assert messages[1]["content"].startswith("Reference diagnosis: psoriasis (group: inflammatory; non-neoplastic).")
    empty = judge_messages("melanoma", [])[1]["content"]
    assert "(group: malignant melanoma; malignant)" in empty and "most likely first:\n(no answer)\n" in empty


ROWS = [
    {"md5hash": "a", "label": "psoriasis", "parsed": "psoriasis; eczema"},
    {"md5hash": "b", "label": "melanoma", "parsed": "nevocytic nevus; acne; rosacea; eczema; vitiligo; scabies; malignant melanoma"},
    {"label": "acne", "parsed": "rosacea"},  # no md5hash column in an older table
    {"md5hash": "d", "label": "eczema"},  # no answer parsed
]
REPLIES = {"psoriasis": [verdict(True, True), "not json", verdict(True, True)],
           "nevocytic nevus": [verdict(False, True, True), verdict(False, False, True), verdict(True, True)],
           "rosacea": ["nope"],
           "(none)": [verdict(False, False), verdict(False, True), verdict(False, True)]}


def test_each_image_gets_its_verdict_its_ontology_grading_and_its_count_of_valid_replies():
    client = Judge(REPLIES)
    result = judge_rows(client, "j", ROWS, runs=3, concurrency=1, progress=False)
    assert result.verdicts == [
        {"md5hash": "a", "label": "psoriasis", "parsed": "psoriasis; eczema", "judge_top1": True, "judge_top6": True,
         "judge_dangerous_miss": False, "ontology_top1": True, "ontology_top6": True, "valid_runs": 2},
        # the gold label's synonym is the seventh answer: not in the top six
        {"md5hash": "b", "label": "melanoma", "parsed": ROWS[1]["parsed"], "judge_top1": False, "judge_top6": True,
         "judge_dangerous_miss": True, "ontology_top1": False, "ontology_top6": False, "valid_runs": 3},
        {"md5hash": "", "label": "acne", "parsed": "rosacea", "judge_top1": False, "judge_top6": False,
         "judge_dangerous_miss": False, "ontology_top1": False, "ontology_top6": False, "valid_runs": 0},
        {"md5hash": "d", "label": "eczema", "parsed": "", "judge_top1": False, "judge_top6": True,
         "judge_dangerous_miss": False, "ontology_top1": False, "ontology_top6": False, "valid_runs": 3},
    ]
    m = result.metrics
    assert (m["judge/images"], m["judge/unjudged"], m["judge/malformed_replies"]) == (4.0, 1.0, 4.0)
    assert (m["judge/top1"], m["judge/top6"], m["judge/dangerous_miss"]) == (0.25, 0.75, 0.25)
    assert m["judge/kappa_top1"] == 1.0  # judge and ontology agree on every first answer
    assert m["judge/kappa_top6"] == pytest.approx(cohen_kappa([1, 1, 0, 1], [1, 0, 0, 0]))
    assert result.usage["requests"] == 12 and result.usage["prompt_tokens"] == 1200 and result.cache_hits == 0
    assert 0 <= result.seconds < 30
    assert all(r["model"] == "j" and r["max_tokens"] == 80 and "temperature" not in r for r in client.requests)


def test_the_temperature_usage_and_concurrency_asked_for_are_used():
    from skinflow.llm.client import Usage

    client = Judge({k: [verdict(True, True)] for k in REPLIES}, delay=0.03)
    usage = Usage(price_in=1.0, price_out=2.0)
    result = judge_rows(client, "j", ROWS, runs=2, concurrency=3, usage=usage, temperature=0.2, progress=False)
    assert {r["temperature"] for r in client.requests} == {0.2} and len(client.requests) == 8
    assert client.peak == 3
    assert usage.as_dict()["requests"] == 8 == result.usage["requests"]  # the caller's Usage is the one counted
    assert result.usage["cost"] == pytest.approx((8 * 100 * 1.0 + 8 * 10 * 2.0) / 1e6)


def test_by_default_three_judgements_per_image_four_at_a_time():
    client = Judge({k: [verdict(True, True)] for k in REPLIES}, delay=0.03)
    result = judge_rows(client, "j", ROWS, progress=False)
    assert len(client.requests) == 12 and client.peak == 4 and result.metrics["judge/images"] == 4


def test_the_progress_bar_counts_requests(capsys):
    judge_rows(Judge({k: [verdict(True, True)] for k in REPLIES}), "j", ROWS[:2], runs=2, concurrency=1)
    err = capsys.readouterr().err
    assert re.search(r"(^|\r)judging: ", err) and "4/4" in err and "req/s" in err
    judge_rows(Judge({k: [verdict(True, True)] for k in REPLIES}), "j", ROWS[:2], runs=2, concurrency=1, progress=False)
    assert capsys.readouterr().err == ""


def test_the_cache_keys_on_content_not_key_order_and_stores_the_prompt_version(tmp_path):
    cache = Cache(tmp_path / "a" / "b")  # folders made
    assert (tmp_path / "a" / "b").is_dir()
    one = [{"role": "user", "content": "x"}]
    reordered = [{"content": "x", "role": "user"}]
    assert cache.key("m", one, 0) == cache.key("m", reordered, 0)
    assert len({cache.key("m", one, 0), cache.key("m2", one, 0), cache.key("m", one, 1),
                cache.key("m", [{"role": "user", "content": "y"}], 0)}) == 4
    key = cache.key("m", one, 0)
    assert cache.get(key) is None and cache.hits == 0
    cache.put(key, "reply text")
    assert json.loads((tmp_path / "a" / "b" / f"{key}.json").read_text()) == {"reply": "reply text",
                                                                            "prompt_version": JUDGE_PROMPT_VERSION}
    assert cache.get(key) == "reply text" and cache.hits == 1
    assert sorted(p.name for p in (tmp_path / "a" / "b").iterdir()) == [f"{key}.json"]  # no partial file left
    # judge_rows answers from it and counts the hits
    client = Judge({k: [verdict(True, True)] for k in REPLIES})
    judge_rows(client, "j", ROWS[:1], runs=2, cache=Cache(tmp_path / "c"), concurrency=1, progress=False)
    again = judge_rows(client, "j", ROWS[:1], runs=2, cache=Cache(tmp_path / "c"), concurrency=1, progress=False)
    assert len(client.requests) == 2 and again.cache_hits == 2 and again.usage["requests"] == 0
    other = judge_rows(client, "another-judge", ROWS[:1], runs=2, cache=Cache(tmp_path / "c"), concurrency=1,
                       progress=False)
    assert other.cache_hits == 0 and len(client.requests) == 4  # another model's replies are its own


def test_kappa_and_verdict_edges():
    assert math.isnan(cohen_kappa([], []))
    assert math.isnan(cohen_kappa([True, False], [True]))
    assert cohen_kappa([True], [False]) == 0.0  # one item: defined (chance agreement 0)
    assert math.isnan(cohen_kappa([True, True], [True, True]))  # chance agreement total
    assert cohen_kappa([True, False], [True, False]) == 1.0 and cohen_kappa([True, False], [False, True]) == -1.0
    assert parse_verdict(None) is None and parse_verdict("") is None
    assert parse_verdict('{"top1": tru} then {"top1": true, "top6": false, "dangerous_miss": true}') == {
        "top1": True, "top6": False, "dangerous_miss": True}
    assert FIELDS == ("top1", "top6", "dangerous_miss")


def test_the_command_line_defaults():
    ns = judge_parser().parse_args(["--run-id", "r", "--model", "m"])
    assert vars(ns) == {"run_id": "r", "tracking_uri": None, "table": "predictions/test.json", "base_url": None,
                        "model": "m", "api_key_env": "OPENAI_API_KEY", "runs": 3, "temperature": None,
                        "concurrency": 4, "timeout": 60.0, "retries": 5, "cache_dir": ".cache/skinflow/judge",
                        "price_in": 0.0, "price_out": 0.0, "no_progress": False}
    typed = judge_parser().parse_args(["--run-id", "r", "--model", "m", "--runs", "2", "--temperature", "0.5",
                                       "--concurrency", "2", "--timeout", "3", "--retries", "1", "--price-in", "1",
                                       "--price-out", "2", "--no-progress"])
    assert (typed.runs, typed.temperature, typed.concurrency, typed.timeout, typed.retries) == (2, 0.5, 2, 3.0, 1)
    assert (typed.price_in, typed.price_out, typed.no_progress) == (1.0, 2.0, True)
    for missing in (["--model", "m"], ["--run-id", "r"]):
        with pytest.raises(SystemExit):
            judge_parser().parse_args(missing)


def test_help_states_what_each_option_does_and_its_default(monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # no wrapping
    text = " ".join(judge_parser().format_help().split())
    assert text.startswith("usage: python -m skinflow judge ")
    for phrase in ["[--no-progress] Grade a run's test answers with an LLM judge; log judge/* to the run. options:",
                   "--tracking-uri TRACKING_URI the MLflow store (default: the kit's, sqlite:///mlruns/mlflow.db)",
                   "--table TABLE the run's prediction table (default predictions/test.json)",
                   "--base-url BASE_URL the endpoint (default: api.openai.com)",
                   "--runs RUNS judgements per image, majority-voted (default 3)",
                   "--temperature TEMPERATURE the judge's sampling temperature (default: the endpoint's)",
                   "--cache-dir CACHE_DIR replies cached here (default .cache/skinflow/judge)"]:
        assert phrase in text, phrase


@pytest.mark.parametrize("runs, concurrency", [(0, 1), (1, 0)])
def test_runs_and_concurrency_below_one_are_refused(runs, concurrency, capsys):
    with pytest.raises(SystemExit) as refused:
        judge_command(["--run-id", "r", "--model", "m", "--runs", str(runs), "--concurrency", str(concurrency)])
    assert refused.value.code == 2 and capsys.readouterr().err.endswith(
        "judge: error: --runs and --concurrency need at least 1\n")


def test_a_store_that_does_not_exist_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as missing:
        judge_command(["--run-id", "r", "--model", "m", "--tracking-uri", f"sqlite:///{tmp_path}/none/mlflow.db"])
    err = capsys.readouterr().err
    assert missing.value.code == 2 and err.startswith("error: no MLflow store at ") and err.count("\n") == 1


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """An MLflow store with one run that logged a predictions table, and one that did not."""
    from mlflow import MlflowClient

    folder = tmp_path_factory.mktemp("judge_store")
    uri = f"sqlite:///{folder}/mlflow.db"
    client = MlflowClient(uri)
    experiment = client.create_experiment("judge-test", artifact_location=str(folder / "artifacts"))
    run = client.create_run(experiment).info.run_id
    columns = ["md5hash", "label", "parsed"]
    client.log_table(run, data={c: [r.get(c, "") for r in ROWS] for c in columns}, artifact_file="predictions/test.json")
    client.log_table(run, data={"md5hash": ["a"], "label": ["psoriasis"]}, artifact_file="predictions/nolabel.json")
    bare = client.create_run(experiment).info.run_id
    return SimpleNamespace(uri=uri, client=client, run=run, bare=bare, folder=folder)


def test_read_predictions_returns_the_rows_and_names_what_is_missing(store):
    from skinflow.llm.client import EndpointError

    rows = read_predictions(store.client, store.run, "predictions/test.json")
    assert rows == [{c: r.get(c, "") for c in ("md5hash", "label", "parsed")} for r in ROWS]
    with pytest.raises(EndpointError, match=r"^run \w+ has no predictions/test.json \(MlflowException\): test the run first "
                                            r"\(python -m skinflow test ...\), or name another table with --table$"):
        read_predictions(store.client, store.bare, "predictions/test.json")
    with pytest.raises(EndpointError, match=r"predictions/nolabel.json of run \w+ has no 'parsed' column"):
        read_predictions(store.client, store.run, "predictions/nolabel.json")
    with pytest.raises(EndpointError, match=r"no run 'nope' in sqlite:///"):
        read_predictions(store.client, "nope", "predictions/test.json")


def record_calls(monkeypatch, name: str) -> list[tuple]:
    """The positional arguments of every call the judge module makes to its ``name``, which still runs."""
    calls, real = [], getattr(judge_module, name)

    def recording(*args):
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(judge_module, name, recording)
    return calls


def test_the_command_logs_the_judges_numbers_tags_and_verdicts_to_the_run(store, tmp_path, monkeypatch, capsys):
    from skinflow.llm.fake_server import FakeOpenAI

    made = record_calls(monkeypatch, "make_client")
    calls = record_calls(monkeypatch, "judge_rows")

    def reply(request):
        user = request["messages"][1]["content"]
        first = user.split("1. ")[1].split("\n")[0] if "\n1. " in user else "(none)"
        return REPLIES[first][0]

    with FakeOpenAI(reply) as server:
        monkeypatch.setenv(KEY_ENV, server.api_key)
        judge_command(["--run-id", store.run, "--tracking-uri", store.uri, "--base-url", server.base_url, "--model", "jm",
                       "--api-key-env", KEY_ENV, "--runs", "1", "--temperature", "0.3", "--concurrency", "2",
                       "--timeout", "7", "--retries", "1", "--cache-dir", str(tmp_path / "cache"), "--price-in", "1",
                       "--price-out", "2", "--no-progress"])
        sent = [request for _, request in server.requests]
    assert made == [(server.base_url, KEY_ENV, 7.0, 1)]
    [(_, model, rows, runs, cache, concurrency, usage, temperature, progress)] = calls
    assert (model, len(rows), runs, concurrency, temperature, progress) == ("jm", 4, 1, 2, 0.3, False)
    assert (usage.price_in, usage.price_out, cache.folder) == (1.0, 2.0, tmp_path / "cache")
    assert len(sent) == 4 and {r["model"] for r in sent} == {"jm"} and {r["temperature"] for r in sent} == {0.3}
    assert len(list((tmp_path / "cache").glob("*.json"))) == 3  # the three parseable replies
    run = store.client.get_run(store.run).data
    assert run.metrics["judge/images"] == 4 and run.metrics["judge/top1"] == 0.25 and run.metrics["judge/unjudged"] == 1
    assert run.metrics["judge/dangerous_miss"] == 0.25 and run.metrics["judge/malformed_replies"] == 1
    assert {k: v for k, v in run.tags.items() if k.startswith("skinflow.judge")} == {
        "skinflow.judge.model": "jm", "skinflow.judge.prompt_version": JUDGE_PROMPT_VERSION, "skinflow.judge.runs": "1"}
    table = json.loads(open(store.client.download_artifacts(store.run, "judge/verdicts.json", str(tmp_path))).read())
    assert table["columns"][:3] == ["md5hash", "label", "parsed"] and [row[0] for row in table["data"]] == ["a", "b", "", "d"]
    out = capsys.readouterr().out.splitlines()
    assert "judge/images             4" in out and "judge/top1               0.2500" in out
    assert "judge/unjudged           1" in out and "judge/malformed_replies  1" in out  # counts print as counts
    assert out[-1].startswith("requests 4 (0 answered from the cache), tokens in ")
    assert out[-1].endswith(f"; logged to run {store.run}") and "cost 0.0" in out[-1]


def test_a_failing_endpoint_is_one_line_and_nothing_is_logged(store, tmp_path, monkeypatch, capsys):
    from skinflow.llm.fake_server import FakeOpenAI, Fault

    with FakeOpenAI(lambda request: Fault(500)) as server:
        monkeypatch.setenv(KEY_ENV, server.api_key)
        with pytest.raises(SystemExit) as failed:
            judge_command(["--run-id", store.bare, "--tracking-uri", store.uri, "--table", "predictions/test.json",
                           "--base-url", server.base_url, "--model", "jm", "--api-key-env", KEY_ENV, "--no-progress"])
    assert failed.value.code == 2 and "has no predictions/test.json" in capsys.readouterr().err
    store.client.log_table(store.bare, data={"label": ["acne"], "parsed": ["acne"]}, artifact_file="predictions/test.json")
    with FakeOpenAI(lambda request: Fault(500)) as server:
        monkeypatch.setenv(KEY_ENV, server.api_key)
        with pytest.raises(SystemExit) as failed:
            judge_command(["--run-id", store.bare, "--tracking-uri", store.uri, "--base-url", server.base_url,
                           "--model", "jm", "--api-key-env", KEY_ENV, "--retries", "0", "--cache-dir",
                           str(tmp_path / "c"), "--runs", "1", "--concurrency", "1", "--no-progress"])  # 1 is allowed
    err = capsys.readouterr().err.splitlines()[-1]  # after MLflow's own artifact download bar
    assert failed.value.code == 1
    assert err.startswith("error: the judge endpoint failed (InternalServerError: ") and "nothing was logged" in err
    assert not any(k.startswith("judge/") for k in store.client.get_run(store.bare).data.metrics)
    assert os.environ.get(KEY_ENV)  # the key came from the environment variable named, never from argv


def test_a_failure_names_its_error_quotes_200_characters_and_keeps_the_cache(store, tmp_path, monkeypatch, capsys):
    def failing(*args):
        raise RuntimeError("upstream said " + "z" * 500)

    monkeypatch.setattr(judge_module, "make_client", lambda *args: object())
    monkeypatch.setattr(judge_module, "judge_rows", failing)
    with pytest.raises(SystemExit) as failed:
        judge_command(["--run-id", store.run, "--tracking-uri", store.uri, "--model", "jm", "--no-progress"])
    err = capsys.readouterr().err.splitlines()[-1]
    assert failed.value.code == 1
    assert err == ("error: the judge endpoint failed (RuntimeError: upstream said " + "z" * 186 + "); nothing was logged "
                   "(cached replies are kept: run again to continue)")


@pytest.mark.parametrize("rows", [0, 1])
def test_tables_of_no_rows_and_one_row_are_judged(store, tmp_path, monkeypatch, capsys, rows):
    from skinflow.llm.fake_server import FakeOpenAI

    run = store.client.create_run(store.client.get_run(store.run).info.experiment_id).info.run_id
    store.client.log_table(run, data={"md5hash": ["a"][:rows], "label": ["psoriasis"][:rows],
                                      "parsed": ["psoriasis"][:rows]}, artifact_file="predictions/test.json")
    with FakeOpenAI(lambda request: verdict(True, True)) as server:
        monkeypatch.setenv(KEY_ENV, server.api_key)
        judge_command(["--run-id", run, "--tracking-uri", store.uri, "--base-url", server.base_url, "--model", "jm",
                       "--api-key-env", KEY_ENV, "--runs", "1", "--cache-dir", str(tmp_path / "c"), "--no-progress"])
    assert f"judge/images             {rows}" in capsys.readouterr().out
    logged = {a.path for a in store.client.list_artifacts(run, "judge")}
    assert logged == ({"judge/verdicts.json"} if rows else set())
