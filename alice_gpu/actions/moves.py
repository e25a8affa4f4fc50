"""Actions, moves: the non-keepers of duplicate groups go to a folder, with a journal and undo.

Nothing is ever deleted. Each move is written to the journal (and fsynced)
before it happens and marked done after, so a run killed at any point, ``kill
-9`` included, leaves every file either where it was or where the journal says
it went; the next ``--move-to`` into the same folder, or ``undo``, finishes the
job. A move is a ``rename`` (atomic, keeps the mtime) on one filesystem; across
filesystems it is copy to a temporary name, fsync, rename into place, then
unlink of the source, so a file is never only half somewhere. The index follows
each file (its row's path changes; its id, features and vector stay).

The journal is JSON lines: a header, then ``move`` / ``moved`` / ``unmoved``
records, then ``end`` when every planned move is settled.
"""

from __future__ import annotations

import errno
import filecmp
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from ..errors import QueryError
from ..store import Store

log = logging.getLogger(__name__)

JOURNAL_GLOB = "alice-gpu-journal-*.jsonl"
JOURNAL_VERSION = 1
_TMP_SUFFIX = ".alice-gpu-partial"


@dataclass(frozen=True)
class PlannedMove:
    src: str
    dst: str
    group: int
    tier: str | None


@dataclass
class MoveReport:
    """What a move (or its dry run, or an undo) did; ``problems`` are files left alone."""

    journal: str | None
    planned: list[PlannedMove] = field(default_factory=list)
    moved: int = 0
    restored: int = 0
    resumed: int = 0
    problems: list[dict] = field(default_factory=list)
    dry_run: bool = False

    def to_dict(self) -> dict:
        return {"journal": self.journal, "dry_run": self.dry_run, "moved": self.moved,
                "restored": self.restored, "resumed": self.resumed,
                "planned": [asdict(p) for p in self.planned], "problems": self.problems}


def relative_to_root(path: str, roots: Iterable[str]) -> str:
    """``path`` relative to the deepest indexed root holding it (its name for a root that
    is the file itself), else relative to the filesystem's root."""
    best = ""
    for root in roots:
        root = os.path.normpath(root)
        if path == root:
            return os.path.basename(path)
        if path.startswith(root.rstrip(os.sep) + os.sep) and len(root) > len(best):
            best = root
    if best:
        return os.path.relpath(path, best)
    return os.path.relpath(path, os.path.splitdrive(path)[0] + os.sep)


def plan_moves(groups: list, move_to: str, roots: Iterable[str], act_on: list[str]
               ) -> list[PlannedMove]:
    """Every non-keeper of a tier in ``act_on``, to ``move_to`` / its path under its root.

    Files already in ``move_to`` (set aside by an earlier move; the index follows them)
    are never moved again, and a group whose keeper is one of them is left alone.
    """
    roots = list(roots)
    dest = os.path.abspath(move_to)
    inside = dest.rstrip(os.sep) + os.sep
    out = []
    for n, group in enumerate(groups, 1):
        if group.keeper.startswith(inside):
            continue
        for f in group.files:
            if f.path == group.keeper or f.tier not in act_on or f.path.startswith(inside):
                continue
            out.append(PlannedMove(f.path, os.path.join(dest, relative_to_root(f.path, roots)),
                                   n, f.tier))
    return out


class Journal:
    """Append-only JSON lines, each fsynced: what is written survives a kill."""

    def __init__(self, path: Path):
        self.path = path
        self.fh = open(path, "a", encoding="utf-8")
        if self.fh.tell() and not path.read_bytes().endswith(b"\n"):
            self.fh.write("\n")        # end a line a kill cut short, so it stays one bad line

    def write(self, **record) -> None:
        self.fh.write(json.dumps(record, ensure_ascii=True) + "\n")   # lone surrogates escaped
        self.fh.flush()
        os.fsync(self.fh.fileno())

    def close(self) -> None:
        self.fh.close()

    @staticmethod
    def read(path: Path) -> list[dict]:
        out = []
        try:
            with open(path, encoding="utf-8") as fh:
                for line in fh:
                    try:
                        out.append(json.loads(line))
                    except ValueError:          # a line cut by a kill: it was never acted on
                        continue
        except OSError as exc:
            raise QueryError(f"cannot read journal {path}: {exc.strerror}") from None
        if not out or out[0].get("journal") != "alice-gpu moves":
            raise QueryError(f"{path} is not an alice-gpu move journal")
        return out


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _relocate(src: str, dst: str) -> None:
    """Move one file without ever having it only half somewhere; refuses to overwrite."""
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if os.path.lexists(dst):
        raise FileExistsError(f"{dst} already exists")
    try:
        os.link(src, dst)              # atomic, and fails instead of overwriting
        os.unlink(src)
    except OSError as exc:
        if os.path.lexists(dst) and os.path.samefile(src, dst):
            os.unlink(src)             # the link was made: finish the move
        elif exc.errno in (errno.EXDEV, errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS):
            # another filesystem, or one without hard links: copy instead
            tmp = dst + _TMP_SUFFIX
            shutil.copy2(src, tmp)     # bytes and mtime
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            if os.path.lexists(dst):
                raise FileExistsError(f"{dst} already exists") from None
            os.rename(tmp, dst)
            os.unlink(src)
        else:
            raise
    _fsync_dir(os.path.dirname(dst))
    _fsync_dir(os.path.dirname(src) or ".")


