"""Actions, journal: the record of a move, and the checks before one is trusted.

A journal is JSON lines in the move folder: a header naming the index and the
folder, then ``move`` / ``moved`` / ``skipped`` / ``unmoved`` records, then
``end``. Anyone who can write into the move folder can write a journal there,
so a journal is acted on only when its header names this index and this
folder, every destination lies inside the folder and every source under one
of the index's roots, all compared on resolved paths. Anything else is refused
as a whole, naming the journal and the line, before a single file moves.
"""

from __future__ import annotations

import fnmatch
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ..errors import QueryError

JOURNAL_GLOB = "alice-gpu-journal-*.jsonl"
JOURNAL_KIND = "alice-gpu moves"
JOURNAL_VERSION = 1
PATH_OPS = ("move", "moved", "skipped", "unmoved")


class JournalError(QueryError):
    """A journal that is not acted on (it names another index or folder, or a path
    outside them): one line naming the journal and the line."""


@dataclass(frozen=True)
class Entry:
    """One record of a journal and the line it was read from (1-based)."""

    line: int
    record: dict


def real(path: str | os.PathLike[str]) -> str:
    """A path with every symlink resolved (a missing tail is kept as written)."""
    return os.path.realpath(os.path.abspath(os.fspath(path)))


def inside(path: str, folder_real: str) -> bool:
    """``path`` is an entry strictly inside ``folder_real`` once its folder is resolved
    (the entry itself is not resolved: a symlink there is a name, never followed)."""
    name = os.path.basename(path)
    if name in ("", ".", ".."):
        return False
    parent = real(os.path.dirname(path) or ".")
    try:
        return os.path.commonpath([parent, folder_real]) == folder_real
    except ValueError:          # different drives
        return False


class Journal:
    """Append-only JSON lines, each fsynced: what is written survives a kill."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.fh = open(path, "a", encoding="utf-8")
            if self.fh.tell() and not path.read_bytes().endswith(b"\n"):
                self.fh.write("\n")    # end a line a kill cut short, so it stays one bad line
        except OSError as exc:
            raise QueryError(f"cannot write journal {path}: {exc.strerror}") from None

    def write(self, **record) -> None:
        try:
            self.fh.write(json.dumps(record, ensure_ascii=True) + "\n")  # lone surrogates escaped
            self.fh.flush()
            os.fsync(self.fh.fileno())
        except OSError as exc:      # nothing more moves without its record
            raise QueryError(f"cannot write journal {self.path}: {exc.strerror}") from None

    def close(self) -> None:
        self.fh.close()

    @staticmethod
    def entries(path: Path) -> list[Entry]:
        """Every record with its line; a line cut by a kill (never acted on) is skipped."""
        out = []
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as fh:
                for n, line in enumerate(fh, 1):
                    try:
                        record = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(record, dict):
                        out.append(Entry(n, record))
        except OSError as exc:
            raise QueryError(f"cannot read journal {path}: {exc.strerror}") from None
        if not out or out[0].record.get("journal") != JOURNAL_KIND:
            raise QueryError(f"{path} is not an alice-gpu move journal")
        return out

    @staticmethod
    def read(path: Path) -> list[dict]:
        return [e.record for e in Journal.entries(path)]


def header_index(path: Path) -> str:
    """The index folder a journal's header names (for ``undo`` without ``--db``)."""
    head = Journal.entries(path)[0].record
    db = head.get("db")
    if not isinstance(db, str) or not db:
        raise JournalError(f"{path}:1: the header names no index")
    return db


@dataclass(frozen=True)
class Bounds:
    """Where a journal's files may be: destinations inside ``folder``, sources under one
    of ``roots`` and not inside ``folder`` (all resolved)."""

    folder: str
    roots: tuple[str, ...]

    @classmethod
    def of(cls, folder: str | os.PathLike[str], roots: Iterable[str]) -> "Bounds":
        return cls(real(folder), tuple(real(r) for r in roots))

    def dst_problem(self, dst: object) -> str | None:
        if not isinstance(dst, str) or not os.path.isabs(dst):
            return "a destination that is not an absolute path"
        if not inside(dst, self.folder):
            return f"destination {dst!r} is outside the move folder {self.folder}"
        if fnmatch.fnmatch(os.path.basename(dst), JOURNAL_GLOB):
            return f"destination {dst!r} is a journal's name"
        return None

    def src_problem(self, src: object) -> str | None:
        if not isinstance(src, str) or not os.path.isabs(src):
            return "a source that is not an absolute path"
        if inside(src, self.folder):
            return f"source {src!r} is inside the move folder"
        resolved = os.path.join(real(os.path.dirname(src)), os.path.basename(src))
        for root in self.roots:
            if resolved == root or inside(src, root):      # a root may be a file itself
                return None
        return f"source {src!r} is not under a folder this index was built from"


def check_journal(path: Path, entries: list[Entry], index_folder: str | os.PathLike[str],
                  bounds: Bounds) -> None:
    """Refuse (JournalError) a journal this index must not act on, before anything moves."""
    head = entries[0].record
    if head.get("version") != JOURNAL_VERSION:
        raise JournalError(f"{path}:{entries[0].line}: journal version "
                           f"{head.get('version')!r} is not {JOURNAL_VERSION}")
    db, move_to = head.get("db"), head.get("move_to")
    if not isinstance(db, str) or real(db) != real(index_folder):
        raise JournalError(f"{path}:{entries[0].line}: written for the index at {db}, "
                           f"not {index_folder}; not acted on")
    if not isinstance(move_to, str) or real(move_to) != bounds.folder:
        raise JournalError(f"{path}:{entries[0].line}: written for the move folder {move_to}, "
                           f"not {bounds.folder}; not acted on")
    for e in entries[1:]:
        r = e.record
        if r.get("op") not in PATH_OPS:
            continue
        problem = bounds.src_problem(r.get("src"))
        if problem is None and r.get("op") != "skipped":
            problem = bounds.dst_problem(r.get("dst"))
        if problem is not None:
            raise JournalError(f"{path}:{e.line}: {problem}; the journal is not acted on")
