"""How paths are stored: as text, losslessly, including names that are not UTF-8; and how
lists from Python reach a query: as a registered Arrow table, never a long ``IN`` list."""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from typing import Any, Iterator

_RAW = "raw:"   # stored paths that are not UTF-8: "raw:" + bytes, \xNN-escaped (never "/...")


def to_db(path: str) -> str:
    """The stored form of a path: itself, or a lossless escaped form for non-UTF-8 names."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return raw_form(path)


def raw_form(path: str) -> str:
    """The escaped form a path takes when its name is not UTF-8 (a prefix of the stored
    form of every such file under a folder with this path)."""
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


@contextmanager
def registered(con: Any, name: str, **columns: tuple[Any, str]) -> Iterator[None]:
    """``name`` is a table of ``columns`` (values, Arrow type name) inside the block.

    pyarrow is imported here, on first use: never on the path to the first decode.
    """
    import pyarrow as pa

    table = pa.table({col: pa.array(values, getattr(pa, kind)())
                      for col, (values, kind) in columns.items()})
    con.register(name, table)
    try:
        yield
    finally:
        con.unregister(name)
