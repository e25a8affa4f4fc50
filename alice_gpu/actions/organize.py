"""Actions, organize: every indexed file under some roots to ``DEST/<template>``.

Nothing is decoded: a file's place comes from its row (date taken by the chain of
:mod:`alice_gpu.decode.dates`, camera, generator, model, tags, content hash). The
whole plan is made, and every template value checked, before the first file moves;
then the files go through the journal of ``--move-to`` (:class:`.moves.Mover`:
fsynced, resumable after kill -9, checked before it is trusted, undone byte for
byte), which ``organize`` itself finishes first when a run was killed. Collisions:
the same bytes already at a destination is a duplicate, left where it is; other
bytes get a numeric suffix (``name-1.jpg``); nothing is ever overwritten.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from ..decode.dates import date_taken
from ..errors import QueryError
from .files import same_bytes
from .moves import MoveReport, Mover, PlannedMove
from .template import Template, TemplateError, checker, parse

if TYPE_CHECKING:
    from ..store import Store

log = logging.getLogger(__name__)

HOWS = ("move", "copy", "link")
PAGE = 4096


@dataclass
class OrganizeReport:
    """What ``organize`` did (or, in a dry run, would do). ``files``: one entry a file."""

    dest: str
    template: str
    how: str
    dry_run: bool
    journal: str | None = None
    files: list[dict[str, Any]] = field(default_factory=list)
    done: int = 0
    duplicates: int = 0
    suffixed: int = 0
    not_indexed: int = 0
    resumed: int = 0
    problems: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"dest": self.dest, "template": self.template, "how": self.how,
                "dry_run": self.dry_run, "journal": self.journal, "planned": self.planned,
                "done": self.done, "duplicates": self.duplicates, "suffixed": self.suffixed,
                "not_indexed": self.not_indexed, "resumed": self.resumed,
                "problems": self.problems, "files": self.files}

    @property
    def planned(self) -> int:
        return sum(f["action"] == self.how for f in self.files)


def check_places(roots: Sequence[str], dest: str) -> None:
    """Refuse a destination inside a root, or a root inside it: organising would file its
    own output again (or walk it as new files)."""
    d = os.path.realpath(dest)
    for root in roots:
        r = os.path.realpath(root)
        if d == r or d.startswith(r.rstrip(os.sep) + os.sep):
            raise QueryError(f"--to {dest} is inside {root}: organising would file its own "
                             f"output again; choose a folder outside the roots")
        if r.startswith(d.rstrip(os.sep) + os.sep):
            raise QueryError(f"{root} is inside --to {dest}; choose a folder outside the roots")


def facts(row: dict[str, Any], root: str) -> dict[str, Any]:
    """A row's template fields."""
    path = row["path"]
    when, source = date_taken(row.get("taken_at"), row.get("taken_from"), path, row["mtime_ns"])
    make, model = (row.get("camera_make") or "").strip(), (row.get("camera_model") or "").strip()
    camera = model if make and model.lower().startswith(make.lower()) else f"{make} {model}"
    rel = os.path.relpath(path, root).split(os.sep)
    name = os.path.basename(path)
    stem, ext = os.path.splitext(name)
    gen = row.get("ai_source")
    return {"taken": when, "date_from": source, "camera": camera.strip() or None,
            "source": gen if gen and gen != "none" else None, "model": row.get("ai_model"),
            "project": rel[0] if len(rel) > 1 else None, "kind": row.get("kind") or "image",
            "format": (row.get("format") or "").lower() or None,
            "tags": ",".join(row.get("tags") or []) or None, "hash": row.get("content_hash"),
            "name": name, "stem": stem, "ext": ext}


def _sha256(path: str) -> str | None:
    digest = hashlib.sha256()
    try:
        with open(path, "rb", buffering=0) as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


