"""What ``python -m skinflow captions`` writes and sends, exactly: the records a researcher (and the DataModule) reads
back, the requests a describer and a verifier receive, and the resumable file's repair. In-process, with a scripted
client, so each runs in well under a second (these are the tests the captions module's mutants run against)."""

from __future__ import annotations

import hashlib
import json
import logging
from types import SimpleNamespace

import pandas as pd
import pytest

from skinflow.data.formats import CAPTION_FIELDS, DataError
from skinflow.llm import captions as cap
from skinflow.llm.captions import (CAPTION_INSTRUCTION, CAPTION_PROMPT_VERSION, CAPTION_SYSTEM, VERIFY_INSTRUCTION,
                                   VERIFY_PROMPT_VERSION, VERIFY_SYSTEM, CaptionConfig, JsonlAppender, caption_image,
                                   feedback_for, make_captions, read_images, render_fields, side_files)
from skinflow.llm.client import EndpointError, Usage, image_data_url
from tests.conftest import one_image_per_label

VALUES = dict(zip(CAPTION_FIELDS, ["red", "forearm", "round", "plaque", "2 cm", "well-defined", "scaly", "single"]))


def caption_text(values: dict[str, str] = VALUES) -> str:
    return "<caption>\n" + "\n".join(f"{k}: {v}" for k, v in values.items()) + "\n</caption>"


class Models:
    """An OpenAI-shaped client. ``script[label]`` lists, per attempt, what the describer writes (``good``, ``leak``,
    ``malformed``) and what the verifier names; every request's keyword arguments are kept in ``requests``."""

    def __init__(self, by_url: dict[str, str], script: dict[str, list[tuple[str, str]]], api_key: str = "k",
                 raise_for: dict[str, BaseException] | None = None, stop_at_reader=None):
        self.by_url, self.script, self.api_key = by_url, script, api_key
        self.stop_at_reader = stop_at_reader  # a threading.Event set once the reader has answered (a stop mid-run)
        self.raise_for = raise_for or {}
        self.requests: list[dict] = []
        self.turn: dict[str, int] = {}
        self.chat = SimpleNamespace(completions=SimpleNamespace(create=self.create))
        self.last_label: str | None = None

    def step(self, label: str) -> tuple[str, str]:
        plan = self.script.get(label) or [("good", label)]
        return plan[min(self.turn[label], len(plan)) - 1]

    def create(self, **kwargs):
        self.requests.append(kwargs)
        messages = kwargs["messages"]
        if messages[0]["content"] == CAPTION_SYSTEM:
            label = self.by_url[messages[1]["content"][0]["image_url"]["url"]]
            if label in self.raise_for:
                raise self.raise_for[label]
            self.turn[label] = self.turn.get(label, 0) + 1
            writes = self.step(label)[0]
            text = {"good": caption_text(), "leak": caption_text(VALUES | {"lesion type": label}),
                    "malformed": "a lovely photograph"}[writes]
            self.last_label = label
        else:
            named = self.step(self.last_label)[1]
            text = f"<answer>\n1. {named}\n</answer>"
            if self.stop_at_reader is not None:
                self.stop_at_reader.set()
        message = SimpleNamespace(content=text)
        return SimpleNamespace(usage=SimpleNamespace(prompt_tokens=10, completion_tokens=5), choices=[SimpleNamespace(message=message)])


