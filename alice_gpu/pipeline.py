"""Stage 7, pipeline: wires discover → decode → batch → device → features → store → vectors.

Decode runs on CPU worker processes (in-process for small jobs) and stays at
most ``prefetch_batches`` batches, and never more than ``max_memory_cache_mb``
of pixels, ahead of the device; the store is written by a writer thread behind
a bounded queue, so DuckDB writes overlap compute. Every file ends as exactly
one record: features, or a failure with a reason. A byte-identical copy of a
file already indexed is not decoded at all: its features are copied (a cache hit).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
from collections import deque
from contextlib import contextmanager
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from .config import Config
from .decoding import STATUS_FAILED, STATUS_OK, STATUS_RAW, STATUS_SAME, Decoded, DecodePlan
from .discovery import FileEntry, discover
from .hashing_cpu import decode_and_hash
from .metrics import PeakMemory, RunMetrics, StageTimer
from .store import AssetRecord, Store
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
    reused: int = 0
    removals_held: int = 0
    pending: int = 0
    interrupted: bool = False
    device: str = "cpu"
    workers: int = 1
    batch_size: int = 0
    run_id: int | None = None
    failed_files: list[FailedFile] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)

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


def _known_for(part: Sequence[FileEntry], known: dict[int, frozenset[str]]
               ) -> dict[int, frozenset[str]] | None:
    sub = {e.size: known[e.size] for e in part if e.size in known}
    return sub or None


def _keep_freed_buffers() -> None:
    """Let glibc reuse the per-file buffers instead of returning them to the kernel.

    By default every freed block over 128 KiB (a file's bytes, a decoded frame) is
    unmapped, and the next file faults the same pages back in: 5x the page faults
    and about 4% of a hash-only worker's time (RESULTS.md). Blocks up to 32 MiB now
    stay in the heap, and at most 64 MiB of free heap is kept, so memory stays bounded.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        libc.mallopt(m_mmap_threshold, 32 << 20)
        libc.mallopt(m_trim_threshold, 64 << 20)
    except (OSError, AttributeError):  # not glibc (musl, ...): keep the defaults
        pass


def _worker_init() -> None:
    """One BLAS/OpenMP thread per decode worker: N workers on N cores, no spinning.

    Workers ignore Ctrl-C: the main process decides how a run stops.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _keep_freed_buffers()
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:  # pragma: no cover - a declared dependency
        pass


def _noop() -> None:
    return None


class DecodePool:
    """The decode worker processes, restartable after a worker dies or hangs."""

    def __init__(self, workers: int):
        self.workers = workers
        self.restarts = 0
        self.executor = self._start()

    def _start(self) -> ProcessPoolExecutor:
        """Fork now, while this process is still small and single-purpose.

        Workers forked before torch is imported or any pipeline thread runs start in
        milliseconds and inherit no torch or thread state; after that (a restart),
        or where fork is missing, a fork server (a clean interpreter with the decode
        modules loaded) does the same more slowly.
        """
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        if method == "fork" and ("torch" in sys.modules or threading.active_count() > 1):
            method = "forkserver"
        method = os.environ.get("ALICE_GPU_START_METHOD", method)   # fork | forkserver | spawn
        ctx = multiprocessing.get_context(method)
        if method == "forkserver":
            ctx.set_forkserver_preload(["alice_gpu.hashing_cpu"])
        executor = ProcessPoolExecutor(max_workers=self.workers, mp_context=ctx,
                                       initializer=_worker_init)
        executor.submit(_noop)  # starts all workers now
        return executor

    def submit(self, *args) -> Future:
        return self.executor.submit(*args)

    def kill(self) -> None:
        """Stop a hung pool: its workers are killed, pending work fails as broken."""
        for proc in list(getattr(self.executor, "_processes", {}).values()):
            proc.kill()

    def restart(self) -> None:
        self.kill()
        self.executor.shutdown(wait=True, cancel_futures=True)
        self.restarts += 1
        self.executor = self._start()

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        self.executor.shutdown(wait=wait, cancel_futures=cancel_futures)


class _InProcessGuard:
    """A marker file in the index folder while files are decoded in this process.

    A decoder that kills its process (a native crash), or hangs while holding the
    GIL so that ``_with_deadline`` cannot leave it behind, cannot be caught
    in-process. The marker outlives such a death (or the kill that ends the hang),
    and the next run sends the job to isolated worker processes, which record the
    culprit and go on.
    """

    NAME = ".decoding-in-process"

    def __init__(self, folder: str | os.PathLike[str]):
        self.path = os.path.join(os.fspath(folder), self.NAME)
        self.tripped = os.path.exists(self.path)
        self.armed = False

    def arm(self) -> None:
        try:
            with open(self.path, "w") as fh:
                fh.write(f"{os.getpid()}\n")
            self.armed = True
        except OSError:   # read-only or full: decoding still works, unguarded
            pass

    def clear(self) -> None:
        try:
            os.unlink(self.path)
        except OSError:
            pass
        self.armed = self.tripped = False


def start_pool(workers: int) -> DecodePool | None:
    return DecodePool(workers) if workers > 1 else None


def _with_deadline(entry: FileEntry, plan: DecodePlan, known: dict[int, frozenset[str]],
                   timeout: float) -> list[Decoded]:
    """One in-process decode on a daemon thread, given up after ``timeout`` seconds.

    A decoder that hangs cannot be stopped in-process, but it can be left behind:
    the file is recorded as failed and the run goes on (the thread, stuck in C with
    the GIL released, dies with the process). A decoder that kills the process is
    the job of ``_InProcessGuard``.
    """
    box: list = []

    def work() -> None:
        try:
            box.append(decode_and_hash([entry], plan, known))
        except BaseException as exc:  # noqa: BLE001 - re-raised below, in the caller
            box.append(exc)

    t = threading.Thread(target=work, name="alice-decode", daemon=True)
    t.start()
    t.join(timeout)
    if not box:
        log.warning("decoding timed out on %s (in-process); recorded as failed", entry.path)
        return [Decoded(entry.path, entry.size, entry.mtime_ns, STATUS_FAILED,
                        f"decode timeout: more than {timeout:g} s")]
    if isinstance(box[0], BaseException):
        raise box[0]
    return box[0]


def decode_stream(entries: Sequence[FileEntry], plan: DecodePlan, pool: DecodePool | None,
                  workers: int, max_in_flight: int, parallel_threshold: int,
                  known: dict[int, frozenset[str]] | None = None,
                  timeout: float = 60.0) -> Iterator[Decoded]:
    """Decoded files in input order, with at most ``max_in_flight`` files decoded ahead.

    Jobs smaller than ``parallel_threshold`` (or without a pool) are decoded in-process,
    each file under the same ``timeout``. A worker that dies (a file that crashes the
    decoder) or a chunk that takes more than ``timeout`` seconds per file breaks the
    pool: it is restarted, the files in flight are retried one by one, and only the
    culprit is recorded as failed.
    """
    known = known or {}
    if pool is None or len(entries) < parallel_threshold:
        for e in entries:
            yield from _with_deadline(e, plan, _known_for([e], known), timeout)
        return
    # chunks of records only (hash-only runs) can be larger: fewer round trips
    chunk = max(1, min(16 if plan.keep_pixels else 64, max_in_flight // (2 * workers)))

    def submit(part: Sequence[FileEntry]) -> tuple[Sequence[FileEntry], Future]:
        return part, pool.submit(decode_and_hash, part, plan, _known_for(part, known))

    def one_by_one(parts: list[Sequence[FileEntry]]) -> Iterator[Decoded]:
        for entry in (e for part in parts for e in part):
            _, fut = submit([entry])
            try:
                yield from fut.result(timeout=timeout + 5)
            except (BrokenProcessPool, FuturesTimeout) as exc:
                hung = isinstance(exc, FuturesTimeout)
                log.warning("%s %s; restarting the decode workers",
                            "decoding timed out on" if hung else "the decoder died on", entry.path)
                pool.restart()
                reason = (f"decode timeout: more than {timeout:g} s" if hung
                          else "decoder crashed (its worker process died)")
                yield Decoded(entry.path, entry.size, entry.mtime_ns, STATUS_FAILED, reason)

    pending: deque[tuple[Sequence[FileEntry], Future]] = deque()
    it = _chunks(entries, chunk)
    max_chunks = max(workers, max_in_flight // chunk)
    for part in it:
        pending.append(submit(part))
        if len(pending) >= max_chunks:
            break
    try:
        while pending:
            part, fut = pending.popleft()
            try:
                results = fut.result(timeout=timeout * len(part) + 5)
            except (BrokenProcessPool, FuturesTimeout) as exc:
                if isinstance(exc, FuturesTimeout):
                    pool.kill()
                parts = [part] + [p for p, f in pending]
                pending.clear()
                pool.restart()
                yield from one_by_one(parts)
                for _ in range(max_chunks):
                    nxt = next(it, None)
                    if nxt is None:
                        break
                    pending.append(submit(nxt))
                continue
            nxt = next(it, None)
            if nxt is not None:
                pending.append(submit(nxt))
            yield from results
    finally:
        for _, f in pending:
            f.cancel()


# ------------------------------------------------------------------ content reuse

def known_contents(store: Store, todo: list[FileEntry], embed: bool
                   ) -> dict[int, frozenset[str]]:
    """Content hashes of complete indexed files, by size, for the sizes about to be decoded.

    The workers hash every file they read anyway; a hash found here means the
    file is a byte-identical copy and its features are copied instead of decoded.
    Nothing is read in this process, so unique files cost nothing extra.
    """
    if not todo or not store.has_assets():
        return {}
    return store.contents_by_size({e.size for e in todo}, require_embedding=embed)


def _copied_record(entry: FileEntry, digest: str, feats: dict) -> AssetRecord:
    return AssetRecord(path=entry.path, size=entry.size, mtime_ns=entry.mtime_ns,
                       status=STATUS_OK, width=feats["width"], height=feats["height"],
                       format=feats["format"], hashes=feats["hashes"],
                       embedding=feats["embedding"], content_hash=digest)


# ------------------------------------------------------------------ device stage

def _record(d: Decoded, hashes: dict[str, int] | None, embedding: np.ndarray | None,
            error: str | None = None) -> AssetRecord:
    if error is not None or d.status != STATUS_OK:
        return AssetRecord(path=d.path, size=d.size, mtime_ns=d.mtime_ns, status=STATUS_FAILED,
                           error=error or d.error, width=d.width, height=d.height,
                           format=d.format, content_hash=d.content_hash)
    return AssetRecord(path=d.path, size=d.size, mtime_ns=d.mtime_ns, status=STATUS_OK,
                       width=d.width, height=d.height, format=d.format, hashes=hashes or {},
                       embedding=embedding, content_hash=d.content_hash)


def _submit(items: list[Decoded], extractor, embed: bool, plan: DecodePlan, timer: StageTimer):
    """Launch a batch on the device; returns a function giving its records.

    With ``--decode gpu`` the JPEG bytes are decoded by nvJPEG on the device; the
    files it rejects are decoded by Pillow here and join the host part of the batch.
    """
    if extractor is None:   # everything was computed in the workers
        recs = [_record(d, d.hashes, None) for d in items]
        return lambda: recs
    raws = [d for d in items if d.status == STATUS_RAW]
    host = [d for d in items if d.status != STATUS_RAW]
    parts = []
    if raws:
        pillow = replace(plan, hash_in_worker=False, keep_pixels=True, gpu_decode=False)
        from .device import gpu_decode_jpegs

        t = time.perf_counter()
        batch, rejected = gpu_decode_jpegs([d.raw for d in raws], [d.orientation for d in raws],
                                           plan.working_size, extractor.device)
        timer.add("decode", time.perf_counter() - t)
        bad = set(rejected)
        on_gpu = [d for i, d in enumerate(raws) if i not in bad]
        for i in rejected:   # nvJPEG said no: Pillow decodes it
            d = raws[i]
            redo = decode_and_hash([FileEntry(d.path, d.size, d.mtime_ns)], pillow)[0]
            if redo.status == STATUS_OK:
                host.append(redo)
            else:
                parts.append(lambda r=_record(redo, None, None): [r])
        if on_gpu:
            p = extractor.submit(None, hashes=True, embed=embed, timer=timer, batch=batch)
            parts.append(lambda p=p, ds=on_gpu: [
                _record(d, f.hashes, f.embedding, f.error) for d, f in zip(ds, p.result())])
    ok = [d for d in host if d.status == STATUS_OK]
    if ok:
        p = extractor.submit([d.pixels for d in ok], hashes=ok[0].hashes is None, embed=embed,
                             timer=timer)
        parts.append(lambda p=p, ds=ok: [
            _record(d, d.hashes if d.hashes is not None else f.hashes, f.embedding, f.error)
            for d, f in zip(ds, p.result())])
    return lambda: [r for part in parts for r in part()]


# ------------------------------------------------------------------ writer stage

class _Writer(threading.Thread):
    """Owns the store's connection while a run is on; records arrive on a bounded queue.

    Records are committed in transactions of ``transaction_size`` rows, each written
    with bulk inserts of ``batch_insert_size`` rows; after each commit the in-memory
    vector index is updated, so nothing accumulates with the size of the run.
    """

    def __init__(self, store: Store, vectors: VectorIndex, run_id: int, cfg: Config,
                 timer: StageTimer, depth: int = 2):
        super().__init__(name="alice-writer", daemon=True)
        self.store, self.vectors, self.run_id, self.timer = store, vectors, run_id, timer
        perf = cfg.performance
        self.transaction_size = perf.transaction_size
        self.insert_size = perf.batch_insert_size
        self.bulk = perf.enable_batch_operations
        self.queue: queue.Queue[list[AssetRecord] | None] = queue.Queue(maxsize=depth)
        self.pending: list[AssetRecord] = []
        self.failed_rows: list[tuple[str, str]] = []
        self.embedded = 0
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
        self.queue.put(None)
        self.join()
        if self.error is not None:
            raise self.error


# ------------------------------------------------------------------ the run

def decode_plan(cfg: Config, device: "torch.device | None") -> DecodePlan:
    embed = cfg.features.embed
    parallel = cfg.performance.parallel_hash_computation
    if not embed:
        # hash-only: luma straight from the JPEG decoder at the hashes' working size
        # (most JPEGs: estimated from their 1/8-scale block means)
        return DecodePlan(cfg.decode.hash_size, "L", hash_in_worker=parallel,
                          keep_pixels=not parallel, draft_size=2 * cfg.decode.hash_size,
                          block_means=cfg.decode.block_means)
    from .device import hashes_in_workers

    gpu = cfg.decode.engine == "gpu"
    return DecodePlan(cfg.decode.working_size, "RGB",
                      hash_in_worker=hashes_in_workers(device, parallel) and not gpu,
                      keep_pixels=True, gpu_decode=gpu)


MASS_REMOVAL_MIN = 20   # fewer vanished files than this are always removed


def run_index(store: Store, vectors: VectorIndex, roots: Iterable[str], cfg: Config,
              device: "torch.device | None" = None, progress: ProgressFn | None = None,
              retry_failed: bool = False, prune: bool = False) -> IndexSummary:
    """Index ``roots`` into ``store``: only new or changed files are decoded.

    ``device`` None means "select from ``cfg.device`` if the device is needed": a
    run with nothing to do, or a hash-only run, never imports torch.
    """
    t0 = time.perf_counter()
    roots = list(roots)
    pools: list[DecodePool] = []     # started by _run once it knows the job is large
    stop = threading.Event()
    try:
        with _stop_on_signals(stop):
            summary = _run(store, vectors, roots, cfg, device, progress, retry_failed, pools, t0,
                           stop, prune)
    finally:
        for pool in pools:
            pool.shutdown(wait=True, cancel_futures=True)
    if summary.interrupted:
        raise Interrupted(summary)
    return summary


class Interrupted(Exception):
    """SIGINT/SIGTERM stopped a run after committing what was done (summary attached)."""

    def __init__(self, summary: "IndexSummary"):
        super().__init__(f"interrupted: {summary.decoded + summary.reused + summary.failed} "
                         f"files done, {summary.pending} pending")
        self.summary = summary


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT/SIGTERM set ``stop``: dispatch ends, what is done is committed, then exit 130."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}

    def handler(signum, frame) -> None:
        if stop.is_set():           # a second Ctrl-C: the user really wants out
            raise KeyboardInterrupt
        log.warning("stopping: finishing the batches in flight and committing them")
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _run(store: Store, vectors: VectorIndex, roots: list[str], cfg: Config,
         device: "torch.device | None", progress: ProgressFn | None, retry_failed: bool,
         pools: list[DecodePool], t0: float, stop: threading.Event,
         prune: bool = False) -> IndexSummary:
    perf = cfg.performance
    embed = cfg.features.embed
    workers = effective_workers(perf.max_workers)
    batch_size = perf.batch_size
    summary = IndexSummary(device=str(device) if device is not None else cfg.device,
                           workers=workers, batch_size=batch_size)
    timer = StageTimer()
    metrics = RunMetrics()
    threads = min(8, 2 * workers) if perf.parallel_metadata_extraction else 1

    with timer("discover"):
        found = discover(roots, store.known_state(require_embedding=embed,
                                                  retry_failed=retry_failed),
                         threads=threads)
        todo = found.todo
        known = known_contents(store, todo, embed)
    summary.files_seen = found.files_seen
    summary.unchanged = len(found.unchanged)
    if progress:
        progress(ProgressEvent("discover", found.files_seen, found.files_seen))

    # Small jobs decode in this process: no pool to start. Large ones fork the
    # workers now, before torch or any pipeline thread exists (cheap, clean forks).
    # A previous in-process decode that never finished (the process died on a
    # file) sends this job to isolated workers, where the culprit is caught.
    guard = _InProcessGuard(store.folder)
    parallel_threshold = cfg.decode.parallel_threshold
    pool = None
    if todo and guard.tripped:
        log.warning("the last run died while decoding in-process; decoding in isolated "
                    "worker processes this time")
        pool, parallel_threshold = DecodePool(max(1, workers)), 0
    elif todo and workers > 1 and len(todo) >= parallel_threshold:
        pool = DecodePool(workers)
    if pool is not None:
        pools.append(pool)

    # sampling starts after the fork: a fork with the sampler thread alive is unsafe
    with PeakMemory() as mem:
        if (embed and found.todo) or found.removed:
            if vectors.is_current():
                vectors.load()   # as the store is now: each commit's changes are applied to it
            else:
                vectors.defer()  # no current file: rebuilt from DuckDB on first use
        run_id = store.start_run(roots, summary.device, embed)
        summary.run_id = run_id
        to_remove = found.removed
        known_under = found.files_seen + len(found.removed)
        if not prune and len(to_remove) > MASS_REMOVAL_MIN and len(to_remove) > known_under // 2:
            # most of a root vanished: an unmounted share or a half-synced folder, most likely
            log.warning("%d indexed files are gone (more than half of what was indexed under "
                        "these roots); keeping them. Run with --prune to remove them.",
                        len(to_remove))
            summary.removals_held = len(to_remove)
            to_remove = []
        removed_ids = store.remove_paths(to_remove)
        summary.removed = len(removed_ids)
        if len(removed_ids):
            vectors.apply(removed_ids, np.zeros(0, np.int64), np.zeros((0, store.dim), np.float32))

        path_ids = store.path_ids()
        next_id = store.max_id() + 1
        ids: dict[str, int] = {}
        for e in found.todo:
            if e.path in path_ids:
                ids[e.path] = path_ids[e.path]
            else:
                ids[e.path] = next_id
                next_id += 1

        extractor = None
        plan = None
        if todo:
            if embed or not perf.parallel_hash_computation:
                from .device import resolve_precision, select_device
                from .features import FeatureExtractor

                if device is None:
                    device = select_device(cfg.device)
                summary.device = str(device)
                model = cfg.features.model if embed else None
                extractor = FeatureExtractor.create(
                    device, model, precision=resolve_precision(device, cfg.features.precision))
            plan = decode_plan(cfg, device)
            if device is None:
                summary.device = "cpu"   # hash-only: computed in the CPU decode workers

        writer = _Writer(store, vectors, run_id, cfg, timer)
        writer.start()
        done = failed = 0
        device_items = 0
        total = len(found.todo)
        if progress:
            progress(ProgressEvent("index", 0, total))
        entries = {e.path: e for e in found.todo}
        finished = False
        try:
            def emit(records: list[AssetRecord]) -> None:
                nonlocal done, failed
                for r in records:
                    r.id = ids[r.path]
                failed += sum(r.status != STATUS_OK for r in records)
                done += len(records)
                writer.put(records)
                if progress:
                    progress(ProgressEvent("index", done, total, failed))

            same: list[Decoded] = []   # byte-identical to indexed files: copied after the run
            if todo:
                max_in_flight = max(workers, min(
                    cfg.decode.prefetch_batches * batch_size,
                    perf.max_memory_cache_mb * 2**20 // plan.bytes_per_item))
                ok_items: list[Decoded] = []
                bad: list[AssetRecord] = []

                in_flight: list = []   # the batch launched last: finished after the next launch

                def flush() -> None:
                    nonlocal device_items
                    if bad:
                        emit(bad[:])
                        bad.clear()
                    if ok_items:
                        finish = _submit(ok_items[:], extractor, embed, plan, timer)
                        if extractor is not None:
                            device_items += len(ok_items)
                            metrics.batches += 1
                        ok_items.clear()
                        # batch n+1 is on its way to the device before batch n is collected
                        while in_flight:
                            emit(in_flight.pop()())
                        in_flight.append(finish)

                if pool is None:
                    guard.arm()      # cleared below once every in-process decode returned
                stream = decode_stream(todo, plan, pool, workers, max_in_flight,
                                       parallel_threshold, known, cfg.decode.timeout_seconds)
                t_wait = time.perf_counter()
                for d in stream:
                    if stop.is_set():
                        stream.close()   # stop dispatch; queued decodes are cancelled
                        break
                    timer.add("decode", time.perf_counter() - t_wait)
                    if d.status in (STATUS_OK, STATUS_RAW):
                        ok_items.append(d)
                    elif d.status == STATUS_SAME:
                        same.append(d)
                    else:
                        bad.append(_record(d, None, None))
                    if len(ok_items) + len(bad) >= batch_size:
                        flush()
                    t_wait = time.perf_counter()
                if ok_items or bad:
                    flush()
                while in_flight:
                    emit(in_flight.pop()())
            finished = not stop.is_set()
        finally:
            if guard.armed or finished:
                guard.clear()     # alive after every in-process decode, or the isolated run done
            writer.close()

        # byte-identical copies of indexed files: features copied, nothing decoded
        hits = 0
        if same:
            stored = store.features_by_content({d.content_hash for d in same},
                                               require_embedding=embed)
            recs = []
            for d in same:
                if d.content_hash in stored:
                    recs.append(_copied_record(entries[d.path], d.content_hash,
                                               stored[d.content_hash]))
                else:   # the original changed meanwhile: do it the slow way
                    again = list(decode_stream([entries[d.path]], plan, None, 1, 1, 0))
                    recs += _submit(again, extractor, embed, plan, timer)()
            for r in recs:
                r.id = ids[r.path]
            with timer("write"):
                res = store.write_batch(recs, run_id, insert_size=perf.batch_insert_size,
                                        bulk=perf.enable_batch_operations)
            hits = sum(d.content_hash in stored for d in same)
            writer.embedded += len(res.embedded_ids)
            writer.failed_rows += res.failed_rows
            if len(res.touched_ids):
                vectors.apply(res.touched_ids, res.embedded_ids, res.embeddings)
                writer.vector_changes = True
            failed += sum(r.status != STATUS_OK for r in recs)
            done += len(recs)
        if writer.vector_changes or len(removed_ids):
            with timer("write"):
                vectors.save()

        summary.reused = hits
        summary.interrupted = stop.is_set()
        summary.pending = total - done
        summary.decoded = done - failed - hits
        summary.failed = failed + len(writer.failed_rows)
        summary.embedded = writer.embedded
        summary.failed_files = [FailedFile(*f) for f in writer.failed_rows]
        summary.failed_files += [FailedFile(p, e) for p, e in store.failed_in_run(run_id)]
        summary.seconds = round(time.perf_counter() - t0, 3)
        summary.files_per_second = (round(summary.files_seen / summary.seconds, 1)
                                    if summary.seconds else 0.0)
    metrics.files_processed = total
    metrics.processing_time = summary.seconds
    metrics.average_file_time = summary.seconds / total if total else 0.0
    metrics.memory_usage_mb = mem.peak_mb
    metrics.cache_hits = hits
    metrics.cache_hit_rate = hits / total if total else 0.0
    metrics.batch_efficiency = (device_items / (metrics.batches * batch_size)
                                if metrics.batches else 0.0)
    metrics.stage_seconds = timer.seconds
    summary.metrics = metrics.to_dict()
    status = "interrupted" if summary.interrupted else ("ok" if summary.failed == 0 else "partial")
    store.finish_run(run_id, asdict(summary), status)
    return summary
