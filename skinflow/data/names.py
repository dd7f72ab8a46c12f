"""Names that become paths: record ids and file names the kit builds must stay inside their folder.

A Fitzpatrick17k ``md5hash`` names the image file ``<md5hash>.jpg`` and, downstream, artifacts such as attention
overlays; a pipeline stage name names its handoff checkpoint. A value like ``../../x`` or ``/abs/x`` would read or
write outside the folder it belongs in, so ids are validated once, at load (``plain_file_name`` plus the data's id
pattern), and names built from free text go through ``file_stem``.
"""

from __future__ import annotations

import re

MD5_PATTERN = r"[0-9a-f]{32}"  # Fitzpatrick17k's md5hash: the MD5 of the image bytes, lower-case hex
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def plain_file_name(name: str) -> bool:
    """True when ``name`` is one path component that stays in its folder: not empty, no separator, not ``.`` or
    ``..``, no NUL, no leading ``~`` or ``-``.

    >>> [plain_file_name(n) for n in ("e438ac94", "img_1.v2", "../x", "/abs/x", "a\\\\b", "..", "", "~root")]
    [True, True, False, False, False, False, False, False]
    """
    return (bool(name) and name not in (".", "..") and not any(c in name for c in "/\\\x00")
            and not name.startswith(("~", "-")))


def file_stem(text: str, fallback: str = "item") -> str:
    """A safe file-name stem from free text: runs of characters outside ``[A-Za-z0-9._-]`` become ``_``, leading
    dots go (no hidden or parent names); empty results give ``fallback``.

    >>> file_stem("../../etc/passwd"), file_stem("e438ac94"), file_stem("..."), file_stem("a b/c")
    ('_.._etc_passwd', 'e438ac94', 'item', 'a_b_c')
    """
    stem = _UNSAFE.sub("_", text).lstrip(".")
    return stem if stem and stem != "_" else fallback


def invalid_ids(ids, pattern: str = MD5_PATTERN) -> list[int]:
    """Positions of the ids that are not plain file names or do not match ``pattern`` in full.

    >>> invalid_ids(["e438ac94425903ae88ef3de457debcfc", "../../x", "E438AC94425903AE88EF3DE457DEBCFC"])
    [1, 2]
    >>> invalid_ids(["img1", "../img2"], pattern=r".*")
    [1]
    """
    compiled = re.compile(pattern)
    return [i for i, v in enumerate(ids) if not (isinstance(v, str) and plain_file_name(v) and compiled.fullmatch(v))]