@pytest.fixture
def four(synth_dir, tmp_path):
    """Four synthetic images of four labels (none of them lichen planus, the scripted verifier's miss)."""
    csv_path, df = one_image_per_label(synth_dir, tmp_path, 4)
    image_dir = synth_dir / "images"
    by_url = {image_data_url(next(image_dir.glob(f"{m}.*"))): label for m, label in zip(df["md5hash"], df["label"])}
    return csv_path, image_dir, list(zip(df["md5hash"], df["label"])), by_url


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_files_a_run_writes_hold_exactly_the_documented_records(four, tmp_path):
    csv_path, image_dir, rows, by_url = four
    (m0, l0), (m1, l1), (m2, l2), (m3, l3) = rows
    script = {l1: [("good", "lichen planus"), ("good", l1)],  # a verifier miss, then accepted
              l2: [("good", "lichen planus")],  # never verified: to review
              l3: [("malformed", "-"), ("leak", "-")]}  # its last attempt leaked: to review, counted as a leak
    client = Models(by_url, script)
    out = tmp_path / "run" / "refs.jsonl"  # the folder does not exist yet
    cfg = CaptionConfig(model="describer", verifier_model="reader", max_attempts=2, min_fields=6, concurrency=1)
    summary = make_captions(client, csv_path, image_dir, out, cfg, progress=False, endpoint="http://x/v1")
    review_path, prompts_path = side_files(out)
    meta = {"model": "describer", "verifier_model": "reader", "prompt_version": CAPTION_PROMPT_VERSION,
            "verify_prompt_version": VERIFY_PROMPT_VERSION}
    accepted = {r["md5hash"]: r for r in lines(out)}
    assert accepted == {m0: {"md5hash": m0, **VALUES, "attempts": 1, "verified_as": l0, **meta},
                        m1: {"md5hash": m1, **VALUES, "attempts": 2, "verified_as": l1, **meta}}
    review = {r["md5hash"]: r for r in lines(review_path)}
    miss = {"caption": caption_text(), "reason": "verifier_miss", "verified_as": "lichen planus",
            "verifier_answer": "<answer>\n1. lichen planus\n</answer>"}
    assert review[m2] == {"md5hash": m2, "label": l2, **meta,
                          "attempts": [{"attempt": 1, **miss}, {"attempt": 2, **miss}]}
    assert review[m3] == {"md5hash": m3, "label": l3, **meta, "attempts": [
        {"attempt": 1, "caption": "a lovely photograph", "reason": "malformed"},
        {"attempt": 2, "caption": caption_text(VALUES | {"lesion type": l3}), "reason": "leak", "leaked": l3}]}
    expected_prompts = {"caption": {"version": CAPTION_PROMPT_VERSION, "system": CAPTION_SYSTEM,
                                    "instruction": CAPTION_INSTRUCTION},
                        "verify": {"version": VERIFY_PROMPT_VERSION, "system": VERIFY_SYSTEM,
                                   "instruction": VERIFY_INSTRUCTION},
                        "model": "describer", "verifier_model": "reader", "endpoint": "http://x/v1", "max_attempts": 2,
                        "min_fields": 6}
    assert prompts_path.read_text() == json.dumps(expected_prompts, indent=2)  # readable, two-space indented
    assert summary.images == 4 and summary.skipped_done == 0 and summary.missing_images == 0
    assert summary.accepted_at == {1: 1, 2: 1} and summary.rejected == 2 and summary.rejected_for_leak == 1
    assert (summary.leak_attempts, summary.malformed_attempts, summary.verifier_misses) == (1, 1, 3)
    assert summary.interrupted == 0 and summary.errors == {}
    assert summary.usage["requests"] == len(client.requests) == 2 + 4 + 4 + 2
    assert summary.seconds >= 0 and summary.seconds < 60
    # a second run skips all four (done in either file) and says how many
    again = make_captions(client, csv_path, image_dir, out, cfg, progress=False)
    assert (again.images, again.skipped_done, again.interrupted) == (0, 4, 0) and len(client.requests) == 12


def test_the_describer_and_the_verifier_get_the_requests_their_settings_say(four, tmp_path):
    csv_path, image_dir, rows, by_url = four
    label = rows[0][1]
    image = next(image_dir.glob(f"{rows[0][0]}.*"))
    client = Models(by_url, {label: [("leak", "-"), ("good", "lichen planus"), ("good", label)]})
    cfg = CaptionConfig(model="describer", verifier_model="reader", max_attempts=3, temperature=0.3, max_tokens=123)
    out = caption_image(client, cfg, "id", image, label, Usage())
    assert out["status"] == "accepted" and [a["reason"] for a in out["attempts"]] == ["leak", "verifier_miss", "accepted"]
    assert out["fields"] == VALUES
    describe = [r for r in client.requests if r["model"] == "describer"]
    verify = [r for r in client.requests if r["model"] == "reader"]
    assert len(describe) == 3 and len(verify) == 2  # the leaking caption never reaches the reader
    url = image_data_url(image)
    first = [{"role": "system", "content": CAPTION_SYSTEM},
             {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                          {"type": "text", "text": CAPTION_INSTRUCTION}]}]
    assert describe[0] == {"model": "describer", "messages": first, "max_tokens": 123, "temperature": 0.3}
    # each retry carries the feedback on the attempt before it, and only that
    assert describe[1]["messages"][1]["content"][2:] == [{"type": "text", "text": feedback_for(out["attempts"][0])}]
    assert describe[2]["messages"][1]["content"][2:] == [{"type": "text", "text": feedback_for(out["attempts"][1])}]
    assert verify[0] == {"model": "reader", "max_tokens": 64, "temperature": 0,
                         "messages": [{"role": "system", "content": VERIFY_SYSTEM},
                                      {"role": "user", "content": VERIFY_INSTRUCTION.format(caption=render_fields(VALUES))}]}
    # temperature None: the endpoint's own default, so no temperature is sent at all
    client = Models(by_url, {})
    caption_image(client, CaptionConfig(model="m", temperature=None), "id", image, label, Usage())
    assert "temperature" not in client.requests[0] and client.requests[1]["temperature"] == 0