def _settle(src: str, dst: str) -> str:
    """Where a planned move stands after a kill: 'done', 'todo' or a problem."""
    at_src, at_dst = os.path.lexists(src), os.path.lexists(dst)
    if at_src and at_dst:
        # killed between link and unlink, or after a cross-filesystem copy was renamed
        # into place: the source goes only when the destination holds the same bytes
        if os.path.samefile(src, dst) or filecmp.cmp(src, dst, shallow=False):
            os.unlink(src)
            return "done"
        return "both"
    if at_dst:
        return "done"
    if at_src:
        partial = dst + _TMP_SUFFIX                # a copy cut short: the source is whole
        if os.path.lexists(partial):
            os.unlink(partial)
        return "todo"
    return "missing"


class Mover:
    """Carries out (or finishes) the moves of journals in one folder, updating the index."""

    def __init__(self, store: Store):
        self.store = store

    def _follow(self, pairs: list[tuple[str, str]]) -> None:
        if pairs:
            self.store.move_paths(pairs)

    def incomplete(self, move_to: str) -> list[Path]:
        folder = Path(move_to)
        if not folder.is_dir():
            return []
        return [p for p in sorted(folder.glob(JOURNAL_GLOB))
                if Journal.read(p)[-1].get("op") != "end"]

    def resume(self, path: Path, report: MoveReport) -> None:
        """Finish a journal a killed run left open: every planned move is done or undone."""
        records = Journal.read(path)
        done = {r["src"] for r in records if r.get("op") == "moved"}
        journal = Journal(path)
        try:
            follow = []
            for r in records:
                if r.get("op") != "move" or r["src"] in done:
                    continue
                state = _settle(r["src"], r["dst"])
                if state == "todo":
                    _relocate(r["src"], r["dst"])
                    state = "done"
                if state == "done":
                    journal.write(op="moved", src=r["src"], dst=r["dst"])
                    follow.append((r["src"], r["dst"]))
                    report.resumed += 1
                else:
                    report.problems.append({"path": r["src"], "reason": _reason(state, r)})
                    journal.write(op="skipped", src=r["src"], reason=state)
            # moves done before the kill whose index update may not have been committed
            follow += [(r["src"], r["dst"]) for r in records if r.get("op") == "moved"]
            self._follow(follow)
            journal.write(op="end", at=time.time())
        finally:
            journal.close()

    def move(self, plan: list[PlannedMove], move_to: str, report: MoveReport,
             batch: int = 256) -> None:
        os.makedirs(move_to, exist_ok=True)
        path = Path(move_to) / time.strftime("alice-gpu-journal-%Y%m%d-%H%M%S.jsonl")
        k = 1
        while path.exists():
            path = path.with_name(time.strftime(f"alice-gpu-journal-%Y%m%d-%H%M%S-{k}.jsonl"))
            k += 1
        report.journal = str(path)
        journal = Journal(path)
        try:
            journal.write(journal="alice-gpu moves", version=JOURNAL_VERSION,
                          db=str(self.store.folder), move_to=os.path.abspath(move_to),
                          at=time.time())
            for start in range(0, len(plan), batch):
                follow = []
                for m in plan[start:start + batch]:
                    if os.path.lexists(m.dst):
                        report.problems.append({"path": m.src, "reason":
                                                f"{m.dst} already exists; not overwritten"})
                        continue
                    try:
                        st = os.stat(m.src)
                    except OSError as exc:
                        report.problems.append({"path": m.src, "reason": exc.strerror})
                        continue
                    journal.write(op="move", src=m.src, dst=m.dst, size=st.st_size,
                                  mtime_ns=st.st_mtime_ns, group=m.group, tier=m.tier)
                    try:
                        _relocate(m.src, m.dst)
                    except OSError as exc:
                        report.problems.append({"path": m.src, "reason": str(exc)})
                        journal.write(op="skipped", src=m.src, reason=str(exc))
                        continue
                    journal.write(op="moved", src=m.src, dst=m.dst)
                    follow.append((m.src, m.dst))
                    report.moved += 1
                self._follow(follow)
            journal.write(op="end", at=time.time())
        finally:
            journal.close()

    def undo(self, path: Path, report: MoveReport) -> None:
        """Put every file the journal moved back where it was; never over an existing file."""
        records = Journal.read(path)
        if records[-1].get("op") != "end":
            self.resume(path, MoveReport(None))    # settle a killed run first
            records = Journal.read(path)
        undone = {r["src"] for r in records if r.get("op") == "unmoved"}
        journal = Journal(path)
        report.journal = str(path)
        try:
            follow = []
            for r in _moved(records):
                if r["src"] in undone:
                    continue
                src, dst = r["src"], r["dst"]
                if os.path.lexists(src) and os.path.lexists(dst) and os.path.samefile(src, dst):
                    os.unlink(dst)                   # killed between link and unlink
                elif os.path.lexists(src):
                    report.problems.append({"path": src, "reason":
                                            "a file exists there now; not overwritten"})
                    continue
                elif not os.path.lexists(dst):
                    report.problems.append({"path": src, "reason": f"{dst} is gone"})
                    continue
                else:
                    _relocate(dst, src)
                journal.write(op="unmoved", src=src, dst=dst)
                follow.append((dst, src))
                report.restored += 1
                if len(follow) >= 256:
                    self._follow(follow)
                    follow = []
            self._follow(follow)
            journal.write(op="undone" if not report.problems else "undo-incomplete",
                          at=time.time())
        finally:
            journal.close()


def _moved(records: list[dict]) -> Iterator[dict]:
    return (r for r in records if r.get("op") == "moved")


def _reason(state: str, r: dict) -> str:
    if state == "both":
        return f"both {r['src']} and {r['dst']} exist; left as they are"
    return "the file is gone from both places"
