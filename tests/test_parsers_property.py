"""Property tests: the parsers never raise, are idempotent on their own rendered output, and every reward stays
inside its documented range."""

import string

from hypothesis import given, settings
from hypothesis import strategies as st

from skinflow.data.formats import CAPTION_FIELDS, Target, parse_answer, parse_caption, render_answer, render_caption
from skinflow.data.ontology import ONTOLOGY
from skinflow.rl.rewards import REWARDS, reward_range

labels = st.sampled_from(ONTOLOGY.labels)
noise = st.text(alphabet=st.characters(), max_size=300)
entry = st.one_of(labels, labels.map(str.upper), st.text(alphabet=string.ascii_letters + " ", max_size=20))
marker = st.sampled_from(["1. ", "- ", "* ", "", "3) ", "• "])
answer_like = st.builds(
    lambda entries, markers, close, prefix: prefix + "<answer>\n" + "\n".join(m + e for m, e in zip(markers, entries)) + ("\n</answer>" if close else ""),
    st.lists(entry, max_size=9), st.lists(marker, min_size=9, max_size=9), st.booleans(), noise,
)
caption_like = st.builds(
    lambda pairs, close: "<caption>\n" + "\n".join(f"{k}: {v}" for k, v in pairs) + ("\n</caption>" if close else ""),
    st.lists(st.tuples(st.sampled_from(CAPTION_FIELDS + ("other",)), st.text(max_size=15)), max_size=10), st.booleans(),
)
completions = st.one_of(noise, answer_like, caption_like, st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
                        st.builds(lambda a, b: a + "\n" + b, caption_like, answer_like))


@settings(max_examples=300, deadline=None)
@given(completions)
def test_parsers_never_raise_and_are_idempotent(text):
    answer = parse_answer(text)
    assert len(answer.labels) <= 6 and len(set(answer.labels)) == len(answer.labels)
    assert all(label in ONTOLOGY for label in answer.labels)
    if answer.labels:
        again = parse_answer(render_answer(answer.labels))
        assert again.labels == answer.labels and again.status == "ok"
    fields, status = parse_caption(text)
    assert set(fields) <= set(CAPTION_FIELDS) and status in ("ok", "unclosed", "missing", "empty")
    if fields:
        assert parse_caption(render_caption(fields)) == (fields, "ok")


def test_parser_handles_a_100kb_string_quickly():
    import time

    text = "<answer>\n" + "\n".join(f"{i}. not a condition {i}" for i in range(6000)) + "\n</answer>" + "x" * 20000
    start = time.perf_counter()
    parsed = parse_answer(text)
    assert parsed.labels == () and parsed.entries == 6000
    assert time.perf_counter() - start < 30


captions = st.dictionaries(st.sampled_from(CAPTION_FIELDS), st.text(min_size=1, max_size=12), max_size=8)
targets = st.builds(lambda label, cap: Target(label, ONTOLOGY.nine(label), ONTOLOGY.three(label), caption=cap or None), labels, captions)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(completions, targets), min_size=1, max_size=5))
def test_every_reward_stays_in_its_documented_range(pairs):
    texts, refs = [p[0] for p in pairs], [p[1] for p in pairs]
    for name, reward in REWARDS.items():
        low, high = reward_range(name)
        values = reward(texts, refs)
        assert values.shape == (len(texts),)
        assert ((values >= low - 1e-6) & (values <= high + 1e-6)).all(), (name, values)
