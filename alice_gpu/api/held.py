"""API, the holder's side: this process holds the index and answers other processes.

While an ``index`` run holds the index, :func:`holding` serves it on its socket
(:mod:`alice_gpu.remote.server`). Each request runs the same :class:`AliceIndex`
method a direct call would, on a view of the held store: another DuckDB
connection to the open index, which sees what is committed and never stops the
writer. Queries that search vectors use the run's own vector index (kept in
step with each commit, never rebuilt per request). Writes a client asks for take
their turn with the run's batches (``Store.gate``), or are refused in one line
naming the holder, per command:

* ``tag add``/``tag remove``/``tag auto``: queued, applied between two batches;
* ``index`` (of any folder), ``duplicates --move-to``, ``undo``: refused. One run
  at a time walks and writes the folders; moving files while they are being
  indexed would race the run.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from ..config import config_from_dict
from ..errors import QueryError, StoreLockedError
from ..remote import wire
from ..remote.codec import NeedsFeature
from ..remote.server import Holder, Stream

if TYPE_CHECKING:
    from ..records import AssetRecord
    from ..search.vectors import VectorIndex
    from ..store import Store

READS = frozenset({"stats", "find", "find_json", "find_lines", "show", "similar", "duplicates",
                   "tags", "decisions", "asset", "browse", "revision", "locate", "thumbnail",
                   "image", "journals", "similar_to"})
QUEUED = frozenset({"tag", "auto_tag", "decide_groups", "forget_decision"})
REFUSED = {"index": "an index run", "move_duplicates": "moving files", "organize": "organizing",
           "move_aside": "moving files", "undo": "moving files back"}
SERVED = READS | QUEUED | frozenset(REFUSED)
PROGRESSING = frozenset({"index", "organize"})               # calls whose progress events are forwarded


class HeldIndex:
    """The index this process holds, as the API's requests from elsewhere see it."""

    def __init__(self, store: "Store", folder: Path, refuse: dict[str, str] | None = None):
        self.store, self.folder = store, folder
        self.refuse = REFUSED if refuse is None else refuse
        self.vectors: "VectorIndex | None" = None     # the run's, once it has one
        self.info: dict[str, Any] = {}
        self.index_lock = threading.Lock()           # index runs, one at a time
        self.moving = threading.Lock()               # file moves, never during a watch pass
        self._request = threading.local()

    def view(self) -> "Store":
        return self.store.view()

    @contextmanager
    def vectors_for(self, view: "Store", memory_mb: int) -> Iterator["VectorIndex"]:
        """The run's vector index for a query (or the file's, when the run has none)."""
        if self.vectors is None:
            from ..search.vectors import VectorIndex

            yield VectorIndex(view, mmap=True, memory_mb=memory_mb)
            return
        with self.vectors.reading(view, memory_mb) as vectors:
            yield vectors

    def featuriser(self, view: "Store") -> Callable[[str], "AssetRecord"] | None:
        """A query image outside the index: its row as the client made it, or a request
        for it (the client has the model; the holder spends nothing on it). None for the
        holder's own queries (a server's upload): those are featurised here."""
        if not getattr(self._request, "remote", False):
            return None

        def featurise(path: str) -> "AssetRecord":
            from ..records import AssetRecord

            row = getattr(self._request, "outside", None)
            if row is None:
                raise NeedsFeature(view.model, view.embedding_count() > 0, view.space)
            return AssetRecord(path=path, size=0, mtime_ns=0, status=row["status"],
                               error=row.get("error"), hashes=row.get("hashes") or {},
                               embedding=row.get("embedding"))

        return featurise

    def handle(self, op: str, args: dict[str, Any], emit: Callable[[dict], None]) -> Any:
        """One request: the same API call a direct run makes, on this held index."""
        from .index import AliceIndex

        if op in self.refuse:
            raise StoreLockedError(
                f"the index at {self.folder} is held by {wire.describe(self.info)}; "
                f"{self.refuse[op]} waits for no other: run it again when that has finished")
        params = args.get("args")
        if not isinstance(params, dict):
            raise QueryError("a request without arguments")
        api = AliceIndex(args.get("folder") or self.folder,
                         config_from_dict(args.get("config") or {}), held=self)
        self._request.outside, self._request.remote = args.get("outside"), True
        if op in PROGRESSING:                        # its events go to the asking terminal
            params["progress"] = lambda ev: emit(dataclasses.asdict(ev))
        try:
            answer = getattr(api, op)(**params)
            if op == "find_json":
                return Stream(answer)
            return answer
        finally:
            self._request.outside, self._request.remote = None, False


def holder_command() -> str:
    """How the holder is named to others: the command line that started this process."""
    return shlex.join([os.path.basename(sys.argv[0] or "python"), *sys.argv[1:]])


@contextmanager
def holding(store: "Store", folder: str | os.PathLike[str],
            refuse: dict[str, str] | None = None) -> Iterator[HeldIndex]:
    """Serve the index ``store`` holds while the block runs (call on the thread that
    owns the store, before it hands the store to another). ``refuse``: the calls this
    holder turns down, and why (an index run's by default; ``{}`` takes every call)."""
    store.serve_views()
    held = HeldIndex(store, Path(folder), refuse)
    with Holder(folder, holder_command(), held.handle, SERVED) as server:
        held.info = server.info
        yield held
