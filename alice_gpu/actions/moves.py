"""Actions, moves: the non-keepers of duplicate groups go to a folder, with a journal and undo.

Nothing is ever deleted or overwritten. Each move is written to the journal
(and fsynced) before it happens and marked done after, so a run killed at any
point, ``kill -9`` included, leaves every file either where it was or where the
journal says it went; the next ``--move-to`` into the same folder, or ``undo``,
finishes the job, but only after :mod:`.journal` has checked that the journal
is this index's and stays inside its folders. A move is a hard link then an
unlink; across filesystems the bytes go to a temporary file created
exclusively, which is then linked into place, so a file that appears at the
destination meanwhile is never overwritten. Symlinks are never followed at
either end. A file that cannot be moved is a counted problem, and the rest go on.
The index follows each file (its row's path changes; its id, features and vector stay).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from ..errors import QueryError
from . import files
from .files import regular, same_file, settle, why
from .journal import (JOURNAL_GLOB, JOURNAL_KIND, JOURNAL_VERSION, Bounds, Journal,
                      check_journal, real)

if TYPE_CHECKING:
    from ..store import Store

log = logging.getLogger(__name__)

FOLLOW_BATCH = 256        # moves per index update
_CLOSED = {"end", "undone", "undo-incomplete"}     # a journal's last word: nothing to finish


@dataclass(frozen=True)
class PlannedMove:
    src: str
    dst: str
    group: int
    tier: str | None
    how: str = "move"          # or 'copy', 'link' (organize)


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

    def problem(self, path: str, why: str) -> str:
        self.problems.append({"path": path, "reason": why})
        return why


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


# ------------------------------------------------------------------ journals of one folder

relocate = files.relocate      # module attributes: the tests' kill points wrap them
place = files.place


def _put(src: str, dst: str, how: str, allowed) -> None:
    if how == "move":
        relocate(src, dst, allowed)
    else:
        place(src, dst, how, allowed)


def _reason(state: str, src: str, dst: str) -> str:
    if state == "both":
        return f"both {src} and {dst} exist; left as they are"
    return "the file is gone from both places"


class Mover:
    """Carries out, finishes or undoes the moves of journals in one folder, and makes
    the index follow; a journal is checked (:func:`.journal.check_journal`) first."""

    def __init__(self, store: "Store", folder: str | os.PathLike[str],
                 batch: int = FOLLOW_BATCH):
        self.store, self.batch = store, batch
        self.folder = os.path.abspath(os.fspath(folder))
        self.bounds = Bounds.of(self.folder, store.index_roots())

    def _follow(self, pairs: list[tuple[str, str]]) -> None:
        """The index follows these moves."""
        if pairs:
            self.store.move_paths(pairs)

    def _records(self, path: Path) -> list[dict]:
        entries = Journal.entries(path)
        check_journal(path, entries, self.store.folder, self.bounds)
        return [e.record for e in entries]

    def incomplete(self) -> list[Path]:
        folder = Path(self.folder)
        if not folder.is_dir():
            return []
        return [p for p in sorted(folder.glob(JOURNAL_GLOB))
                if not {r.get("op") for r in Journal.read(p)} & _CLOSED]

    def resume(self, path: Path, report: MoveReport) -> None:
        """Finish a journal a killed run left open: every planned move is done or undone."""
        records = self._records(path)
        done = {r["src"] for r in records if r.get("op") in ("moved", "skipped")}
        hows = _hows(records)
        # moves done before the kill whose index update may not have been committed
        unmoved = {r.get("src") for r in records if r.get("op") == "unmoved"}
        follow = [(r["src"], r["dst"]) for r in records if r.get("op") == "moved"
                  and hows.get(r["src"]) == "move" and r["src"] not in unmoved]
        journal = Journal(path)
        try:
            for r in records:
                if r.get("op") == "move" and r["src"] not in done:
                    pair = self._finish_one(r["src"], r["dst"], journal, report, hows[r["src"]])
                    if pair and hows[r["src"]] == "move":
                        follow.append(pair)
            self._follow(follow)
            follow = []
            journal.write(op="end", at=time.time())
        finally:
            journal.close()
            self._follow(follow)

    def _finish_one(self, src: str, dst: str, journal: Journal, report: MoveReport,
                    how: str = "move") -> tuple[str, str] | None:
        try:
            state = settle(src, dst) if how == "move" else files.settle_placed(src, dst, how)
            if state == "todo":
                _put(src, dst, how, self.bounds.dst_problem)
                state = "done"
        except OSError as exc:
            journal.write(op="skipped", src=src, reason=report.problem(src, why(exc)))
            return None
        if state != "done":
            journal.write(op="skipped", src=src,
                          reason=report.problem(src, _reason(state, src, dst)))
            return None
        journal.write(op="moved", src=src, dst=dst)
        report.resumed += 1
        return src, dst

    def _new_journal(self) -> Path:
        try:
            os.makedirs(self.folder, exist_ok=True)
        except OSError as exc:
            raise QueryError(f"cannot create the move folder {self.folder}: {why(exc)}") from None
        path = Path(self.folder) / time.strftime("alice-gpu-journal-%Y%m%d-%H%M%S.jsonl")
        k = 1
        while path.exists():
            path = path.with_name(time.strftime(f"alice-gpu-journal-%Y%m%d-%H%M%S-{k}.jsonl"))
            k += 1
        return path

    def move(self, plan: list[PlannedMove], report: MoveReport) -> None:
        path = self._new_journal()
        report.journal = str(path)
        journal = Journal(path)
        follow: list[tuple[str, str]] = []
        try:
            journal.write(journal=JOURNAL_KIND, version=JOURNAL_VERSION,
                          db=real(self.store.folder), move_to=real(self.folder), at=time.time())
            for m in plan:
                pair = self._move_one(m, journal, report)
                if pair:
                    follow.append(pair)
                if len(follow) >= self.batch:
                    self._follow(follow)
                    follow = []
            self._follow(follow)                  # the index follows before the journal ends
            follow = []
            journal.write(op="end", at=time.time())
        finally:
            journal.close()
            self._follow(follow)

    def _move_one(self, m: PlannedMove, journal: Journal, report: MoveReport
                  ) -> tuple[str, str] | None:
        problem = self.bounds.src_problem(m.src) or self.bounds.dst_problem(m.dst)
        if problem is None and os.path.lexists(m.dst):
            problem = f"{m.dst} already exists; not overwritten"
        if problem is not None:
            report.problem(m.src, problem)
            return None
        try:
            st = regular(m.src)
        except OSError as exc:
            report.problem(m.src, why(exc))
            return None
        journal.write(op="move", src=m.src, dst=m.dst, size=st.st_size,
                      mtime_ns=st.st_mtime_ns, group=m.group, tier=m.tier, how=m.how)
        try:
            _put(m.src, m.dst, m.how, self.bounds.dst_problem)
        except OSError as exc:
            journal.write(op="skipped", src=m.src, reason=report.problem(m.src, why(exc)))
            return None
        journal.write(op="moved", src=m.src, dst=m.dst)
        report.moved += 1
        return (m.src, m.dst) if m.how == "move" else None

    def undo(self, path: Path, report: MoveReport) -> None:
        """Put every file the journal moved back where it was; never over an existing file."""
        records = self._records(path)
        if records[-1].get("op") != "end":
            self.resume(path, MoveReport(None))    # settle a killed run first
            records = self._records(path)
        undone = {r["src"] for r in records if r.get("op") == "unmoved"}
        hows = _hows(records)
        report.journal = str(path)
        journal = Journal(path)
        follow: list[tuple[str, str]] = []
        try:
            for r in records:
                how = hows.get(r.get("src"), "move")
                if r.get("op") == "moved" and r["src"] not in undone \
                        and self._restore_one(r["src"], r["dst"], journal, report, how) \
                        and how == "move":
                    follow.append((r["dst"], r["src"]))
                if len(follow) >= self.batch:
                    self._follow(follow)
                    follow = []
            self._follow(follow)
            follow = []
            journal.write(op="undone" if not report.problems else "undo-incomplete",
                          at=time.time())
        finally:
            journal.close()
            self._follow(follow)

    def _restore_one(self, src: str, dst: str, journal: Journal, report: MoveReport,
                     how: str = "move") -> bool:
        try:
            if how != "move":
                problem = files.unplace(src, dst, how)
                if problem:
                    report.problem(src, problem)
                    return False
            elif os.path.lexists(src) and same_file(src, dst):
                os.unlink(dst)                       # killed between link and unlink
            elif os.path.lexists(src):
                report.problem(src, "a file exists there now; not overwritten")
                return False
            elif not os.path.lexists(dst):
                report.problem(src, f"{dst} is gone")
                return False
            else:
                relocate(dst, src, self.bounds.src_problem)
        except OSError as exc:
            report.problem(src, why(exc))
            return False
        journal.write(op="unmoved", src=src, dst=dst)
        files.prune_empty(os.path.dirname(dst), self.folder)
        report.restored += 1
        return True


def _hows(records: list[dict]) -> dict[str, str]:
    """How each planned file was to be placed (a journal before organize: moved)."""
    return {r["src"]: r.get("how", "move") for r in records if r.get("op") == "move"}


def move_duplicates(open_store: Callable[[bool], Any], find: Callable[[], Any],
                    move_to: str, act_on: list[str], dry_run: bool) -> tuple[Any, MoveReport]:
    """Finish what a killed run left in ``move_to``, find the groups (``find``), then move
    every non-keeper of the ``act_on`` tiers; ``open_store(read_only)`` opens the index."""
    dest = os.path.abspath(os.path.expanduser(move_to))
    report = MoveReport(None, dry_run=dry_run)
    if not dry_run:
        with open_store(False) as store:
            mover = Mover(store, dest)
            for journal in mover.incomplete():
                log.warning("finishing the moves of %s, which a run left open", journal)
                mover.resume(journal, report)
    result = find()
    with open_store(dry_run) as store:
        report.planned = plan_moves(result.groups, dest, store.index_roots(), act_on)
        if not dry_run and report.planned:
            Mover(store, dest).move(report.planned, report)
    return result, report


def undo_moves(store: "Store", journal: str | os.PathLike[str]) -> MoveReport:
    """Put back what the journal moved, after checking it names ``store``'s index."""
    path = Path(os.path.abspath(os.path.expanduser(os.fspath(journal))))
    report = MoveReport(str(path))
    Mover(store, path.parent).undo(path, report)
    return report