def test_a_stop_before_an_attempt_returns_the_attempts_so_far(four):
    import threading

    _, image_dir, rows, by_url = four
    stop = threading.Event()
    stop.set()
    out = caption_image(Models(by_url, {}), CaptionConfig(model="m"), "id", next(image_dir.glob(f"{rows[0][0]}.*")),
                        rows[0][1], Usage(), stop)
    assert out == {"md5hash": "id", "status": "interrupted", "attempts": []}


# The prompts' texts, fingerprinted per version. Every record carries prompt_version / verify_prompt_version, so a
# changed text under an old version would mislabel the captions made with it: change a prompt, bump its version and
# record the new fingerprint here.
PROMPT_FINGERPRINTS = {
    (CAPTION_PROMPT_VERSION, VERIFY_PROMPT_VERSION): "2b40d6ff7140b336",
}


def prompt_texts() -> str:
    feedback = [feedback_for({"reason": "leak"}), feedback_for({"reason": "malformed"}),
                feedback_for({"reason": "verifier_miss", "verified_as": "psoriasis"}),
                feedback_for({"reason": "verifier_miss", "verified_as": None})]
    return json.dumps({"record": cap.prompts_record(), "feedback": feedback}, sort_keys=True)


def test_a_prompt_text_changes_only_with_its_version():
    digest = hashlib.sha256(prompt_texts().encode()).hexdigest()[:16]
    assert digest == PROMPT_FINGERPRINTS[(CAPTION_PROMPT_VERSION, VERIFY_PROMPT_VERSION)], (
        f"a caption prompt changed (fingerprint {digest}): bump CAPTION_PROMPT_VERSION or VERIFY_PROMPT_VERSION "
        "and record the new fingerprint in PROMPT_FINGERPRINTS")


def test_feedback_names_what_went_wrong_and_never_the_gold_label():
    assert "named the diagnosis" in feedback_for({"reason": "leak"})
    malformed = feedback_for({"reason": "malformed"})
    assert malformed.endswith("line for each of: " + ", ".join(CAPTION_FIELDS) + ".")
    assert "concluded: psoriasis." in feedback_for({"reason": "verifier_miss", "verified_as": "psoriasis"})
    assert "concluded: no recognisable diagnosis." in feedback_for({"reason": "verifier_miss", "verified_as": None})


@pytest.mark.parametrize("name, review, prompts", [("refs.jsonl", "refs.review.jsonl", "refs.prompts.json"),
                                                   ("refs.txt", "refs.txt.review.jsonl", "refs.txt.prompts.json")])
def test_side_files_sit_beside_the_output(tmp_path, name, review, prompts):
    assert side_files(tmp_path / name) == (tmp_path / review, tmp_path / prompts)


def test_a_line_cut_short_by_a_kill_is_dropped_and_said(tmp_path, caplog):
    path = tmp_path / "a" / "b" / "refs.jsonl"
    JsonlAppender(path)  # makes the folders
    assert path.parent.is_dir() and not path.exists()
    path.write_bytes(b'{"md5hash": "x"}\n{"md5hash": "y"}\n{"md5ha')
    with caplog.at_level(logging.WARNING, logger="skinflow.llm.captions"):
        appender = JsonlAppender(path)
    assert path.read_bytes() == b'{"md5hash": "x"}\n{"md5hash": "y"}\n'
    assert caplog.messages == [f"{path}: dropped a last line cut short by an interrupted run (7 bytes)"]
    assert appender.done() == {"x", "y"}
    path.write_bytes(b'{"md5ha')  # the only line cut short
    JsonlAppender(path)
    assert path.read_bytes() == b""
    path.write_bytes(b'{"md5hash": "x"}\n')  # whole: untouched, nothing said
    caplog.clear()
    JsonlAppender(path)
    assert path.read_bytes() == b'{"md5hash": "x"}\n' and not caplog.messages


