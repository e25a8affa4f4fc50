"""Stage 7, pipeline: wires discover → decode → batch → device → features → store → vectors.

Decode runs on CPU worker processes (in-process for small jobs) and stays at
most ``prefetch_batches`` batches ahead of the device; the store is written by
a writer thread behind a bounded queue, so DuckDB writes overlap compute.
Every file ends as exactly one record: features, or a failure with a reason.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence

import numpy as np

from .config import Config
from .decoding import STATUS_FAILED, STATUS_OK, Decoded, decode_file, decode_many
from .discovery import FileEntry, discover
from .store import AssetRecord, Store, WriteResult
from .vectors import VectorIndex

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FailedFile:
    path: str
    error: str


@dataclass
class IndexSummary:
    """What one ``index`` run did; ``to_dict`` is the CLI's ``--json`` document."""

    files_seen: int = 0
    decoded: int = 0
    unchanged: int = 0
    failed: int = 0
    removed: int = 0
    seconds: float = 0.0
    files_per_second: float = 0.0
    embedded: int = 0
    device: str = "cpu"
    workers: int = 1
    run_id: int | None = None
    failed_files: list[FailedFile] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ProgressEvent:
    """Sent to the optional progress callback: ``stage`` is 'discover' or 'index'."""

    stage: str
    done: int
    total: int
    failed: int = 0


ProgressFn = Callable[[ProgressEvent], None]


def effective_workers(requested: int) -> int:
    """Workers are capped at the cores present."""
    return max(1, min(requested, os.cpu_count() or 1))


# ------------------------------------------------------------------ decode stage