def move_ids(open_store: Callable[[bool], Any], ids: list[int], move_to: str) -> MoveReport:
    """Move the files with these ids into ``move_to`` (each under its path relative to its
    indexed root), through a journal as ``duplicates --move-to`` does; files already there
    stay. A journal a killed run left open in ``move_to`` is finished first."""
    dest = os.path.abspath(os.path.expanduser(move_to))
    report = MoveReport(None)
    inside = dest.rstrip(os.sep) + os.sep
    with open_store(False) as store:
        mover = Mover(store, dest)
        for journal in mover.incomplete():
            log.warning("finishing the moves of %s, which a run left open", journal)
            mover.resume(journal, report)
        rows = store.assets_by_ids(ids)
        for missing in sorted(set(ids) - set(rows)):
            report.problem(f"id {missing}", "not in the index")
        roots = store.index_roots()
        report.planned = [PlannedMove(r["path"], os.path.join(dest, relative_to_root(
            r["path"], roots)), 0, None) for _, r in sorted(rows.items())
            if not r["path"].startswith(inside)]
        if report.planned:
            mover.move(report.planned, report)
    return report


def list_journals(store: "Store", move_to: str) -> list[dict[str, Any]]:
    """The journals in ``move_to`` this index may act on, newest first: their name, when,
    how many files they moved and put back, and whether they are finished or undone."""
    folder = Path(os.path.abspath(os.path.expanduser(move_to)))
    if not folder.is_dir():
        return []
    bounds = Bounds.of(folder, store.index_roots())
    out = []
    for path in sorted(folder.glob(JOURNAL_GLOB), reverse=True):
        try:
            entries = Journal.entries(path)
            check_journal(path, entries, store.folder, bounds)
        except QueryError:                     # another index's, or not to be trusted
            continue
        ops = [e.record.get("op") for e in entries[1:]]
        out.append({"name": path.name, "at": entries[0].record.get("at"),
                    "moved": ops.count("moved"), "restored": ops.count("unmoved"),
                    "finished": "end" in ops, "undone": "undone" in ops})
    return out