def test_records_are_written_as_utf8_text_and_a_bad_line_is_named(tmp_path):
    path = tmp_path / "refs.jsonl"
    appender = JsonlAppender(path)
    appender.append({"md5hash": "é", "colour": "café-au-lait"})
    assert path.read_bytes() == '{"md5hash": "é", "colour": "café-au-lait"}\n'.encode("utf-8")
    path.write_text('{"md5hash": "a"}\n\n{"no": 1}\n')
    with pytest.raises(DataError, match=r"refs.jsonl line 3: not a captions record"):
        appender.done()


def test_read_images_names_the_row_of_an_unknown_label_and_counts_missing_files(four, tmp_path):
    csv_path, image_dir, rows, _ = four
    df = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    bad = df.copy()
    bad.loc[2, "label"] = "dragon pox"
    bad.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DataError, match=r"bad.csv row 4: label 'dragon pox' is not a Fitzpatrick17k label"):
        read_images(tmp_path / "bad.csv", image_dir, None, None)
    # a repeated md5hash (its second row disagrees: the first is kept) and a row whose image file is missing
    extra = pd.concat([df, df.iloc[[0]].assign(label=rows[1][1]), df.iloc[[1]].assign(md5hash="f" * 32)], ignore_index=True)
    extra.to_csv(tmp_path / "extra.csv", index=False)
    got, missing = read_images(tmp_path / "extra.csv", image_dir, None, None)
    assert list(zip(got["md5hash"], got["label"])) == rows and missing == 1
    assert list(got.index) == [0, 1, 2, 3] and "index" not in got.columns
    only, _ = read_images(tmp_path / "extra.csv", image_dir, [rows[1][1], rows[3][1]], None)
    assert list(only["md5hash"]) == [rows[1][0], rows[3][0]] and list(only.index) == [0, 1]
    first, _ = read_images(tmp_path / "extra.csv", image_dir, None, 2)
    assert list(first["md5hash"]) == [rows[0][0], rows[1][0]]
    with pytest.raises(DataError, match=r"image folder not found: .*nowhere"):
        read_images(csv_path, tmp_path / "nowhere", None, None)


def test_leak_terms_are_tried_longest_first_so_the_whole_name_is_reported():
    terms = cap.leak_terms("melanoma")
    assert {"melanoma", "malignant melanoma", "lentigo maligna"} <= set(terms)
    assert [len(t) for t in terms] == sorted((len(t) for t in terms), reverse=True)
    assert cap.leaked("lesion type: malignant melanoma", "melanoma") == "malignant melanoma"


def test_an_unclosed_caption_with_enough_fields_is_read_not_refused(four):
    _, image_dir, rows, by_url = four
    label = rows[0][1]

    class Unclosed(Models):
        def create(self, **kwargs):
            reply = super().create(**kwargs)
            if kwargs["messages"][0]["content"] == CAPTION_SYSTEM:  # a reply cut at max_tokens after the fields
                reply.choices[0].message.content = reply.choices[0].message.content.replace("\n</caption>", "")
            return reply

    out = caption_image(Unclosed(by_url, {}), CaptionConfig(model="m", max_attempts=1), "id",
                        next(image_dir.glob(f"{rows[0][0]}.*")), label, Usage())
    assert out["status"] == "accepted" and out["fields"] == VALUES


def test_the_progress_bar_is_on_by_default_and_counts_images(four, tmp_path, capsys):
    csv_path, image_dir, rows, by_url = four
    out = tmp_path / "refs.jsonl"
    make_captions(Models(by_url, {}), csv_path, image_dir, out, CaptionConfig(model="m", concurrency=1),
                  labels=[rows[0][1], rows[2][1]])
    err = capsys.readouterr().err
    assert f"captions -> {out}" in err and "2/2" in err and "img/s" in err
    assert {r["md5hash"] for r in lines(out)} == {rows[0][0], rows[2][0]}  # only the labels asked for
    make_captions(Models(by_url, {}), csv_path, image_dir, tmp_path / "quiet.jsonl", CaptionConfig(model="m"),
                  progress=False)
    assert capsys.readouterr().err == ""


