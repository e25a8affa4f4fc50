"""The run's writer: one thread owns the store's connection while a run is on, whatever
the engine.

It calls the store's write stage (``Store.write_batch``) in transactions of
``transaction_size`` rows, and after each commit applies the change to the
in-memory vector index, so nothing accumulates with the size of the run.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable

from ..config import Config
from ..records import AssetRecord
from ..search.vectors import VectorIndex
from ..store import Store
from .metrics import StageTimer


class Writer(threading.Thread):
    """Owns the store's connection while a run is on; records arrive on a bounded queue.

    Records are committed in transactions of ``transaction_size`` rows, each written
    with bulk inserts of ``batch_insert_size`` rows; after each commit the in-memory
    vector index is updated, so nothing accumulates with the size of the run.
    """

    def __init__(self, store: Store, vectors: VectorIndex, run_id: int, cfg: Config,
                 timer: StageTimer, on_commit: Callable[[int], None] | None = None,
                 depth: int = 2):
        super().__init__(name="alice-writer", daemon=True)
        self.store, self.vectors, self.run_id, self.timer = store, vectors, run_id, timer
        self.on_commit = on_commit        # told the rows committed so far, after each commit
        perf = cfg.performance
        self.transaction_size = perf.transaction_size
        self.insert_size = perf.batch_insert_size
        self.bulk = perf.enable_batch_operations
        self.queue: queue.Queue[list[AssetRecord] | None] = queue.Queue(maxsize=depth)
        self.pending: list[AssetRecord] = []
        self.failed_rows: list[tuple[str, str]] = []
        self.embedded = 0
        self.committed = 0
        self.vector_changes = False
        self.error: BaseException | None = None

    def _commit(self) -> None:
        if not self.pending:
            return
        with self.timer("write"):
            res = self.store.write_batch(self.pending, self.run_id, insert_size=self.insert_size,
                                         bulk=self.bulk)
            self.pending = []
            self.failed_rows += res.failed_rows
            self.embedded += len(res.embedded_ids)
            if len(res.touched_ids):
                self.vectors.apply(res.touched_ids, res.embedded_ids, res.embeddings)
                self.vector_changes = True
        self.committed += res.written
        if self.on_commit is not None:
            self.on_commit(self.committed)

    def run(self) -> None:
        while True:
            batch = self.queue.get()
            if self.error is not None:
                if batch is None:
                    return
                continue
            if batch is None:             # close(): commit the rest, then stop either way
                try:
                    self._commit()
                except BaseException as exc:  # noqa: BLE001 - re-raised by close()
                    self.error = exc
                return
            try:
                self.pending.extend(batch)
                if len(self.pending) >= self.transaction_size:
                    self._commit()
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                self.error = exc

    def put(self, batch: list[AssetRecord]) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(batch)

    def close(self) -> None:
        """Commit what is queued and stop the thread (errors are raised here)."""
        self.queue.put(None)
        self.join()
        if self.error is not None:
            raise self.error

    def commit_now(self, records: list[AssetRecord]) -> None:
        """Write records from the caller's thread, once the thread has stopped (``close``)."""
        if self.is_alive():
            raise RuntimeError("commit_now is for after close()")
        self.pending = list(records)
        self._commit()
