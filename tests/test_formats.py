import pytest

from skinflow.data.formats import CAPTION_FIELDS, Target, parse_answer, parse_caption, render_answer, render_caption, render_target


def test_caption_round_trip_in_schema_order():
    fields = {name: f"value {i}" for i, name in enumerate(reversed(CAPTION_FIELDS))}
    text = render_caption(fields)
    assert [line.split(":")[0] for line in text.splitlines()[1:-1]] == list(CAPTION_FIELDS)
    assert parse_caption(text) == (fields, "ok")


def test_answer_round_trip_and_at_most_six():
    labels = ["psoriasis", "eczema", "melanoma", "milia", "vitiligo", "keloid", "acne"]
    parsed = parse_answer(render_answer(labels))
    assert parsed.labels == tuple(labels[:6]) and parsed.status == "ok"


def test_warmup_target_is_caption_then_answer_with_gold_first():
    target = Target("melanoma", "malignant melanoma", "malignant", caption={"colour": "brown"},
                    differential=("melanoma", "malignant melanoma", "nevocytic nevus"))
    text = render_target(target)
    assert text.index("<caption>") < text.index("<answer>")
    assert parse_answer(text).labels == ("melanoma", "malignant melanoma", "nevocytic nevus")
    assert "<caption>" not in render_target(Target("melanoma", "x", "y"))


def test_parse_statuses():
    assert parse_answer("no block here").status == "missing"
    assert parse_answer("<answer>\n1. psoriasis").status == "unclosed"
    assert parse_answer("<answer>\n1. not a disease\n</answer>") .status == "empty"
    assert parse_answer("<answer>\n- Psoriasis\n* eczma\n</answer>").labels == ("psoriasis", "eczema")


def test_an_id_must_match_the_pattern_in_full_and_be_a_plain_file_name():
    from skinflow.data.names import invalid_ids

    good = "e438ac94425903ae88ef3de457debcfc"
    ids = [good, good + "0", "0" + good, good[:-1], good + ".jpg", f"x/{good}", good.upper(), 42, good]
    assert invalid_ids(ids) == [1, 2, 3, 4, 5, 6, 7]
    assert invalid_ids(["img_001", "img_001/../x", "-rf", "img_002"], pattern=r"img_\d+|-rf") == [1, 2]


def test_plain_file_names_and_stems_at_their_edges():
    from skinflow.data.names import file_stem, plain_file_name

    assert [plain_file_name(n) for n in (".", "X", "a\x00b", "-x", "~x", "x.")] == [False, True, False, False, False, True]
    assert file_stem("XX") == "XX" and file_stem("X.png") == "X.png" and file_stem("/") == "item"


def test_rendered_blocks_exactly():
    """The exact text the model is taught: numbered from 1, at most six; a caption in schema order; free text only
    when no schema field is given; the warmup target is the caption block, one newline, the answer block."""
    from skinflow.data.formats import Target, render_answer, render_caption, render_target

    assert render_answer(["a", "b"]) == "<answer>\n1. a\n2. b\n</answer>"
    assert render_answer([str(i) for i in range(8)]).count("\n") == 7  # six entries and the two tags
    assert render_caption({"shape": "round", "colour": "red", "text": "ignored", "other": "x"}) == \
        "<caption>\ncolour: red\nshape: round\n</caption>"
    assert render_caption({"text": "a red round plaque"}) == "<caption>\na red round plaque\n</caption>"
    target = Target("psoriasis", "n", "t", md5hash="abc", caption={"colour": "red"}, differential=("eczema",))
    caption, answer = "<caption>\ncolour: red\n</caption>", "<answer>\n1. psoriasis\n2. eczema\n</answer>"
    assert render_target(target, task="warmup") == caption + "\n" + answer
    assert render_target(target, task="caption") == caption and render_target(target, task="diagnosis") == answer
    assert render_target(target, with_caption=False, task="warmup") == answer
    bare = Target("psoriasis", "n", "t", md5hash="abc")
    with pytest.raises(ValueError, match="record 'abc' has no caption to teach under the caption prompt"):
        render_target(bare, task="caption")


def test_parse_statuses_counts_and_colons_in_values():
    from skinflow.data.formats import parse_answer, parse_caption

    assert parse_answer("no block").status == "missing" and parse_answer(None).labels == ()
    parsed = parse_answer("<answer>\n1. psoriasis\n\n2. xyzzy\n3. qwerty\n4. eczema\n</answer>")
    assert (parsed.labels, parsed.unknown, parsed.entries) == (("psoriasis", "eczema"), 2, 4)  # blank line skipped
    assert parse_answer("<answer>\n1. psoriasis\n2. eczema\n3. acne\n", k=2).labels == ("psoriasis", "eczema")
    assert parse_caption("nothing") == ({}, "missing") and parse_caption(None) == ({}, "missing")
    assert parse_caption("<caption>\ncolour: red\n") == ({"colour": "red"}, "unclosed")
    assert parse_caption("<caption>\nnothing here\n</caption>") == ({}, "empty")
    assert parse_caption("<caption>\nsize: 1: 3 cm\n</caption>")[0] == {"size": "1: 3 cm"}  # the first colon splits
