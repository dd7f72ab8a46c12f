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


def test_parse_answer_and_caption_spans_of_a_non_text_are_empty_and_missing():
    """A completion that is not text (None from a failed decode, a float NaN from a table cell) parses to nothing,
    with the status that says so, instead of raising."""
    from skinflow.data.formats import ParsedAnswer, caption_line_spans

    for value in (None, float("nan"), 3):
        assert parse_answer(value) == ParsedAnswer((), "missing")
        assert caption_line_spans(value) == {}


def test_entries_past_k_and_blank_lines_are_counted_not_ranked():
    """Labels past the k-th are counted as entries (the format reward checks the count) but not ranked; a blank
    line inside the block is skipped, not the end of the list."""
    text = "<answer>\n1. psoriasis\n\n2. eczema\n3. melanoma\n4. acne\n</answer>"
    parsed = parse_answer(text, k=2)
    assert parsed.labels == ("psoriasis", "eczema") and parsed.entries == 4 and parsed.status == "ok"
    assert parse_answer(text).labels == ("psoriasis", "eczema", "melanoma", "acne")


def test_read_id_csv_checks_the_file_folder_columns_and_ids_naming_each(tmp_path):
    from skinflow.data.formats import DataError, read_id_csv

    good, other = "0" * 31 + "a", "b" * 32
    csv = tmp_path / "labels.csv"
    csv.write_text(f"md5hash,label,note,fitzpatrick_scale\n{good},psoriasis,NA,3\n{other},eczema,007,07\n")
    df = read_id_csv(csv, required=("md5hash", "label"), image_dir=tmp_path)
    assert df["md5hash"].tolist() == [good, other]
    assert df["note"].tolist() == ["NA", "007"]  # text as written: no NA coercion, no numbers
    assert df["fitzpatrick_scale"].tolist() == ["3", "07"]
    with pytest.raises(DataError, match=r"^label CSV not found: .*nowhere\.csv$"):
        read_id_csv(tmp_path / "nowhere.csv")
    with pytest.raises(DataError, match=r"^image folder not found: .*no_images$"):
        read_id_csv(csv, image_dir=tmp_path / "no_images")
    with pytest.raises(DataError, match=r"labels\.csv: required column 'url' is missing \(columns: \['md5hash', 'label', 'note', 'fitzpatrick_scale'\]\)"):
        read_id_csv(csv, required=("md5hash", "url"))
    csv.write_text(f"md5hash,label\n{good},psoriasis\nNOT-AN-MD5,eczema\n../{other},acne\n")
    with pytest.raises(DataError, match=r"labels\.csv row 3: md5hash 'NOT-AN-MD5' is not an MD5 \(32 lower-case hex "
                                        r"characters; 2 such rows\): files are named and checked by it"):
        read_id_csv(csv)


def test_image_files_finds_each_ids_file_in_suffix_order(tmp_path):
    from skinflow.data.formats import IMAGE_SUFFIXES, image_files

    a, b, c = "a" * 32, "b" * 32, "c" * 32
    for name in (f"{a}.png", f"{a}.jpg", f"{b}.jpeg", f"{c}.txt", f"{c}"):
        (tmp_path / name).write_bytes(b"")
    first = IMAGE_SUFFIXES[0]
    assert image_files([a, b, c], tmp_path) == [f"{a}{first}", f"{b}.jpeg", None]
    assert image_files([], tmp_path) == []
