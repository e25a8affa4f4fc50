"""The local engine: discover → decode (worker pool) → features (one device) → store.

``run_index`` reads as its steps. Decode runs on CPU worker processes
(in-process for small jobs) and stays at most ``prefetch_batches`` batches, and
never more than ``max_memory_cache_mb`` of pixels, ahead of the device; the
store is written by a writer thread behind a bounded queue, so DuckDB writes
overlap compute. Every file ends as exactly one record: features, or a failure
with a reason. A byte-identical copy of a file already indexed is not decoded
at all: its features are copied (a cache hit).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import numpy as np

from ..config import Config
from ..decode import DecodePlan
from ..discover import Discovery, discover, normalize_path
from ..features.stage import Featuriser
from ..records import STATUS_OK, STATUS_RAW, STATUS_SAME, AssetRecord, Decoded, FileEntry
from ..search.vectors import VectorIndex
from ..store import Store
from .dispatch import decode_in_process, decode_stream
from .metrics import PeakMemory, RunMetrics, StageTimer
from .pool import DecodePool, effective_workers
from .writer import Writer

if TYPE_CHECKING:
    from .ray_engine import RayEngine
    import torch

log = logging.getLogger(__name__)

MASS_REMOVAL_MIN = 20   # fewer vanished files than this are always removed


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
    """Sent to the optional progress callback: ``stage`` is 'discover' or 'index'.

    ``committed`` counts the rows durably written so far (an event follows each commit).
    """

    stage: str
    done: int
    total: int
    failed: int = 0
    committed: int = 0


ProgressFn = Callable[[ProgressEvent], None]


class Interrupted(Exception):
    """SIGINT/SIGTERM stopped a run after committing what was done (summary attached)."""

    def __init__(self, summary: "IndexSummary"):
        super().__init__(f"interrupted: {summary.decoded + summary.reused + summary.failed} "
                         f"files done, {summary.pending} pending")
        self.summary = summary


def need_meta(cfg: Config) -> int:
    """The metadata version a stored row must have to count as done for this run."""
    from ..decode.metadata import META_VERSION

    return META_VERSION if cfg.metadata.extract else 0


def make_featuriser(cfg: Config, device: "torch.device | str | None" = None,
                    timer: Any = None) -> Featuriser:
    """The features stage callable for ``cfg`` on ``device`` (a torch.device, a name, or
    None for the configured one); rows only for a CPU hash-only run. The local engine and
    every Ray actor build theirs here."""
    if not cfg.features.embed and cfg.performance.parallel_hash_computation:
        plain = device if device is not None and not isinstance(device, str) else None
        return Featuriser(None, decode_plan(cfg, plain), False, timer)
    from ..gpu.devices import resolve_precision, select_device

    dev = device if device is not None and not isinstance(device, str) else \
        select_device(device or cfg.device)
    return Featuriser.create(dev, cfg.features.model if cfg.features.embed else None,
                             decode_plan(cfg, dev), resolve_precision(dev, cfg.features.precision),
                             timer)


class _LazyFeaturiser:
    """The driver's features stage on Ray: its plan now (what the Ray tasks decode to),
    the model only if the driver has to featurise files itself."""

    def __init__(self, cfg: Config, device: "torch.device | None", timer: Any):
        self.cfg, self.device, self.timer = cfg, device, timer
        self.plan = decode_plan(cfg, None)      # hashes in the decode tasks, on their CPUs
        self._real: Featuriser | None = None

    def _get(self) -> Featuriser:
        if self._real is None:
            self._real = make_featuriser(self.cfg, self.device, self.timer)
            self._real.plan = self.plan
        return self._real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._get(), name)

    def __call__(self, items):
        return self._get()(items)


def decode_plan(cfg: Config, device: "torch.device | None") -> DecodePlan:
    """What the decode workers produce for this run's configuration and device."""
    embed = cfg.features.embed
    parallel = cfg.performance.parallel_hash_computation
    if not embed:
        # hash-only: luma straight from the JPEG decoder at the hashes' working size
        # (most JPEGs: estimated from their 1/8-scale block means)
        return DecodePlan(cfg.decode.hash_size, "L", hash_in_worker=parallel,
                          keep_pixels=not parallel, draft_size=2 * cfg.decode.hash_size,
                          block_means=cfg.decode.block_means,
                          metadata=cfg.metadata.extract, gps=cfg.metadata.gps)
    from ..gpu.devices import hashes_in_workers

    gpu = cfg.decode.engine == "gpu"
    return DecodePlan(cfg.decode.working_size, "RGB",
                      hash_in_worker=hashes_in_workers(device, parallel) and not gpu,
                      keep_pixels=True, gpu_decode=gpu, metadata=cfg.metadata.extract,
                      gps=cfg.metadata.gps)


