"""Output formats, prompts and the target record: the single module parsers, rewards and warmup targets share.

A completion has up to three blocks, in this order (DESIGN.md §3)::

    <caption>
    colour: red
    ...eight fields, fixed names and order...
    </caption>
    <answer>
    1. psoriasis
    2. eczema
    </answer>

Stage I asks for the caption block, Stage II for the answer block (optionally after ``<think>...</think>``),
and the supervised warmup's target is the caption block (when the record has a caption) then the answer block.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from skinflow.data.ontology import canonicalize
from skinflow.errors import UserError

CAPTION_FIELDS: tuple[str, ...] = (
    "colour",
    "location",
    "shape",
    "lesion type",
    "size",
    "border",
    "surface",
    "distribution",
)
# CSV column of each caption field (a space is awkward in column names).
CAPTION_COLUMNS: dict[str, str] = {name: name.replace(" ", "_") for name in CAPTION_FIELDS}
MAX_RANKS = 6

SYSTEM_PROMPT = "You are a dermatology assistant."
PROMPTS: dict[str, str] = {
    "warmup": (
        "Describe the skin lesion in <caption></caption> with the fields colour, location, shape, lesion type, "
        "size, border, surface, distribution; then list up to 6 diagnoses, most likely first, in <answer></answer>."
    ),
    "caption": (
        "Describe the skin lesion in <caption></caption> with the fields colour, location, shape, lesion type, "
        "size, border, surface, distribution."
    ),
    "diagnosis": "List up to 6 diagnoses for this skin lesion, most likely first, in <answer></answer>.",
}
IMAGE_SUFFIXES = (".jpg", ".png", ".jpeg")  # how an image file is named: <md5hash><suffix>, tried in this order
SPECIAL_TAGS = ("<caption>", "</caption>", "<answer>", "</answer>", "<think>", "</think>")


class DataError(UserError):
    """Bad input data: the message names the file, row or column."""


@dataclass
class Target:
    """What is known about one image: the reference every metric and reward compares against.

    Not frozen: Lightning's batch transfer rebuilds dataclasses field by field and rejects frozen ones.
    """

    label: str
    nine: str
    three: str
    fitzpatrick: int = -1
    md5hash: str = ""
    caption: dict[str, str] | None = None
    differential: tuple[str, ...] = field(default_factory=tuple)


FREE_TEXT = "text"  # key of an unstructured reference caption (a captions file's free text)


def render_caption(fields: dict[str, str]) -> str:
    """The caption block for the fields present in ``fields`` (schema order, unknown keys ignored); a caption
    with only free text (key ``text``) renders that text."""
    lines = [f"{name}: {fields[name]}" for name in CAPTION_FIELDS if fields.get(name)]
    if not lines and fields.get(FREE_TEXT):
        lines = [fields[FREE_TEXT]]
    return "<caption>\n" + "\n".join(lines) + "\n</caption>"


def render_answer(labels: list[str] | tuple[str, ...]) -> str:
    """The ranked-answer block: at most ``MAX_RANKS`` numbered entries, most likely first."""
    lines = [f"{rank}. {label}" for rank, label in enumerate(labels[:MAX_RANKS], start=1)]
    return "<answer>\n" + "\n".join(lines) + "\n</answer>"


def render_target(target: Target, with_caption: bool = True, task: str = "warmup") -> str:
    """The teacher-forced text for a prompt (``task``): ``warmup``: caption block (if any) then answer block;
    ``caption``: the caption block alone; ``diagnosis``: the answer block alone."""
    answer = render_answer((target.label, *[d for d in target.differential if d != target.label]))
    caption = render_caption(target.caption) if with_caption and target.caption else None
    if task == "caption":
        if caption is None:
            raise ValueError(f"record {target.md5hash or target.label!r} has no caption to teach under the caption prompt")
        return caption
    if task == "warmup" and caption is not None:
        return caption + "\n" + answer
    return answer


_CONTENT = re.compile(r"^(?:[a-z ]+: |\d+\. )(.+)$", re.MULTILINE)


def content_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the *content* of a rendered target: caption values and answer entries.

    Everything else (tags, field names, numbering, newlines) is format, the same for every image.

    >>> text = render_caption({"colour": "red"})
    >>> [text[a:b] for a, b in content_spans(text)]
    ['red']
    """
    return [m.span(1) for m in _CONTENT.finditer(text)]


_BLOCK = {tag: re.compile(rf"<{tag}>(.*?)(?:</{tag}>|\Z)", re.DOTALL) for tag in ("caption", "answer")}
_LIST_MARKER = re.compile(r"^\s*(?:\d+\s*[.):-]|[-*•])\s*")


@dataclass(frozen=True)
class ParsedAnswer:
    """Canonical labels in rank order (deduplicated) and whether the block was found and closed."""

    labels: tuple[str, ...]
    status: str  # "ok" | "unclosed" | "missing" | "empty"
    unknown: int = 0  # entries that named no ontology label
    entries: int = 0  # non-empty entries read (known, unknown and repeated)


