"""Web, groups: duplicate groups that are ready when the page opens.

At a million files the tiered answer takes minutes, so no request computes it:
:class:`Groups` computes it on a background thread (the same ``duplicates`` call as
the CLI, decisions honoured) and stores it in the index folder (``groups.json``)
with the index revision it came from. A write that can change which files are
duplicates moves the revision: the stored groups are then shown as stale while new
ones are computed. Moves and decisions only move the index's layout: the stored
groups are then brought up to date in place (members' paths, keepers chosen by
hand, groups marked "not duplicates" or already acted on), without computing them
again. Each group has a stable id (a digest of its members), so a page's actions
name a group the server knows, never a list of files from the request.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..api import AliceIndex
    from ..search.queries import DuplicateGroup, DuplicatesResult

log = logging.getLogger(__name__)

GROUPS_FILE = "groups.json"


def group_id(group: "DuplicateGroup") -> str:
    return hashlib.sha1(",".join(str(f.id) for f in sorted(
        group.files, key=lambda f: f.id)).encode()).hexdigest()[:16]


class Groups:
    """The groups of the index, computed in the background; ``view()`` says where they
    are, ``listed()`` the groups still to review, as the index is now."""

    def __init__(self, api: "AliceIndex", move_to: Path):
        self.api = api
        self.path = Path(api.folder) / GROUPS_FILE
        self.aside = str(move_to).rstrip(os.sep) + os.sep
        self.result: "DuplicatesResult | None" = None
        self.revision: int | None = None
        self.layout: int | None = None           # the layout self.shown reflects
        self.shown: list[tuple[str, "DuplicateGroup"]] = []
        self.seconds: float | None = None
        self.computing_since: float | None = None
        self.error: str | None = None
        self.lock = threading.Lock()
        self._load()

    def _load(self) -> None:
        from ..remote import codec

        try:
            doc = json.loads(self.path.read_text())
            self.result = codec.decode(doc["result"])
            self.revision, self.seconds = int(doc["revision"]), float(doc["seconds"])
        except (OSError, ValueError, KeyError, TypeError):
            self.result = None

    def ensure(self) -> None:
        """Compute the groups again when the index's files changed since they were made;
        bring them up to date when only moves or decisions were made."""
        try:
            revision, layout = self.api.revision()
        except Exception as exc:  # noqa: BLE001 - the page says why; the server goes on
            self.error = str(exc)
            return
        with self.lock:
            if self.computing_since is not None:
                return
            if revision != self.revision:
                self.computing_since, self.error = time.monotonic(), None
                threading.Thread(target=self._compute, args=(revision,), name="alice-groups",
                                 daemon=True).start()
                return
            if layout == self.layout:
                return
        self.reconcile(layout)

    def _compute(self, revision: int) -> None:
        from ..remote import codec

        t0 = time.monotonic()
        try:
            layout = self.api.revision()[1]
            result = self.api.duplicates()
            seconds = time.monotonic() - t0
            doc = {"revision": revision, "seconds": seconds, "computed_at": time.time(),
                   "result": codec.encode(result)}
            try:
                tmp = self.path.with_name(f".{GROUPS_FILE}.tmp")
                tmp.write_text(json.dumps(doc))
                os.replace(tmp, self.path)
            except OSError as exc:                   # kept in memory; stored next time
                log.info("could not store the duplicate groups: %s", exc)
            with self.lock:
                self.result, self.revision, self.seconds = result, revision, seconds
            self.reconcile(layout)
        except Exception as exc:  # noqa: BLE001 - shown on the page; tried again later
            log.warning("computing duplicate groups failed: %s", exc)
            with self.lock:
                self.error = str(exc)
        finally:
            with self.lock:
                self.computing_since = None

    def reconcile(self, layout: int | None = None) -> None:
        """The stored groups as the index is now: members where they are now (a file
        gone from the index leaves its group), keepers chosen by hand, and without the
        groups marked "not duplicates" or whose copies all lie in the set-aside folder."""
        if layout is None:
            layout = self.api.revision()[1]
        with self.lock:
            result = self.result
        if result is None:
            return
        apart: list[frozenset[int]] = []
        chosen: set[int] = set()
        for decision in self.api.decisions():
            held = frozenset(f["id"] for f in decision["files"] if not f["changed"])
            if decision["kind"] == "not-duplicates":
                apart.append(held)
            elif decision["keeper"] in held:
                chosen.add(int(decision["keeper"]))
        where = dict(self.api.locate({f.id for g in result.groups for f in g.files}))
        shown = []
        for group in result.groups:
            now = self._as_now(group, where, apart, chosen)
            if now is not None:
                shown.append((group_id(group), now))
        with self.lock:
            self.shown, self.layout = shown, layout

    def _as_now(self, group: "DuplicateGroup", where: dict[int, str],
                apart: list[frozenset[int]], chosen: set[int]) -> "DuplicateGroup | None":
        ids = {f.id for f in group.files}
        if any(ids <= held for held in apart):
            return None
        files = [replace(f, path=where[f.id]) for f in group.files if f.id in where]
        if len(files) < 2:
            return None
        keeper = next((f for f in files if f.id in chosen), None)
        reason = "chosen by hand" if keeper is not None else group.keeper_reason
        if keeper is None:
            rule = next((f.id for f in group.files if f.path == group.keeper), None)
            keeper = next((f for f in files if f.id == rule), files[0])
        if all(f.path.startswith(self.aside) for f in files if f is not keeper):
            return None                          # acted on: its copies are set aside
        return replace(group, files=files, keeper=keeper.path, keeper_reason=reason)

    def view(self) -> dict[str, Any]:
        """Where the groups are: ``state`` (ready, stale, computing, failed, none), how
        long the last computation took and how long this one has run."""
        with self.lock:
            computing = self.computing_since is not None
            state = ("failed" if self.error and not computing else
                     "computing" if computing and self.result is None else
                     "stale" if computing else "ready" if self.result is not None else "none")
            return {"state": state, "error": self.error, "seconds": self.seconds,
                    "elapsed": time.monotonic() - self.computing_since if computing else None,
                    "revision": self.revision}

    def listed(self) -> list[tuple[str, "DuplicateGroup"]]:
        """(id, group) of every group still to review."""
        with self.lock:
            return list(self.shown)

    def find(self, gid: str) -> "DuplicateGroup | None":
        return next((g for i, g in self.listed() if i == gid), None)


def reclaim(group: "DuplicateGroup") -> int:
    """Bytes freed by setting aside every file of the group but its keeper."""
    return sum(f.size for f in group.files if f.path != group.keeper)
