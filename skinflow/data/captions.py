"""Reference captions for real images, from a captions file keyed by ``md5hash``.

Stage I rewards a caption against a reference; Fitzpatrick17k has none, so real records take them from a file:

- CSV: a ``md5hash`` column plus either the eight field columns (``colour``, ``location``, ``shape``,
  ``lesion type`` or ``lesion_type``, ``size``, ``border``, ``surface``, ``distribution``; any subset, empty
  cells allowed) or one free-text ``caption`` column;
- JSONL: one object per line with the same keys.

Free text written in the schema (``colour: red; shape: round`` or one ``field: value`` per line) is split into
fields; other free text is kept whole under the key ``text`` and scored by token F1 (see
``skinflow.rl.rewards.caption_fields_reward``). Errors name the file and the row; a key that looks like a
misspelt field (``colur``, ``lesion-type``) is an error rather than a field silently dropped.
"""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path

import pandas as pd

from skinflow.data.formats import CAPTION_FIELDS, FREE_TEXT
from skinflow.errors import UserError
_FIELD_ALIASES = {name.replace(" ", "_"): name for name in CAPTION_FIELDS} | {name: name for name in CAPTION_FIELDS}
# keys a captions row may carry; one close to these but not among them (``colur``) is a misspelling: an error,
# since its value would otherwise be dropped. Other extra columns (``label``, ``notes``) are ignored.
KNOWN_KEYS = frozenset({*_FIELD_ALIASES, "md5hash", "caption", "_row"})


class CaptionsError(UserError):
    pass


def split_free_text(text: str) -> dict[str, str]:
    """Schema-shaped free text -> fields; anything else -> ``{"text": text}``.

    >>> split_free_text("colour: red; lesion type: plaque")
    {'colour': 'red', 'lesion type': 'plaque'}
    >>> split_free_text("A red scaly plaque on the elbow.")
    {'text': 'A red scaly plaque on the elbow.'}
    """
    fields: dict[str, str] = {}
    for piece in re.split(r"[;\n]", text):
        name, sep, value = piece.partition(":")
        name = " ".join(name.strip().lower().split())
        if sep and name in CAPTION_FIELDS and value.strip():
            fields.setdefault(name, " ".join(value.split()))
    return fields or ({FREE_TEXT: " ".join(text.split())} if text.strip() else {})


def _rows(path: Path) -> list[dict]:
    if path.suffix.lower() in (".jsonl", ".json"):
        rows = []
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise CaptionsError(f"{path} line {number}: not valid JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise CaptionsError(f"{path} line {number}: expected an object, got {type(row).__name__}")
            rows.append({**row, "_row": f"line {number}"})
        return rows
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    return [{**row, "_row": f"row {i + 2}"} for i, row in enumerate(df.to_dict("records"))]


def read_captions(path: str | Path) -> dict[str, dict[str, str]]:
    """``{md5hash: {field: value}}`` from a CSV or JSONL captions file (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise CaptionsError(f"captions file not found: {path}")
    captions: dict[str, dict[str, str]] = {}
    for row in _rows(path):
        md5 = str(row.get("md5hash") or "").strip()
        if not md5:
            raise CaptionsError(f"{path} {row['_row']}: no md5hash")
        if md5 in captions:
            raise CaptionsError(f"{path} {row['_row']}: md5hash {md5} appears twice")
        misspelled = {k: close[0] for k in row if k not in KNOWN_KEYS and (close := difflib.get_close_matches(str(k), KNOWN_KEYS, 1, 0.75))}
        if misspelled:
            key, meant = next(iter(misspelled.items()))
            raise CaptionsError(f"{path} {row['_row']} (md5hash {md5}): unknown key {key!r}; did you mean {meant!r}? "
                                f"(known keys: {sorted(KNOWN_KEYS - {'_row'})})")
        fields = {_FIELD_ALIASES[k]: " ".join(str(v).split()) for k, v in row.items() if k in _FIELD_ALIASES and str(v).strip()}
        if not fields and str(row.get("caption") or "").strip():
            fields = split_free_text(str(row["caption"]))
        if not fields:
            known = sorted(set(_FIELD_ALIASES) | {"caption"})
            raise CaptionsError(f"{path} {row['_row']} (md5hash {md5}): no caption field with a value; expected some of {known}")
        captions[md5] = fields
    return captions