def run_index(store: Store, vectors: VectorIndex, roots: Iterable[str], cfg: Config,
              device: "torch.device | None" = None, progress: ProgressFn | None = None,
              retry_failed: bool = False, prune: bool = False,
              engine: "RayEngine | None" = None) -> IndexSummary:
    """Index ``roots`` into ``store``: only new or changed files are decoded.

    ``device`` None means "select from ``cfg.device`` if the device is needed": a
    run with nothing to do, or a CPU hash-only run, never imports torch. ``engine``
    None is the local engine (a process pool); a :class:`~.ray_engine.RayEngine`
    distributes the same stages on Ray.
    """
    roots = list(roots)
    job = _IndexJob(store, vectors, cfg, device, progress, engine)
    with _stop_on_signals(job.stop):
        try:
            found = job.discover(roots, retry_failed)
            job.start_decoders(found.todo)   # forked now: no torch, no threads yet
            with PeakMemory() as mem:
                job.begin_run(roots, found, prune)
                job.index_files(found.todo)
                job.save_vectors()
        finally:
            job.close_decoders()
    summary = job.finish(mem.peak_mb)
    if summary.interrupted:
        raise Interrupted(summary)
    return summary


class _IndexJob:
    """The state of one run of the local engine; ``run_index`` calls its steps in order."""

    def __init__(self, store: Store, vectors: VectorIndex, cfg: Config,
                 device: "torch.device | None", progress: ProgressFn | None,
                 engine: "RayEngine | None" = None):
        self.store, self.vectors, self.cfg, self.device = store, vectors, cfg, device
        self.engine = engine
        self.progress = progress
        self.stop = threading.Event()
        self.timer = StageTimer()
        self.t0 = time.perf_counter()
        perf = cfg.performance
        self.summary = IndexSummary(device=str(device) if device is not None else cfg.device,
                                    workers=effective_workers(perf.max_workers),
                                    batch_size=perf.batch_size)
        self.pool: DecodePool | None = None
        self.guard = _InProcessGuard(store.folder)
        self.parallel_threshold = cfg.decode.parallel_threshold
        self.known: dict[int, frozenset[str]] = {}
        self.ids: dict[str, int] = {}
        self.removed_ids = np.zeros(0, np.int64)
        self.total = self.done = self.failed = self.committed = self.hits = 0
        self.device_items = self.batches = 0
        self.writer: Writer | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------ steps
    def discover(self, roots: list[str], retry_failed: bool) -> Discovery:
        """Walk the roots; split new/changed from unchanged files and list vanished ones."""
        embed = self.cfg.features.embed
        threads = min(8, 2 * self.summary.workers) if (
            self.cfg.performance.parallel_metadata_extraction) else 1
        with self.timer("discover"):
            found = discover(roots, self.store.known_state(require_embedding=embed,
                                                           need_meta=need_meta(self.cfg),
                                                           retry_failed=retry_failed),
                             threads=threads)
            self.known = known_contents(self.store, found.todo, embed, need_meta(self.cfg))
        self.summary.files_seen = found.files_seen
        self.summary.unchanged = len(found.unchanged)
        if self.progress:
            self.progress(ProgressEvent("discover", found.files_seen, found.files_seen))
        return found

    def start_decoders(self, todo: list[FileEntry]) -> None:
        """Small jobs decode in this process (no pool to start); large ones fork workers.

        A previous in-process decode that never finished (the process died on a file)
        sends this job to isolated workers, where the culprit is caught. On Ray, Ray's
        workers decode.
        """
        if self.engine is not None:
            return
        workers = self.summary.workers
        timeout = self.cfg.decode.timeout_seconds
        if todo and self.guard.tripped:
            log.warning("the last run died while decoding in-process; decoding in isolated "
                        "worker processes this time")
            self.pool, self.parallel_threshold = DecodePool(workers, timeout), 0
        elif todo and workers > 1 and len(todo) >= self.parallel_threshold:
            self.pool = DecodePool(workers, timeout)

    def begin_run(self, roots: list[str], found: Discovery, prune: bool) -> None:
        """Record the run, remove vanished files, and give every file to do its id."""
        if (self.cfg.features.embed and found.todo) or found.removed:
            if self.vectors.is_current():
                self.vectors.load()   # as the store is now: each commit's changes are applied
            else:
                self.vectors.defer()  # no current file: rebuilt from DuckDB on first use
        # absolute: a move keeps each file's path relative to the root it was indexed under
        self.summary.run_id = self.store.start_run([normalize_path(r) for r in roots],
                                                   self.summary.device,
                                                   self.cfg.features.embed)
        self._remove_vanished(found, prune)
        path_ids = self.store.path_ids()
        next_id = self.store.max_id() + 1
        for e in found.todo:
            if e.path not in path_ids:
                path_ids[e.path] = next_id
                next_id += 1
            self.ids[e.path] = path_ids[e.path]

    def index_files(self, todo: list[FileEntry]) -> None:
        """Decode, featurise and write every file to do; copy the byte-identical ones."""
        self.total = len(todo)
        self._report()
        if not todo:
            return
        featuriser = self._featuriser()
        self.writer = Writer(self.store, self.vectors, self.summary.run_id, self.cfg,
                             self.timer, on_commit=self._committed)
        self.writer.start()
        finished = False
        try:
            same = self._decode_and_featurise(todo, featuriser)
            finished = not self.stop.is_set()
        finally:
            if self.guard.armed or finished:
                self.guard.clear()   # alive after every in-process decode, or the isolated run done
            self.writer.close()
        self._copy_reused(same, featuriser)

    def save_vectors(self) -> None:
        if (self.writer is not None and self.writer.vector_changes) or len(self.removed_ids):
            with self.timer("write"):
                self.vectors.save()

    def close_decoders(self) -> None:
        if self.pool is not None:
            self.pool.close()
        if self.engine is not None:
            self.engine.close()

    def finish(self, peak_mb: float) -> IndexSummary:
        """The run's summary and metrics, also stored with the run."""
        s, w = self.summary, self.writer
        failed_rows = w.failed_rows if w is not None else []
        s.reused = self.hits
        s.interrupted = self.stop.is_set()
        s.pending = self.total - self.done
        s.decoded = self.done - self.failed - self.hits
        s.failed = self.failed + len(failed_rows)
        s.embedded = w.embedded if w is not None else 0
        s.failed_files = [FailedFile(*f) for f in failed_rows]
        s.failed_files += [FailedFile(p, e) for p, e in self.store.failed_in_run(s.run_id)]
        s.seconds = round(time.perf_counter() - self.t0, 3)
        s.files_per_second = round(s.files_seen / s.seconds, 1) if s.seconds else 0.0
        total = self.total
        metrics = RunMetrics(
            files_processed=total, processing_time=s.seconds,
            average_file_time=s.seconds / total if total else 0.0, memory_usage_mb=peak_mb,
            cache_hits=self.hits, cache_hit_rate=self.hits / total if total else 0.0,
            batch_efficiency=(self.device_items / (self.batches * s.batch_size)
                              if self.batches else 0.0),
            batches=self.batches, stage_seconds=self.timer.seconds)
        s.metrics = metrics.to_dict()
        status = "interrupted" if s.interrupted else ("ok" if s.failed == 0 else "partial")
        self.store.finish_run(s.run_id, asdict(s), status)
        return s

    # ------------------------------------------------------------ parts of the steps
    def _remove_vanished(self, found: Discovery, prune: bool) -> None:
        to_remove = found.removed
        known_under = found.files_seen + len(found.removed)
        if not prune and len(to_remove) > MASS_REMOVAL_MIN and len(to_remove) > known_under // 2:
            # most of a root vanished: an unmounted share or a half-synced folder, most likely
            log.warning("%d indexed files are gone (more than half of what was indexed under "
                        "these roots); keeping them. Run with --prune to remove them.",
                        len(to_remove))
            self.summary.removals_held = len(to_remove)
            to_remove = []
        self.removed_ids = self.store.remove_paths(to_remove)
        self.summary.removed = len(self.removed_ids)
        if len(self.removed_ids):
            self.vectors.apply(self.removed_ids, np.zeros(0, np.int64),
                               np.zeros((0, self.store.dim), np.float32))

    def _featuriser(self) -> Featuriser:
        """The features stage for this run: on a device, or rows only (CPU hash-only).
        On Ray the actors hold the model: the driver builds its own only if it must
        finish files Ray could not."""
        if self.engine is not None:
            return _LazyFeaturiser(self.cfg, self.device, self.timer)
        featuriser = make_featuriser(self.cfg, self.device, self.timer)
        if featuriser.extractor is not None:
            self.summary.device = str(featuriser.extractor.device)
        elif self.device is None:
            self.summary.device = "cpu"   # hash-only: computed in the CPU decode workers
        return featuriser

    def _decode_and_featurise(self, todo: list[FileEntry], featuriser: Featuriser
                              ) -> list[Decoded]:
        """The middle of a run, by the engine's distributor; returns the byte-identical
        files (copied, not decoded)."""
        if self.engine is not None:
            from .ray_engine import ray_decode_and_featurise

            self.summary.device = "ray"
            return ray_decode_and_featurise(self, self.engine, todo, featuriser)
        return self.local_decode_and_featurise(todo, featuriser)

    def local_decode_and_featurise(self, todo: list[FileEntry], featuriser: Featuriser
                                   ) -> list[Decoded]:
        """Stream decoded files into device batches; returns the byte-identical ones."""
        cfg, plan = self.cfg, featuriser.plan
        batch_size = self.summary.batch_size
        max_in_flight = max(self.summary.workers, min(
            cfg.decode.prefetch_batches * batch_size,
            cfg.performance.max_memory_cache_mb * 2**20 // plan.bytes_per_item))
        if self.pool is None:
            self.guard.arm()          # cleared once every in-process decode has returned
        stream = decode_stream(todo, plan, self.pool, max_in_flight, self.parallel_threshold,
                               self.known, cfg.decode.timeout_seconds)
        same: list[Decoded] = []
        batch: list[Decoded] = []
        launched = None               # the batch on the device: collected after the next launch
        t_wait = time.perf_counter()
        for d in stream:
            if self.stop.is_set():
                stream.close()        # stop dispatch; queued decodes are cancelled
                break
            self.timer.add("decode", time.perf_counter() - t_wait)
            (same if d.status == STATUS_SAME else batch).append(d)
            if len(batch) >= batch_size:
                launched = self._launch(featuriser, batch, launched)
                batch = []
            t_wait = time.perf_counter()
        if batch:
            launched = self._launch(featuriser, batch, launched)
        if launched is not None:
            self._emit(launched())
        return same

    def _launch(self, featuriser: Featuriser, batch: list[Decoded],
                previous: Callable[[], list[AssetRecord]] | None
                ) -> Callable[[], list[AssetRecord]]:
        """Send a batch to the device, then collect the one before it (copy/compute overlap)."""
        finish = featuriser.submit(batch)
        on_device = sum(d.status in (STATUS_OK, STATUS_RAW) for d in batch)
        if featuriser.extractor is not None and on_device:
            self.device_items += on_device
            self.batches += 1
        if previous is not None:
            self._emit(previous())
        return finish

    def _emit(self, records: list[AssetRecord]) -> None:
        """Hand finished rows to the writer and count them."""
        for r in records:
            r.id = self.ids[r.path]
        self.failed += sum(r.status != STATUS_OK for r in records)
        self.done += len(records)
        self.writer.put(records)
        self._report()

    def _copy_reused(self, same: list[Decoded], featuriser: Featuriser) -> None:
        """Byte-identical copies of indexed files: features copied, nothing decoded."""
        if not same:
            return
        embed = self.cfg.features.embed
        stored = self.store.features_by_content({d.content_hash for d in same},
                                                require_embedding=embed,
                                                need_meta=need_meta(self.cfg))
        records = []
        for d in same:
            feats = stored.get(d.content_hash)
            if feats is not None:
                self.hits += 1
                records.append(AssetRecord(
                    path=d.path, size=d.size, mtime_ns=d.mtime_ns, status=STATUS_OK,
                    width=feats["width"], height=feats["height"], format=feats["format"],
                    hashes=feats["hashes"], embedding=feats["embedding"],
                    content_hash=d.content_hash, meta=feats["meta"]))
            else:   # the original changed meanwhile: do it the slow way
                entry = FileEntry(d.path, d.size, d.mtime_ns)
                records += featuriser([decode_in_process(entry, featuriser.plan, None,
                                                         self.cfg.decode.timeout_seconds)])
        for r in records:
            r.id = self.ids[r.path]
        self.writer.commit_now(records)
        self.failed += sum(r.status != STATUS_OK for r in records)
        self.done += len(records)

    def _committed(self, rows: int) -> None:
        self.committed = rows
        self._report()

    def _report(self) -> None:
        """A progress event (from the main thread and the writer's, one at a time)."""
        if self.progress:
            with self._lock:
                self.progress(ProgressEvent("index", self.done, self.total, self.failed,
                                            self.committed))


def known_contents(store: Store, todo: list[FileEntry], embed: bool, need: int = 0
                   ) -> dict[int, frozenset[str]]:
    """Content hashes of complete indexed files, by size, for the sizes about to be decoded.

    The workers hash every file they read anyway; a hash found here means the
    file is a byte-identical copy and its features are copied instead of decoded.
    Nothing is read in this process, so unique files cost nothing extra.
    """
    if not todo or not store.has_assets():
        return {}
    return store.contents_by_size({e.size for e in todo}, require_embedding=embed,
                                  need_meta=need)


class _InProcessGuard:
    """A marker file in the index folder while files are decoded in this process.

    A decoder that kills its process (a native crash), or hangs while holding the
    GIL so that the in-process deadline cannot leave it behind, cannot be caught
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
