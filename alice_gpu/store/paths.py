"""How paths are stored: as text, losslessly, including names that are not UTF-8."""

from __future__ import annotations

import os
import re

_RAW = "raw:"   # stored paths that are not UTF-8: "raw:" + bytes, \xNN-escaped (never "/...")


def to_db(path: str) -> str:
    """The stored form of a path: itself, or a lossless escaped form for non-UTF-8 names."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        raw = os.fsencode(path).replace(b"\\", b"\\\\")
        return _RAW + raw.decode("utf-8", "backslashreplace")


def from_db(text: str) -> str:
    """Inverse of :func:`to_db`: the path as the OS gives it (surrogate-escaped bytes)."""
    if not text.startswith(_RAW):
        return text
    body = text[len(_RAW):].encode("utf-8")
    raw = re.sub(rb"\\(\\|x[0-9a-f]{2})",
                 lambda m: b"\\" if m.group(1) == b"\\" else bytes([int(m.group(1)[1:], 16)]),
                 body)
    return os.fsdecode(raw)