def _chunks(items: Sequence[FileEntry], size: int) -> Iterator[Sequence[FileEntry]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def decode_stream(entries: Sequence[FileEntry], working_size: int, workers: int,
                  max_in_flight: int, parallel_threshold: int) -> Iterator[Decoded]:
    """Decoded files in input order, with at most ``max_in_flight`` files decoded ahead."""
    if workers <= 1 or len(entries) < parallel_threshold:
        for e in entries:
            yield decode_file(e, working_size)
        return
    chunk = max(1, min(16, max_in_flight // (2 * workers)))
    ctx = multiprocessing.get_context("spawn")  # no torch/threads state inherited by workers
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        pending: deque[Future[list[Decoded]]] = deque()
        it = _chunks(entries, chunk)
        max_chunks = max(1, max_in_flight // chunk)
        for part in it:
            pending.append(pool.submit(decode_many, part, working_size))
            if len(pending) >= max_chunks:
                break
        while pending:
            results = pending.popleft().result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(decode_many, nxt, working_size))
            yield from results


# ------------------------------------------------------------------ device stage

def _records(items: list[Decoded], extractor) -> list[AssetRecord]:
    out = []
    for d, f in zip(items, extractor.extract([d.pixels for d in items])):
        if f.error is not None:
            out.append(_failed_record(d, f.error))
        else:
            out.append(AssetRecord(path=d.path, size=d.size, mtime_ns=d.mtime_ns,
                                   status=STATUS_OK, width=d.width, height=d.height,
                                   format=d.format, hashes=f.hashes, embedding=f.embedding))
    return out


def _failed_record(d: Decoded, reason: str | None = None) -> AssetRecord:
    return AssetRecord(path=d.path, size=d.size, mtime_ns=d.mtime_ns, status=STATUS_FAILED,
                       error=reason or d.error, width=d.width, height=d.height, format=d.format)


# ------------------------------------------------------------------ writer stage

class _Writer(threading.Thread):
    """Owns the store's connection while a run is on; batches arrive on a bounded queue."""

    def __init__(self, store: Store, run_id: int, depth: int = 2):
        super().__init__(name="alice-writer", daemon=True)
        self.store = store
        self.run_id = run_id
        self.queue: queue.Queue[list[AssetRecord] | None] = queue.Queue(maxsize=depth)
        self.results: list[WriteResult] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        while True:
            batch = self.queue.get()
            if batch is None:
                return
            if self.error is not None:
                continue
            try:
                self.results.append(self.store.write_batch(batch, self.run_id))
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                self.error = exc

    def put(self, batch: list[AssetRecord]) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(batch)

    def close(self) -> None:
        self.queue.put(None)
        self.join()
        if self.error is not None:
            raise self.error


# ------------------------------------------------------------------ the run

def run_index(store: Store, vectors: VectorIndex, roots: Iterable[str], cfg: Config,
              device: "torch.device | None" = None, progress: ProgressFn | None = None,
              retry_failed: bool = False) -> IndexSummary:
    """Index ``roots`` into ``store``: only new or changed files are decoded.

    ``device`` None means "select from ``cfg.device`` if there is work": a run
    with nothing to do never imports torch.
    """
    t0 = time.perf_counter()
    roots = list(roots)
    embed = cfg.features.embed
    workers = effective_workers(cfg.decode.max_workers)
    summary = IndexSummary(device=str(device) if device is not None else cfg.device,
                           workers=workers)

    found = discover(roots, store.known_state(require_embedding=embed, retry_failed=retry_failed))
    summary.files_seen = found.files_seen
    summary.unchanged = len(found.unchanged)
    if progress:
        progress(ProgressEvent("discover", found.files_seen, found.files_seen))

    if found.todo or found.removed:
        vectors.load()  # as the store is now: the run's deltas are applied to it at the end
    run_id = store.start_run(roots, summary.device, embed)
    summary.run_id = run_id
    removed_ids = store.remove_paths(found.removed)
    summary.removed = len(removed_ids)

    path_ids = store.path_ids()
    next_id = store.max_id() + 1
    todo = found.todo
    ids: dict[str, int] = {}
    for e in todo:
        if e.path in path_ids:
            ids[e.path] = path_ids[e.path]
        else:
            ids[e.path] = next_id
            next_id += 1

    extractor = None
    if todo:
        from .device import select_device
        from .features import FeatureExtractor

        if device is None:
            device = select_device(cfg.device)
            summary.device = str(device)
        extractor = FeatureExtractor.create(device, cfg.features.model if embed else None)
    batch_size = cfg.features.batch_size
    writer = _Writer(store, run_id)
    writer.start()
    done = failed = 0
    total = len(todo)
    if progress:
        progress(ProgressEvent("index", 0, total))
    try:
        ok_items: list[Decoded] = []
        bad: list[AssetRecord] = []

        def flush() -> None:
            nonlocal done, failed
            records = bad[:] + (_records(ok_items, extractor) if ok_items else [])
            for r in records:
                r.id = ids[r.path]
            failed += sum(r.status != STATUS_OK for r in records)
            done += len(records)
            ok_items.clear()
            bad.clear()
            writer.put(records)
            if progress:
                progress(ProgressEvent("index", done, total, failed))

        stream = decode_stream(todo, cfg.decode.working_size, workers,
                               cfg.decode.prefetch_batches * batch_size,
                               cfg.decode.parallel_threshold)
        for d in stream:
            if d.status == STATUS_OK:
                ok_items.append(d)
            else:
                bad.append(_failed_record(d))
            if len(ok_items) + len(bad) >= batch_size:
                flush()
        if ok_items or bad:
            flush()
    finally:
        writer.close()

    results = writer.results
    emb_ids = np.concatenate([r.embedded_ids for r in results]) if results else np.zeros(0, np.int64)
    emb_vecs = (np.concatenate([r.embeddings for r in results]) if results
                else np.zeros((0, store.dim), np.float32))
    touched = np.concatenate([r.touched_ids for r in results]) if results else np.zeros(0, np.int64)
    if len(removed_ids) or len(touched) or not vectors.path.exists():
        vectors.update(np.concatenate([removed_ids, touched]), emb_ids, emb_vecs)

    db_failed = [f for r in results for f in r.failed_rows]
    summary.decoded = done - failed
    summary.failed = failed + len(db_failed)
    summary.embedded = int(len(emb_ids))
    summary.failed_files = [FailedFile(*f) for f in db_failed]
    summary.failed_files += [FailedFile(p, e) for p, e in store.failed_in_run(run_id)]
    summary.seconds = round(time.perf_counter() - t0, 3)
    summary.files_per_second = round(summary.files_seen / summary.seconds, 1) if summary.seconds else 0.0
    store.finish_run(run_id, asdict(summary), "ok" if summary.failed == 0 else "partial")
    return summary
