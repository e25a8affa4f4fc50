"""API, the catalog: what a person asks of the index without a model, and decisions.

``find``, ``show``, ``stats``, tags, and the decisions a person made about duplicate
groups; a mixin of :class:`~.index.AliceIndex`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from ..errors import command_line
from .routing import routed

if TYPE_CHECKING:
    from ..store import Store
    from ..store.filters import Filters

DECISIONS = ("not-duplicates", "keeper")


def _folder_bytes(folder: Any) -> int:
    """The bytes of an index folder's own files (its database, vectors, thumbnails)."""
    total = 0
    for root, _dirs, files in os.walk(os.fspath(folder)):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


class Catalog:
    """The model-free half of the API (see :class:`~.index.AliceIndex`)."""

    folder: Any
    _open: Callable[[bool], "Store"]          # AliceIndex's: the store, or the holder's view

    @routed
    def find(self, filters: "Filters | None" = None, *, limit: int | None = None
             ) -> list[dict[str, Any]]:
        """The files matching ``filters`` (every file when none), by path: what made
        them, when, their tags and hashes. Needs no model (no torch)."""
        from ..store.filters import Filters

        with self._open(read_only=True) as store:
            return store.find(filters or Filters(), limit)

    @routed
    def find_json(self, filters: "Filters | None" = None, *, limit: int | None = None
                  ) -> Iterator[list[str]]:
        """``find`` as JSON objects, one string per file (what ``find --json`` prints),
        in chunks as they are read."""
        from ..store.filters import Filters

        with self._open(read_only=True) as store:
            yield from store.find_json(filters or Filters(), limit)

    @routed
    def find_lines(self, filters: "Filters | None" = None, *, limit: int | None = None
                   ) -> list[tuple[str, str, str | None, str | None]]:
        """``find`` as terminal lines: (path, generator or camera, prompt head, tags)."""
        from ..store.filters import Filters

        with self._open(read_only=True) as store:
            return store.find_lines(filters or Filters(), limit)

    @routed
    def show(self, path: str | os.PathLike[str]) -> dict[str, Any]:
        """One file's whole record; a file not in the index is an error."""
        from ..discover import normalize_path
        from ..errors import QueryError

        key = normalize_path(os.path.expanduser(os.fspath(path)))
        with self._open(read_only=True) as store:
            row = store.record(key)
        if row is None:
            folder = os.path.dirname(key) or "."
            raise QueryError(f"{path} is not in the index; add its folder with "
                             f"{command_line('index', folder, '--db', self.folder)}")
        from ..decode.dates import date_taken

        when, source = date_taken(row.get("taken_at"), row.get("taken_from"), row["path"],
                                  row["mtime_ns"])
        row["date_taken"], row["date_from"] = when.isoformat(timespec="seconds"), source
        return row

    @routed
    def tag(self, tag: str, *, add: bool = True, paths: Iterable[str | os.PathLike[str]] = (),
            filters: "Filters | None" = None) -> int:
        """Add (or remove) ``tag`` on the files among ``paths`` (files or folders; none:
        every file) that match ``filters``, in one statement. Returns how many changed."""
        from ..discover import normalize_path
        from ..errors import QueryError
        from ..store.filters import Filters

        tag = tag.strip()
        if not tag or len(tag) > 200 or any(c in tag for c in "\n\r\t"):
            raise QueryError("a tag is 1 to 200 characters on one line")
        files, folders = [], []
        for p in paths:
            key = normalize_path(os.path.expanduser(os.fspath(p)))
            (folders if os.path.isdir(key) else files).append(key)
        with self._open(read_only=False) as store:
            return store.update_tags(tag, add, filters or Filters(), files, folders)

    @routed
    def tags(self) -> list[tuple[str, int]]:
        with self._open(read_only=True) as store:
            return store.tag_counts()

    @routed
    def auto_tag(self) -> int:
        """Tag every file from its metadata: source:<generator>, model:<name>, camera:<model>."""
        with self._open(read_only=False) as store:
            return store.auto_tags()

    @routed
    def stats(self) -> dict[str, Any]:
        """What the index holds (the keys of ``stats --json``), with breakdowns by source,
        year and failure reason, and the index folder's size on disk."""
        with self._open(read_only=True) as store:
            out = store.stats()
        out["db"] = str(self.folder)
        out["index_bytes"] = _folder_bytes(self.folder)
        return out

    @routed
    def asset(self, asset_id: int) -> dict[str, Any]:
        """One file's whole record, by its id (what ``show`` prints)."""
        from ..errors import QueryError

        with self._open(read_only=True) as store:
            row = store.record_by_id(int(asset_id))
        if row is None:
            raise QueryError(f"no file with id {asset_id} in the index")
        return row

    @routed
    def browse(self, filters: "Filters | None" = None, *, sort: str = "taken",
               descending: bool = True, offset: int = 0, limit: int = 100,
               failed: bool = False) -> dict[str, Any]:
        """A page of files for a grid: ``{"total", "offset", "items"}``, sorted by ``sort``
        (``taken``: date taken, or modified; ``path``; ``size``); ``failed``: the files
        that failed, with their reasons."""
        from ..errors import QueryError
        from ..store.filters import Filters

        if sort not in ("taken", "path", "size"):
            raise QueryError(f"unknown sort {sort!r} (choose from taken, path, size)")
        if not 1 <= int(limit) <= 1000 or int(offset) < 0:
            raise QueryError("a page is 1 to 1000 files from an offset of 0 or more")
        with self._open(read_only=True) as store:
            return store.browse(filters or Filters(), sort, bool(descending), int(offset),
                                int(limit), bool(failed))

    @routed
    def revision(self) -> list[int]:
        """[revision, layout]: the first moves with every write that can change which files
        are duplicates, the second with every move and decision."""
        with self._open(read_only=True) as store:
            return list(store.revision())

    @routed
    def locate(self, ids: Iterable[int]) -> list[list[Any]]:
        """[id, path] of each of these files the index holds, where it is now."""
        with self._open(read_only=True) as store:
            rows = store.assets_by_ids([int(i) for i in ids])
        return [[i, row["path"]] for i, row in sorted(rows.items())]

    @routed
    def decisions(self) -> list[dict[str, Any]]:
        """The decisions made about duplicate groups, newest first, each with its files
        (a file changed since no longer counts: ``changed``)."""
        with self._open(read_only=True) as store:
            return store.decisions()

    def decide(self, kind: str, ids: Iterable[int], *, keeper: int | None = None) -> int:
        """Record a decision about a duplicate group, honoured by every later
        ``duplicates`` until a file in it changes: ``"not-duplicates"`` (no two of
        ``ids`` are a pair), or ``"keeper"`` (``keeper``, one of ``ids``, is kept)."""
        return self.decide_groups(kind, [[list(ids), keeper]])[0]

    @routed
    def decide_groups(self, kind: str, groups: Iterable[Any]) -> list[int]:
        """:meth:`decide` for many groups, ``[ids, keeper or None]`` each, in one write."""
        from ..errors import QueryError

        checked = []
        for ids, keeper in groups:
            ids = [int(i) for i in ids]
            if kind not in DECISIONS or len(set(ids)) < 2:
                raise QueryError(f"a decision is one of {', '.join(DECISIONS)} about 2 or "
                                 f"more files")
            if (kind == "keeper") != (keeper is not None) or (
                    keeper is not None and int(keeper) not in ids):
                raise QueryError("a keeper decision names its keeper, one of the group's "
                                 "files")
            checked.append((ids, None if keeper is None else int(keeper)))
        with self._open(read_only=False) as store:
            return store.add_decisions(kind, checked)

    @routed
    def forget_decision(self, decision_id: int) -> bool:
        """Take a decision back: its group is judged by the rules again."""
        with self._open(read_only=False) as store:
            return store.remove_decision(int(decision_id))