def parse_answer(text: str, k: int = MAX_RANKS) -> ParsedAnswer:
    """Parse the ranked-answer block of ``text`` into at most ``k`` canonical labels. Never raises.

    >>> parse_answer("<answer>\\n1. Psoriasis\\n2. eczema\\n3. psoriasis\\n</answer>")
    ParsedAnswer(labels=('psoriasis', 'eczema'), status='ok', unknown=0, entries=3)
    """
    if not isinstance(text, str):
        return ParsedAnswer((), "missing")
    match = _BLOCK["answer"].search(text)
    if match is None:
        return ParsedAnswer((), "missing")
    status = "ok" if "</answer>" in text[match.start():] else "unclosed"
    labels: list[str] = []
    unknown = entries = 0
    for line in match.group(1).splitlines():
        entry = _LIST_MARKER.sub("", line).strip()
        if not entry:
            continue
        entries += 1
        if len(labels) == k:  # past the k-th label entries are only counted (format checks the count)
            continue
        label = canonicalize(entry)
        if label is None:
            unknown += 1
        elif label not in labels:
            labels.append(label)
    if not labels and status == "ok":
        status = "empty"
    return ParsedAnswer(tuple(labels), status, unknown, entries)


def _caption_lines(match: re.Match) -> dict[str, tuple[str, int, int]]:
    """``{field: (value, start, end)}`` of a caption block match: for each schema field the first line that names
    it and gives it a value (the value whitespace-normalised; the span in the matched text, newline included)."""
    lines: dict[str, tuple[str, int, int]] = {}
    start = match.start(1)
    for line in match.group(1).splitlines(keepends=True):
        name, sep, value = line.partition(":")
        name = " ".join(name.strip().lower().split())
        if sep and name in CAPTION_FIELDS and name not in lines and value.strip():
            lines[name] = (" ".join(value.split()), start, start + len(line))
        start += len(line)
    return lines


def caption_line_spans(text: str) -> dict[str, tuple[int, int]]:
    """Character span (start, end, the newline included) of the line each field is read from by ``parse_caption``:
    the first line of the caption block that names the field and gives it a value. Fields without one are absent.

    >>> text = "<caption>\\ncolour: red\\nshape: round\\n</caption>"
    >>> {k: text[a:b] for k, (a, b) in caption_line_spans(text).items()}
    {'colour': 'colour: red\\n', 'shape': 'shape: round\\n'}
    """
    match = _BLOCK["caption"].search(text) if isinstance(text, str) else None
    if match is None:
        return {}
    return {name: (a, b) for name, (_, a, b) in _caption_lines(match).items()}


def parse_caption(text: str) -> tuple[dict[str, str], str]:
    """Parse the caption block into ``{field: value}`` for the schema's fields, plus a status. Never raises."""
    if not isinstance(text, str):
        return {}, "missing"
    match = _BLOCK["caption"].search(text)
    if match is None:
        return {}, "missing"
    fields = {name: value for name, (value, _, _) in _caption_lines(match).items()}
    status = "ok" if "</caption>" in text[match.start():] else "unclosed"
    return fields, status if fields else "empty"


def read_id_csv(path, required: tuple[str, ...] = ("md5hash",), image_dir=None):
    """A CSV keyed by Fitzpatrick17k's ``md5hash`` as text (no NA coercion), checked: the file (and ``image_dir``,
    when given) exists, the ``required`` columns are there, every ``md5hash`` is an MD5. Errors name the file,
    column or row (``DataError``). The data commands (download, audit-data, captions) read their CSV with it."""
    from pathlib import Path

    import pandas as pd

    from skinflow.data.names import MD5_PATTERN, invalid_ids

    path = Path(path)
    if not path.is_file():
        raise DataError(f"label CSV not found: {path}")
    if image_dir is not None and not Path(image_dir).is_dir():
        raise DataError(f"image folder not found: {image_dir}")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    for column in required:
        if column not in df.columns:
            raise DataError(f"{path}: required column {column!r} is missing (columns: {list(df.columns)})")
    bad = invalid_ids(df["md5hash"].tolist(), MD5_PATTERN)
    if bad:
        raise DataError(f"{path} row {bad[0] + 2}: md5hash {df['md5hash'].iloc[bad[0]]!r} is not an MD5 (32 lower-case "
                        f"hex characters; {len(bad)} such rows): files are named and checked by it")
    return df


def image_files(md5hashes, folder) -> list[str | None]:
    """The file name of each id's image in ``folder`` (``<md5hash>.jpg|png|jpeg``, in ``IMAGE_SUFFIXES`` order), or
    ``None``; one directory listing for all of them."""
    import os

    names = {entry.name for entry in os.scandir(folder)}
    return [next((f"{m}{s}" for s in IMAGE_SUFFIXES if f"{m}{s}" in names), None) for m in md5hashes]


PARSED_SEPARATOR = "; "  # the prediction table's ``parsed`` column: the ranked labels, best first


def join_parsed(labels: list[str]) -> str:
    """The ``parsed`` cell of a prediction row (``SkinflowStage.prediction_rows``) for ranked ``labels``."""
    return PARSED_SEPARATOR.join(labels)


def split_parsed(cell: object) -> list[str]:
    """The ranked labels of a ``parsed`` cell, best first; [] for an empty or missing cell.

    >>> split_parsed(join_parsed(["eczema", "psoriasis"])), split_parsed(""), split_parsed(None)
    (['eczema', 'psoriasis'], [], [])
    """
    return [label.strip() for label in str(cell or "").split(PARSED_SEPARATOR.strip()) if label.strip()]