def test_concurrency_images_are_worked_on_at_once_and_no_more(four, tmp_path):
    import threading
    import time

    csv_path, image_dir, rows, by_url = four
    lock, busy, peak, names = threading.Lock(), [0], [0], set()

    class Slow:
        api_key = "k"

        def __init__(self):
            self.chat = SimpleNamespace(completions=SimpleNamespace(create=self.create))

        def create(self, **kwargs):
            with lock:
                busy[0] += 1
                peak[0] = max(peak[0], busy[0])
                names.add(threading.current_thread().name.rsplit("_", 1)[0])
            time.sleep(0.05)
            with lock:
                busy[0] -= 1
            return SimpleNamespace(usage=None, choices=[SimpleNamespace(message=SimpleNamespace(content="nothing"))])

    summary = make_captions(Slow(), csv_path, image_dir, tmp_path / "refs.jsonl",
                            CaptionConfig(model="m", max_attempts=1, concurrency=2), progress=False)
    assert summary.rejected == 4 and peak[0] == 2 and names == {"skinflow-captions"}


class Refused(Exception):
    pass


def test_an_image_whose_requests_fail_is_left_for_the_next_run_and_a_refusal_ends_the_run(four, tmp_path, caplog):
    csv_path, image_dir, rows, by_url = four
    failing = type("InternalServerError", (Exception,), {})
    long_detail = "upstream broke for key sk-123 " + "x" * 400
    client = Models(by_url, {}, api_key="sk-123", raise_for={rows[1][1]: failing(long_detail)})
    out = tmp_path / "refs.jsonl"
    with caplog.at_level(logging.WARNING, logger="skinflow.llm.captions"):
        summary = make_captions(client, csv_path, image_dir, out, CaptionConfig(model="m", concurrency=1), progress=False)
    assert summary.errors == {"InternalServerError": 1} and summary.interrupted == 0
    assert sum(summary.accepted_at.values()) == 3 and rows[1][0] not in {r["md5hash"] for r in lines(out)}
    [warning] = [m for m in caplog.messages if "failed" in m]
    assert warning.startswith(f"captions: {rows[1][0]} failed (InternalServerError: upstream broke for key [API key removed] x")
    assert warning.endswith("; left for the next run") and "sk-123" not in warning
    assert len(warning.split("(InternalServerError: ")[1].split("); left")[0]) == 300  # the detail is cut at 300
    # an authentication error ends the run at once, in one line that names it
    denied = type("AuthenticationError", (Exception,), {})
    client = Models(by_url, {}, raise_for={label: denied("bad key") for _, label in rows})
    with pytest.raises(EndpointError) as refused:
        make_captions(client, csv_path, image_dir, tmp_path / "other.jsonl", CaptionConfig(model="m", concurrency=1),
                      progress=False)
    assert str(refused.value) == ("the endpoint refused the request (AuthenticationError: bad key); "
                                  "check --base-url, --model and the API key")
    assert len(client.requests) == 1  # the other images are not tried after a refusal
    # a client without an api_key attribute (any OpenAI-shaped object) fails the same way, nothing to scrub
    keyless = Models(by_url, {}, raise_for={rows[0][1]: failing("down")})
    del keyless.api_key
    summary = make_captions(keyless, csv_path, image_dir, tmp_path / "keyless.jsonl", CaptionConfig(model="m"),
                            limit=1, progress=False)
    assert summary.errors == {"InternalServerError": 1}


def test_images_not_reached_after_a_stop_are_counted_as_interrupted(four, tmp_path):
    import threading

    csv_path, image_dir, rows, by_url = four
    stop = threading.Event()

    client = Models(by_url, {}, stop_at_reader=stop)
    summary = make_captions(client, csv_path, image_dir, tmp_path / "refs.jsonl",
                            CaptionConfig(model="m", verifier_model="reader", concurrency=1), progress=False, stop=stop)
    assert summary.accepted_at == {1: 1} and summary.interrupted == 3 and summary.rejected == 0
    assert "interrupted: 3 images not finished" in summary.table()


