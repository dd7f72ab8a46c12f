"""Captions and the LLM judge against a loopback OpenAI-compatible server with scripted answers
(skinflow.llm.fake_server)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import pandas as pd
import pytest

from skinflow.data.captions import read_captions
from skinflow.data.formats import CAPTION_FIELDS
from skinflow.llm.captions import CAPTION_SYSTEM, CaptionConfig, leaked, make_captions, side_files
from skinflow.llm.client import make_client
from skinflow.llm.fake_server import FakeOpenAI, Fault, images_in, text_of
from skinflow.llm.judge import JUDGE_SYSTEM, Cache, cohen_kappa, judge_rows
from tests.conftest import REPO, one_image_per_label

KEY_ENV = "SKINFLOW_TEST_KEY"


class World:
    """The scripted models. ``plan[md5]`` says how the describer and the reader behave for that image:

    ``good``: accepted at once; ``miss:N``: the reader misses the first N captions; ``never``: it always misses;
    ``leak``: the first caption names the diagnosis; ``leak_always``; ``malformed``: the first caption has no
    fields; ``429`` / ``500`` / ``stall`` / ``http_malformed``: the first caption request fails that way;
    ``500_always``: every caption request fails.
    """

    def __init__(self, labels: dict[str, str], plan: dict[str, str] | None = None):
        self.labels, self.plan = labels, plan or {}
        self.by_prefix = {m[:12]: m for m in labels}
        self.captions: Counter = Counter()  # caption requests per image
        self.verifies: Counter = Counter()
        self.feedback: dict[str, list[str]] = defaultdict(list)

    def __call__(self, request: dict):
        if text_of(request, "system") == CAPTION_SYSTEM:
            md5 = hashlib.md5(images_in(request)[0]).hexdigest()
            self.captions[md5] += 1
            n, mode = self.captions[md5], self.plan.get(md5, "good")
            self.feedback[md5].append(text_of(request, "user"))
            if n == 1 and mode in ("429", "500", "stall", "http_malformed"):
                return {"429": Fault(429, retry_after=1), "500": Fault(500), "stall": Fault("stall", seconds=2),
                        "http_malformed": Fault("malformed")}[mode]
            if mode == "500_always":
                return Fault(500)
            if mode == "malformed" and n == 1:
                return "I think this is a lovely photograph."
            lesion = self.labels[md5] if (mode == "leak" and n == 1) or mode == "leak_always" else "papule"
            values = {f: f"{f} value" for f in CAPTION_FIELDS} | {"location": f"site {md5[:12]}", "lesion type": lesion}
            return "<caption>\n" + "\n".join(f"{k}: {v}" for k, v in values.items()) + "\n</caption>"
        md5 = self.by_prefix[text_of(request, "user").split("site ")[1].split()[0]]
        self.verifies[md5] += 1
        mode = self.plan.get(md5, "good")
        misses = int(mode.split(":")[1]) if mode.startswith("miss:") else (10**9 if mode == "never" else 0)
        named = "lichen planus" if self.verifies[md5] <= misses else self.labels[md5]
        return f"<answer>\n1. {named}\n</answer>"


@pytest.fixture
def images(synth_dir, tmp_path):
    csv_path, df = one_image_per_label(synth_dir, tmp_path, 12)
    return csv_path, synth_dir / "images", dict(zip(df["md5hash"], df["label"]))


def client_for(server, timeout=5.0, retries=2):
    os.environ[KEY_ENV] = server.api_key
    return make_client(server.base_url, KEY_ENV, timeout=timeout, max_retries=retries)


def test_leak_detection_covers_synonyms_and_aliases():
    assert leaked("lesion type: lentigo maligna", "melanoma") == "lentigo maligna"  # a synonym of the gold label
    assert leaked("surface: like a cutaneous t cell lymphoma", "mycosis fungoides") == "cutaneous t cell lymphoma"  # alias
    assert leaked("colour: pink\nsurface: scaly", "psoriasis") is None
    assert leaked("border: psoriasiform", "psoriasis") is None  # whole words only


def test_captions_accepted_retried_rejected_and_leaks_refused(images, tmp_path):
    csv_path, image_dir, labels = images
    md5s = list(labels)
    plan = {md5s[1]: "miss:2", md5s[2]: "never", md5s[3]: "leak", md5s[4]: "leak_always", md5s[5]: "malformed"}
    world = World(labels, plan)
    out = tmp_path / "captions.jsonl"
    with FakeOpenAI(world) as server:
        summary = make_captions(client_for(server), csv_path, image_dir, out, CaptionConfig(model="describer", max_attempts=3,
                                                                                            concurrency=4), progress=False)
    review_path, prompts_path = side_files(out)
    accepted = {json.loads(line)["md5hash"]: json.loads(line) for line in out.read_text().splitlines()}
    review = {json.loads(line)["md5hash"]: json.loads(line) for line in review_path.read_text().splitlines()}
    assert set(accepted) == set(md5s) - {md5s[2], md5s[4]} and set(review) == {md5s[2], md5s[4]}
    assert accepted[md5s[0]]["attempts"] == 1 and accepted[md5s[1]]["attempts"] == 3
    assert accepted[md5s[3]]["attempts"] == 2 and accepted[md5s[5]]["attempts"] == 2
    assert summary.accepted_at == {1: len(md5s) - 5, 2: 2, 3: 1} and summary.rejected == 2 and summary.rejected_for_leak == 1
    assert [a["reason"] for a in review[md5s[2]]["attempts"]] == ["verifier_miss"] * 3
    assert [a["reason"] for a in review[md5s[4]]["attempts"]] == ["leak"] * 3
    assert summary.leak_attempts == 4 and summary.malformed_attempts == 1 and summary.verifier_misses == 5
    assert world.verifies[md5s[4]] == 0  # a leaking caption is never shown to the reader
    # the retry tells the describer what the reader concluded, never the gold label
    assert "lichen planus" in world.feedback[md5s[1]][1] and labels[md5s[1]] not in world.feedback[md5s[1]][1]
    assert "named the diagnosis" in world.feedback[md5s[3]][1]
    assert json.loads(prompts_path.read_text())["caption"]["version"] == "skinflow-caption-v1"
    # what the DataModule reads: eight fields per accepted image, the bookkeeping keys ignored
    captions = read_captions(out)
    assert set(captions) == set(accepted) and set(captions[md5s[0]]) == set(CAPTION_FIELDS)
    assert summary.usage["requests"] == sum(world.captions.values()) + sum(world.verifies.values())
    assert summary.usage["prompt_tokens"] > 0 and summary.usage["completion_tokens"] > 0


def test_transport_faults_are_retried_by_the_client_and_a_dead_image_is_left_for_the_next_run(images, tmp_path):
    csv_path, image_dir, labels = images
    md5s = list(labels)[:6]
    plan = {md5s[0]: "429", md5s[1]: "500", md5s[2]: "stall", md5s[3]: "http_malformed", md5s[4]: "500_always"}
    world = World(labels, plan)
    out = tmp_path / "captions.jsonl"
    with FakeOpenAI(world) as server:
        start = time.monotonic()
        summary = make_captions(client_for(server, timeout=0.5, retries=2), csv_path, image_dir, out,
                                CaptionConfig(model="m", concurrency=6), limit=6, progress=False)
        first_429 = [t for t, r in server.requests if text_of(r, "system") == CAPTION_SYSTEM
                     and hashlib.md5(images_in(r)[0]).hexdigest() == md5s[0]]
        done = {json.loads(line)["md5hash"] for line in out.read_text().splitlines()}
        assert done == set(md5s) - {md5s[4]}
        assert summary.errors == {"InternalServerError": 1} and world.captions[md5s[4]] == 3  # 1 + 2 client retries
        assert first_429[1] - first_429[0] >= 0.95  # Retry-After: 1 honoured
        assert world.captions[md5s[2]] == 2 and time.monotonic() - start < 30
        assert world.captions[md5s[3]] == 2  # a body that is not JSON is asked again
        world.plan[md5s[4]] = "good"  # the server recovers: the next run captions only what is missing
        again = make_captions(client_for(server), csv_path, image_dir, out, CaptionConfig(model="m"), limit=6, progress=False)
    assert again.skipped_done == 5 and again.accepted_at == {1: 1}
    assert sorted(json.loads(line)["md5hash"] for line in out.read_text().splitlines()) == sorted(md5s)


def test_a_killed_run_resumes_with_nothing_lost_or_repeated(images, tmp_path):
    csv_path, image_dir, labels = images
    world = World(labels)
    out = tmp_path / "captions.jsonl"
    with FakeOpenAI(world, latency=0.15) as server:
        env = {**os.environ, KEY_ENV: server.api_key, "PYTHONPATH": str(REPO)}
        cmd = [sys.executable, "-m", "skinflow", "captions", "--csv", str(csv_path), "--image-dir", str(image_dir),
               "--out", str(out), "--base-url", server.base_url, "--model", "m", "--api-key-env", KEY_ENV,
               "--concurrency", "2", "--no-progress"]
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while (not out.exists() or len(out.read_text().splitlines()) < 3) and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 143, stderr
        first = [json.loads(line)["md5hash"] for line in out.read_text().splitlines()]
        assert 3 <= len(first) < len(labels) and "run the command again" in stdout
        before = Counter(world.captions)
        with open(out, "a") as f:  # as if the kill had cut a line short
            f.write('{"md5hash": "cut sho')
        finished = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    lines = [json.loads(line)["md5hash"] for line in out.read_text().splitlines()]
    assert sorted(lines) == sorted(labels)  # every image once: nothing lost, nothing twice, the cut line gone
    assert all(world.captions[m] == before[m] for m in first)  # done images were not asked for again


def test_bad_inputs_fail_in_one_line(images, tmp_path):
    csv_path, image_dir, _ = images
    base = [sys.executable, "-m", "skinflow", "captions", "--csv", str(csv_path), "--image-dir", str(image_dir),
            "--out", str(tmp_path / "c.jsonl"), "--model", "m", "--no-progress", "--base-url", "http://127.0.0.1:9/v1"]
    env = {k: v for k, v in os.environ.items() if k != "SKINFLOW_UNSET_KEY"}
    missing_key = subprocess.run([*base, "--api-key-env", "SKINFLOW_UNSET_KEY"], cwd=REPO, capture_output=True, text=True, env=env)
    assert missing_key.returncode == 2 and "SKINFLOW_UNSET_KEY is not set" in missing_key.stderr
    assert missing_key.stderr.count("\n") == 1
    with FakeOpenAI(lambda request: "never reached") as server:  # a wrong key: refused at once, not retried per image
        wrong = subprocess.run([*base[:-2], "--base-url", server.base_url, "--api-key-env", KEY_ENV], cwd=REPO,
                               capture_output=True, text=True, env={**env, KEY_ENV: "wrong"})
    assert wrong.returncode == 2 and "AuthenticationError" in wrong.stderr and wrong.stderr.count("\n") == 1, wrong.stderr
    assert not (tmp_path / "c.jsonl").exists()


# -- the judge ---------------------------------------------------------------------------------------------------
def judge_world(script: dict[tuple[str, int], str]):
    """Replies keyed by (first answer, run number seen so far for that prompt)."""
    seen: Counter = Counter()

    def reply(request):
        assert text_of(request, "system") == JUDGE_SYSTEM
        user = text_of(request, "user")
        first = user.split("1. ")[1].split("\n")[0] if "1. " in user else "(none)"
        seen[first] += 1
        return script[(first, (seen[first] - 1) % 3 + 1)]
    return reply


T, F = "true", "false"


def verdict(top1, top6, danger="false"):
    return f'{{"top1": {top1}, "top6": {top6}, "dangerous_miss": {danger}}}'


ROWS = [  # gold, ranked answer; the ontology says: correct at 1 / correct at 6
    {"md5hash": "a", "label": "psoriasis", "parsed": "psoriasis; eczema"},  # 1 / 1
    {"md5hash": "b", "label": "melanoma", "parsed": "nevocytic nevus; malignant melanoma"},  # 0 / 1 (synonym)
    {"md5hash": "c", "label": "eczema", "parsed": "dermatitis herpetiformis"},  # 0 / 0
    {"md5hash": "d", "label": "acne", "parsed": "rosacea"},  # 0 / 0
]
SCRIPT = {
    ("psoriasis", 1): verdict(T, T), ("psoriasis", 2): verdict(T, T), ("psoriasis", 3): "not json",
    ("nevocytic nevus", 1): verdict(F, T, T), ("nevocytic nevus", 2): verdict(F, T, T), ("nevocytic nevus", 3): verdict(T, T, F),
    ("dermatitis herpetiformis", 1): verdict(F, F), ("dermatitis herpetiformis", 2): verdict(T, T), ("dermatitis herpetiformis", 3): verdict(F, F),
    ("rosacea", 1): verdict(T, T), ("rosacea", 2): verdict(T, T), ("rosacea", 3): verdict(F, F),
}


def test_judge_majority_kappa_and_cache(tmp_path):
    with FakeOpenAI(judge_world(SCRIPT)) as server:
        client = client_for(server)
        result = judge_rows(client, "judge-m", ROWS, runs=3, cache=Cache(tmp_path / "cache"), concurrency=1, progress=False)
        asked = len(server.requests)
        again = judge_rows(client, "judge-m", ROWS, runs=3, cache=Cache(tmp_path / "cache"), concurrency=1, progress=False)
        asked_again = len(server.requests) - asked
    # majorities by hand: a: top1 T (2 of 2 valid), top6 T; b: top1 F, top6 T, danger T; c: F, F; d: T, T
    judge_top1, judge_top6 = [1, 0, 0, 1], [1, 1, 0, 1]
    onto_top1, onto_top6 = [1, 0, 0, 0], [1, 1, 0, 0]
    m = result.metrics
    assert m["judge/top1"] == 0.5 and m["judge/top6"] == 0.75 and m["judge/dangerous_miss"] == 0.25
    assert m["judge/malformed_replies"] == 1 and m["judge/unjudged"] == 0 and m["judge/images"] == 4
    # kappa top1: agreement 3/4, p_judge 1/2, p_onto 1/4 -> expected 1/8 + 3/8 = 1/2 -> (3/4 - 1/2) / (1/2) = 0.5
    assert m["judge/kappa_top1"] == pytest.approx(0.5) == cohen_kappa(judge_top1, onto_top1)
    # kappa top6: agreement 3/4, p 3/4 and 1/2 -> expected 3/8 + 1/8 = 1/2 -> 0.5
    assert m["judge/kappa_top6"] == pytest.approx(0.5) == cohen_kappa(judge_top6, onto_top6)
    assert asked == 12 and asked_again == 1  # only the malformed reply is asked again
    assert again.cache_hits == 11


def test_captions_made_here_feed_stage1_on_real_photographs(tmp_path, monkeypatch):
    """Real sample images -> captions through the loopback endpoint -> Stage I trains on them via captions_path."""
    from mlflow import MlflowClient

    from skinflow.cli import main
    from tests.conftest import require_real_sample

    root = require_real_sample()
    df = pd.read_csv(root / "labels.csv", dtype=str, keep_default_na=False)
    df = df[df["label"].isin(["psoriasis", "acne"])].groupby("label").head(10).reset_index(drop=True)
    csv_path = tmp_path / "subset.csv"
    df.to_csv(csv_path, index=False)
    by_bytes = {hashlib.md5((root / "images" / f"{m}.jpg").read_bytes()).hexdigest(): label for m, label in zip(df.md5hash, df.label)}
    world = World(by_bytes)
    out = tmp_path / "captions.jsonl"
    with FakeOpenAI(world) as server:
        summary = make_captions(client_for(server), csv_path, root / "images", out, CaptionConfig(model="vlm"), progress=False)
    assert summary.accepted_at == {1: len(df)}

    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", str(REPO / "configs/experiment/stage1_tiny_synthetic.yaml"),
          "--data.init_args.csv_path", str(csv_path), "--data.init_args.image_dir", str(root / "images"),
          "--data.init_args.captions_path", str(out), "--data.init_args.image_size", "56", "--data.init_args.batch_size", "2",
          "--data.init_args.eval_batch_size", "4", "--data.init_args.progress", "false",
          "--trainer.max_steps", "2", "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1",
          "--trainer.enable_progress_bar", "false", "--trainer.log_every_n_steps", "1", "--trainer.enable_model_summary", "false",
          "--model.init_args.group_size", "2", "--model.init_args.max_new_tokens", "8", "--model.init_args.table_every", "0"])
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("skinflow").experiment_id])
    report = json.loads(Path(client.download_artifacts(run.info.run_id, "data_report.json", str(tmp_path))).read_text())
    assert report["captions"]["matched"] == len(df) and report["captions"]["file"] == str(out)
    assert sum(report["without_caption_dropped"].values()) == 0  # every image had its caption
    history = client.get_metric_history(run.info.run_id, "reward/caption_fields")
    assert len(history) == 2  # two GRPO steps scored against these captions


def test_captions_exit_non_zero_with_a_summary_when_every_request_failed(images, tmp_path):
    csv_path, image_dir, labels = images
    world = World(labels, {md5: "500_always" for md5 in labels})
    with FakeOpenAI(world) as server:
        done = subprocess.run([sys.executable, "-m", "skinflow", "captions", "--csv", str(csv_path), "--image-dir",
                               str(image_dir), "--out", str(tmp_path / "c.jsonl"), "--model", "m", "--no-progress",
                               "--base-url", server.base_url, "--api-key-env", KEY_ENV, "--retries", "0", "--limit", "3"],
                              cwd=REPO, capture_output=True, text=True, env={**os.environ, KEY_ENV: server.api_key})
    assert done.returncode == 1, done.stderr[-2000:]
    assert "images to caption      3" in done.stdout  # the summary, always
    assert "error: none of the 3 images got a caption or a review entry" in done.stderr
    assert "InternalServerError 3" in done.stderr


def test_a_reply_without_choices_is_an_endpoint_error_not_a_malformed_caption(images, tmp_path):
    csv_path, image_dir, _ = images
    out = tmp_path / "captions.jsonl"
    with FakeOpenAI(lambda request: Fault("no_choices")) as server:
        summary = make_captions(client_for(server), csv_path, image_dir, out, CaptionConfig(model="m"), limit=2,
                                progress=False)
    assert summary.errors == {"EndpointError": 2} and summary.malformed_attempts == 0 and summary.rejected == 0
    assert not (tmp_path / "captions.review.jsonl").exists() or not (tmp_path / "captions.review.jsonl").read_text()


def test_an_endpoint_echoing_the_api_key_never_gets_it_stored(images, tmp_path, caplog):
    csv_path, image_dir, _ = images
    out = tmp_path / "captions.jsonl"
    with FakeOpenAI(lambda request: Fault("echo_auth"), api_key="sk-secret-0123456789") as server:
        summary = make_captions(client_for(server), csv_path, image_dir, out, CaptionConfig(model="m", max_attempts=2),
                                limit=2, progress=False)
    assert summary.rejected == 2  # one field: malformed twice, to review
    stored = "".join(p.read_text() for p in tmp_path.glob("captions*"))
    assert "[API key removed]" in stored and "sk-secret-0123456789" not in stored
    assert "sk-secret-0123456789" not in caplog.text


def test_judge_names_a_run_that_does_not_exist(tmp_path, monkeypatch, capsys):
    from mlflow import MlflowClient

    from skinflow.cli import main

    monkeypatch.chdir(tmp_path)
    MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db").search_experiments()  # a store, without that run
    with pytest.raises(SystemExit) as exit_info:
        main(["judge", "--run-id", "0123456789abcdef", "--model", "m", "--base-url", "http://127.0.0.1:9/v1"])
    assert exit_info.value.code == 2
    assert "no run '0123456789abcdef' in sqlite:///" in capsys.readouterr().err


class ScriptedClient:
    """An OpenAI-shaped client whose replies are given in order (describer, verifier, describer, ...)."""

    def __init__(self, replies: list[str]):
        from types import SimpleNamespace

        self.replies, self.api_key = list(replies), "k"
        self.chat = SimpleNamespace(completions=SimpleNamespace(create=self.create))

    def create(self, **_):
        from types import SimpleNamespace

        text = self.replies.pop(0)
        return SimpleNamespace(usage=None, choices=[SimpleNamespace(message=SimpleNamespace(content=text))])


def caption_of(n_fields: int, extra: str = "") -> str:
    values = ["red", "arm", "round", "plaque", "<1 cm", "well-defined", "scaly", "single"]
    lines = [f"{field}: {value}" for field, value in zip(CAPTION_FIELDS, values[:n_fields])]
    return "<caption>\n" + "\n".join(lines) + extra + "\n</caption>"


@pytest.mark.parametrize("verifier, status, reason", [
    ("<answer>\n1. malignant melanoma\n</answer>", "accepted", "accepted"),  # a synonym of the gold label
    ("<answer>\n1. melanoma\n</answer>", "accepted", "accepted"),
    ("<answer>\n1. nevocytic nevus\n</answer>", "rejected", "verifier_miss"),
    ("no answer at all", "rejected", "verifier_miss"),
])
def test_a_caption_is_accepted_when_the_verifier_names_the_gold_label_or_its_synonym(tmp_path, verifier, status, reason):
    from skinflow.llm.captions import caption_image
    from skinflow.llm.client import Usage

    image = tmp_path / "x.png"
    __import__("PIL.Image").Image.new("RGB", (8, 8)).save(image)
    out = caption_image(ScriptedClient([caption_of(8), verifier]), CaptionConfig(model="m", max_attempts=1), "id", image,
                        "melanoma", Usage())
    assert out["status"] == status and out["attempts"][-1]["reason"] == reason


@pytest.mark.parametrize("fields, reason", [(6, "accepted"), (5, "malformed")])
def test_a_caption_needs_at_least_min_fields_fields(tmp_path, fields, reason):
    from skinflow.llm.captions import caption_image
    from skinflow.llm.client import Usage

    image = tmp_path / "x.png"
    __import__("PIL.Image").Image.new("RGB", (8, 8)).save(image)
    out = caption_image(ScriptedClient([caption_of(fields), "<answer>\n1. psoriasis\n</answer>"]),
                        CaptionConfig(model="m", max_attempts=1, min_fields=6), "id", image, "psoriasis", Usage())
    assert out["attempts"][0]["reason"] == reason


def test_a_leak_counts_the_aliases_of_every_synonym_of_the_gold_label():
    # "ssm" is an alias of superficial spreading melanoma ssm, a synonym of melanoma (not an alias of melanoma itself)
    assert leaked("surface: ssm-like scaling", "melanoma") == "ssm"
    assert leaked("border: like a morpheaform basal cell carcinoma", "solid cystic basal cell carcinoma") == \
        "morpheaform basal cell carcinoma"
    assert leaked("surface: ssm-like scaling", "psoriasis") is None


def test_the_judges_majority_counts_valid_replies_only():
    from skinflow.llm.judge import majority

    yes = {"top1": True, "top6": True, "dangerous_miss": True}
    no = {"top1": False, "top6": False, "dangerous_miss": False}
    assert majority([yes, None, None]) == yes  # one valid reply decides: the malformed two do not vote no
    assert majority([yes, no, None]) == no  # a tie is not a majority
    assert majority([yes, yes, no]) == yes and majority([yes, no, no, None, None]) == no
    assert majority([None, None]) is None
    assert cohen_kappa([1, 0, 1, 0], [1, 0, 1, 0]) == 1.0 and cohen_kappa([1, 0, 1, 0], [0, 1, 0, 1]) == -1.0


def test_kappa_edges_and_a_verdict_after_a_broken_object():
    import math

    from skinflow.llm.judge import parse_verdict

    assert math.isnan(cohen_kappa([], [])) and math.isnan(cohen_kappa([True], [True, False]))
    assert math.isnan(cohen_kappa([1, 1, 1], [1, 1, 1]))  # chance agreement is total: kappa undefined
    assert cohen_kappa([1], [0]) == 0.0 and cohen_kappa([1, 0], [1, 1]) == 0.0
    reply = 'Thinking {not json} then {"top1": true, "top6": true, "dangerous_miss": false}'
    assert parse_verdict(reply) == {"top1": True, "top6": True, "dangerous_miss": False}
    assert parse_verdict(None) is None
