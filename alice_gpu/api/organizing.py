"""API, files in their places: ``organize`` and ``watch``; a mixin of
:class:`~.index.AliceIndex`."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable, Iterable

from .routing import routed

if TYPE_CHECKING:
    from ..actions.organize import OrganizeReport
    from ..pipeline import ProgressFn


class Organizing:
    """Putting files where they belong, and keeping the index current by itself."""

    @routed
    def organize(self, roots: Iterable[str | os.PathLike[str]], to: str | os.PathLike[str],
                 *, template: str | None = None, how: str = "move", dry_run: bool = False,
                 index_first: bool = True, progress: "ProgressFn | None" = None
                 ) -> "OrganizeReport":
        """File every indexed file under ``roots`` into ``to`` by ``template`` (a preset
        name, ``date`` by default, or a template), moving, copying or hard-linking it
        (``how``) through a journal :meth:`undo` reads; the index follows moved files.
        Files not indexed yet are indexed first (``index_first``)."""
        from ..actions.organize import HOWS, check_places, organize
        from ..actions.template import parse
        from ..errors import QueryError

        paths = [os.path.abspath(os.path.expanduser(os.fspath(r))) for r in roots]
        dest = os.path.abspath(os.path.expanduser(os.fspath(to)))
        if how not in HOWS:
            raise QueryError(f"unknown way to organize {how!r} (choose from {', '.join(HOWS)})")
        parse(template)                       # a bad template: refused before any work
        check_places(paths, dest)
        for p in paths:
            if not os.path.exists(p):
                raise QueryError(f"{p} does not exist")
        if index_first:
            self.index(paths, progress=progress)
        with self._moving():                        # in a watcher: never mid-pass
            return organize(lambda read_only: self._open(read_only=read_only), paths, dest,
                            template, how, dry_run)

    def watch(self, roots: Iterable[str | os.PathLike[str]], *, poll: float | None = None,
              settle: float | None = None, reconcile: float | None = None,
              on_pass: Callable[[dict[str, Any]], None] | None = None, stop: Any = None) -> None:
        """Keep the index of ``roots`` current until ``stop`` (a threading.Event) is set or
        SIGINT/SIGTERM arrives, holding the index meanwhile (:mod:`.watching`)."""
        from .watching import Watcher

        Watcher(self, [os.fspath(r) for r in roots], poll=poll, settle=settle,
                reconcile=reconcile, on_pass=on_pass, stop=stop).run()