def test_the_summary_table_reports_every_count():
    summary = cap.CaptionSummary(images=5, skipped_done=2, missing_images=1, accepted_at={3: 1, 1: 2}, rejected=1,
                                 leak_attempts=2, rejected_for_leak=1, verifier_misses=3, malformed_attempts=1,
                                 errors={"RateLimitError": 2, "APITimeoutError": 1},
                                 usage={"requests": 9, "prompt_tokens": 900, "completion_tokens": 90, "cost": 0.01234},
                                 seconds=2.0)
    assert summary.table() == "\n".join([
        "images to caption      5  (2 done before, 1 without an image file)",
        "accepted               3",
        "  at attempt 1          2",
        "  at attempt 3          1",
        "rejected (to review)   1  (1 whose last attempt leaked the diagnosis)",
        "attempts leaking       2",
        "verifier misses        3",
        "malformed captions     1",
        "errors (left for the next run) 3",
        "  APITimeoutError      1",
        "  RateLimitError       2",
        "requests 9, tokens in 900 / out 90, cost 0.0123",
        "time 2.0 s (2.00 images/s)"])
    quiet = cap.CaptionSummary(interrupted=4)
    assert quiet.table().splitlines()[-2:] == ["time 0.0 s (0.00 images/s)",
                                               "interrupted: 4 images not finished; run the command again to continue"]
    assert "requests 0, tokens in 0 / out 0, cost 0.0000" in quiet.table()


def test_a_stop_mid_image_ends_that_image_before_its_next_attempt(four, tmp_path):
    import threading

    csv_path, image_dir, rows, by_url = four
    stop = threading.Event()

    # e.g. SIGTERM while the reader answers the first attempt
    client = Models(by_url, {rows[0][1]: [("good", "lichen planus"), ("good", rows[0][1])]}, stop_at_reader=stop)
    out = tmp_path / "refs.jsonl"
    summary = make_captions(client, csv_path, image_dir, out, CaptionConfig(model="m", verifier_model="reader",
                                                                          concurrency=1), progress=False, stop=stop)
    assert len(client.requests) == 2  # no second attempt after the stop
    assert summary.interrupted == 4 and summary.rejected == 0
    # the unfinished image is neither accepted nor sent to review: the next run does it again
    assert not out.exists() and not side_files(out)[0].exists()


def test_images_without_a_file_are_counted_not_captioned(four, tmp_path):
    csv_path, image_dir, rows, by_url = four
    df = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    pd.concat([df, df.iloc[[0]].assign(md5hash="e" * 32)]).to_csv(tmp_path / "more.csv", index=False)
    summary = make_captions(Models(by_url, {}), tmp_path / "more.csv", image_dir, tmp_path / "refs.jsonl",
                            CaptionConfig(model="m"), progress=False)
    assert (summary.images, summary.missing_images, sum(summary.accepted_at.values())) == (4, 1, 4)
    assert "(0 done before, 1 without an image file)" in summary.table()


def test_rejections_whose_last_attempt_leaked_are_counted_apart(four, tmp_path):
    csv_path, image_dir, rows, by_url = four
    script = {label: [("leak", "-")] for _, label in rows[:3]} | {rows[3][1]: [("good", "lichen planus")]}
    summary = make_captions(Models(by_url, script), csv_path, image_dir, tmp_path / "refs.jsonl",
                            CaptionConfig(model="m", max_attempts=2, concurrency=1), progress=False)
    assert summary.rejected == 4 and summary.rejected_for_leak == 3 and summary.leak_attempts == 6


def test_a_refusals_message_quotes_at_most_200_characters_of_it(four, tmp_path):
    csv_path, image_dir, rows, by_url = four
    denied = type("PermissionDeniedError", (Exception,), {})
    client = Models(by_url, {}, raise_for={label: denied("y" * 500) for _, label in rows})
    with pytest.raises(EndpointError) as refused:
        make_captions(client, csv_path, image_dir, tmp_path / "refs.jsonl", CaptionConfig(model="m"), progress=False)
    assert f"(PermissionDeniedError: {'y' * 200}); check --base-url" in str(refused.value)