class Planner:
    """Destinations for rows, with collisions settled against the disk and the plan."""

    def __init__(self, template: Template, dest: str, how: str, report: OrganizeReport):
        self.template, self.dest, self.how, self.report = template, dest, how, report
        self.inside = checker(dest)
        self.taken: dict[str, str | None] = {}     # planned destination -> content hash

    def _same(self, row: dict[str, Any], there: str) -> bool:
        try:
            st = os.lstat(there)
        except OSError:
            return False
        if not os.path.isfile(there) or os.path.islink(there) or st.st_size != row["size"]:
            return False
        if row.get("content_hash"):
            return _sha256(there) == row["content_hash"]
        return same_bytes(row["path"], there)

    def place(self, row: dict[str, Any], root: str) -> PlannedMove | None:
        f = facts(row, root)
        dst = os.path.join(self.dest, self.template.render(f, repr(row["path"])))
        if not self.inside(dst):
            raise TemplateError(f"the template puts {row['path']!r} outside --to; refused")
        base, ext = os.path.splitext(dst)
        entry = {"src": row["path"], "date": f["taken"].isoformat(), "date_from": f["date_from"]}
        for k in range(100000):
            cand = dst if k == 0 else f"{base}-{k}{ext}"
            if cand in self.taken:
                if self.taken[cand] and self.taken[cand] == row.get("content_hash"):
                    return self._duplicate(entry, cand)
                continue
            if os.path.lexists(cand):
                if self._same(row, cand):
                    return self._duplicate(entry, cand)
                continue
            self.taken[cand] = row.get("content_hash")
            self.report.suffixed += k > 0
            self.report.files.append({**entry, "dst": cand, "action": self.how})
            return PlannedMove(row["path"], cand, 0, None, self.how)
        raise QueryError(f"no free name for {dst!r}")

    def _duplicate(self, entry: dict, there: str) -> None:
        self.report.duplicates += 1
        self.report.files.append({**entry, "dst": there, "action": "duplicate"})
        return None


def _rows(store: "Store", roots: Sequence[str]) -> Iterator[tuple[dict[str, Any], str]]:
    """Every row under the roots, page by page (a root inside another: once)."""
    from ..discover import normalize_path

    roots = sorted({normalize_path(r) for r in roots}, key=len)
    seen_roots: list[str] = []
    for root in roots:
        if any(root.startswith(r.rstrip(os.sep) + os.sep) for r in seen_roots):
            continue
        seen_roots.append(root)
        after = ""
        while True:
            page, after = store.organize_page(root, after, PAGE)
            if not page:
                break
            for row in page:
                yield row, root if os.path.isdir(root) else os.path.dirname(root)


def organize(open_store: Callable[[bool], Any], roots: Sequence[str], dest: str,
             template: str | None, how: str, dry_run: bool) -> OrganizeReport:
    """Plan every indexed file under ``roots`` into ``dest`` by ``template``, then carry the
    plan out by ``how`` through a journal in ``dest`` (unless ``dry_run``)."""
    if how not in HOWS:
        raise QueryError(f"unknown way to organize {how!r} (choose from {', '.join(HOWS)})")
    tpl = parse(template)
    dest = os.path.abspath(os.path.expanduser(dest))
    check_places(roots, dest)
    report = OrganizeReport(dest, tpl.text, how, dry_run)
    moves = MoveReport(None, dry_run=dry_run)
    with open_store(dry_run) as store:
        mover = Mover(store, dest)
        if not dry_run:
            for journal in mover.incomplete():
                log.warning("finishing what %s left open", journal)
                mover.resume(journal, moves)
        planner = Planner(tpl, dest, how, report)
        plan = []
        for row, root in _rows(store, roots):
            if row["status"] != "ok":
                report.not_indexed += 1
                report.files.append({"src": row["path"], "dst": None, "action": "left",
                                     "reason": f"not indexed ({row['status']})"})
                continue
            move = planner.place(row, root)
            if move is not None:
                plan.append(move)
        if not dry_run and plan:
            mover.move(plan, moves)
    report.journal, report.done, report.resumed = moves.journal, moves.moved, moves.resumed
    report.problems = moves.problems
    return report
