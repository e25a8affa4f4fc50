"""The run: discover → decode → features → store, by an engine, with one writer.

``run_index`` reads as its steps. The engine (:class:`.local.LocalEngine`, or
:class:`.ray_engine.RayEngine` on a cluster) decodes and featurises the files to
do and streams their rows back; the store is written by a writer thread behind
a bounded queue, so DuckDB writes overlap compute. Every file ends as exactly
one record: features, or a failure with a reason. A byte-identical copy of a
file already indexed is not decoded at all: its features are copied (a cache
hit). Files an engine gives up on are done by the local engine in this process.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import numpy as np

from ..config import Config
from ..discover import Discovery, discover, normalize_path
from ..records import STATUS_OK, AssetRecord, Decoded, FileEntry
from ..search.vectors import VectorIndex
from ..store import Store
from .local import LocalEngine
from .metrics import PeakMemory, RunMetrics, StageTimer
from .pool import effective_workers
from .renames import follow_renames
from .stages import Engine, EngineFailure, need_meta
from .writer import Writer

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

MASS_REMOVAL_MIN = 20   # fewer vanished files than this are always removed


@dataclass(frozen=True)
class FailedFile:
    path: str
    error: str


@dataclass
class IndexSummary:
    """What one ``index`` run did; ``to_dict`` is the CLI's ``--json`` document.

    ``driver_files``: files an engine gave up on, done by this process instead;
    ``skipped``: files under the roots that are not media we read, by extension.
    """

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
    renamed: int = 0                # rows that followed their file to a new path
    deferred: int = 0               # files still being written: left for a later run
    pending: int = 0
    interrupted: bool = False
    device: str = "cpu"
    runtime: str = ""               # what ran the embedding network ("none": no embeddings)
    space: str = ""                 # the embedding space written: fp32 or int8 ("" without)
    workers: int = 1
    batch_size: int = 0
    run_id: int | None = None
    failed_files: list[FailedFile] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    driver_files: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

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


def run_index(store: Store, vectors: VectorIndex, roots: Iterable[str], cfg: Config,
              device: "torch.device | None" = None, progress: ProgressFn | None = None,
              retry_failed: bool = False, prune: bool = False,
              engine: Engine | None = None, settle: float = 0.0,
              within: Iterable[str] | None = None) -> IndexSummary:
    """Index ``roots`` into ``store``: only new or changed files are decoded.

    ``device`` None means "select from ``cfg.device`` if the device is needed": a
    run with nothing to do, or a CPU hash-only run, never imports torch. ``engine``
    None is the local engine (a process pool); a prepared
    :class:`~.ray_engine.RayEngine` distributes the same stages on Ray. Files changed
    less than ``settle`` seconds ago are left for a later run, and ``within`` (folders
    under the roots) limits the walk to where something changed (both for ``watch``).
    """
    roots = list(roots)
    job = _IndexJob(store, vectors, cfg, device, progress, engine)
    with _stop_on_signals(job.stop):
        try:
            found = job.discover(list(within) if within else roots, retry_failed, settle)
            job.engine.start(found.todo)     # forked now: no torch, no threads yet
            with PeakMemory() as mem:
                job.begin_run(roots, found, prune)
                job.index_files(found.todo)
                job.save_vectors()
        finally:
            job.close()
    summary = job.finish(mem.peak_mb)
    if summary.interrupted:
        raise Interrupted(summary)
    return summary


class _IndexJob:
    """The state of one run; ``run_index`` calls its steps in order."""

    def __init__(self, store: Store, vectors: VectorIndex, cfg: Config,
                 device: "torch.device | None", progress: ProgressFn | None,
                 engine: Engine | None = None):
        self.store, self.vectors, self.cfg, self.device = store, vectors, cfg, device
        self.progress = progress
        self.stop = threading.Event()
        self.timer = StageTimer()
        self.t0 = time.perf_counter()
        self.local = LocalEngine(cfg, device, self.timer, store.folder,
                                 in_process_only=engine is not None)
        self.engine: Engine = engine if engine is not None else self.local
        perf = cfg.performance
        self.summary = IndexSummary(device=self.engine.name,
                                    workers=effective_workers(perf.max_workers),
                                    batch_size=perf.batch_size)
        self.known: dict[int, frozenset[str]] = {}
        self.ids: dict[str, int] = {}
        self.removed_ids = np.zeros(0, np.int64)
        self.total = self.done = self.failed = self.committed = self.hits = 0
        self.device_items = self.batches = 0
        self.writer: Writer | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------ steps
    def discover(self, roots: list[str], retry_failed: bool, settle: float = 0.0) -> Discovery:
        """Walk the roots; split new/changed from unchanged files and list vanished ones."""
        embed = self.cfg.features.embed
        threads = min(8, 2 * self.summary.workers) if (
            self.cfg.performance.parallel_metadata_extraction) else 1
        with self.timer("discover"):
            found = discover(roots, self.store.known_state(require_embedding=embed,
                                                           need_meta=need_meta(self.cfg),
                                                           retry_failed=retry_failed),
                             threads=threads, settle=settle)
            self.summary.renamed = follow_renames(self.store, found)
            self.summary.deferred = len(found.deferred)
            self.known = known_contents(self.store, found.todo, embed, need_meta(self.cfg))
        self.summary.files_seen = found.files_seen
        self.summary.unchanged = len(found.unchanged)
        self.summary.skipped = found.skipped
        if self.progress:
            self.progress(ProgressEvent("discover", found.files_seen, found.files_seen))
        return found

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
        self.writer = Writer(self.store, self.vectors, self.summary.run_id, self.cfg,
                             self.timer, on_commit=self._committed)
        self.writer.start()
        try:
            same = self._through(self.engine, todo)
        finally:
            self.writer.close()
        self._copy_reused(same)

    def save_vectors(self) -> None:
        if (self.writer is not None and self.writer.vector_changes) or len(self.removed_ids):
            with self.timer("write"):
                self.vectors.save()

    def close(self) -> None:
        """The local engine's workers; another engine belongs to whoever prepared it."""
        self.local.close()

    def finish(self, peak_mb: float) -> IndexSummary:
        """The run's summary and metrics, also stored with the run."""
        s, w = self.summary, self.writer
        failed_rows = w.failed_rows if w is not None else []
        s.device = self.engine.name
        s.runtime = getattr(self.engine, "runtime", "")
        s.space = self.store.space if self.cfg.features.embed else ""
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

    def _through(self, engine: Engine, todo: list[FileEntry]) -> list[Decoded]:
        """Every file to do through ``engine``; what it gives up on, through the local
        engine. Returns the byte-identical copies (for :meth:`_copy_reused`)."""
        same: list[Decoded] = []
        done: set[str] = set()
        records = engine.records(todo, engine.plan(), self.known, self.summary.batch_size,
                                 self.stop)
        try:
            with closing(records):
                for items in records:
                    rows = [x for x in items if isinstance(x, AssetRecord)]
                    same += [x for x in items if not isinstance(x, AssetRecord)]
                    done.update(x.path for x in items)
                    if rows and engine.on_device:
                        self.batches += 1
                        self.device_items += sum(r.status == STATUS_OK for r in rows)
                    if rows:
                        self._emit(rows)
        except EngineFailure as exc:
            rest = [e for e in todo if e.path not in done]
            log.warning("%s could not finish %d files (%s); this process does them",
                        engine.name, len(rest), exc)
            if rest and not self.stop.is_set():
                self.summary.driver_files += len(rest)
                same += self._through(self.local, rest)
        return same

    def _emit(self, records: list[AssetRecord]) -> None:
        """Hand finished rows to the writer and count them."""
        for r in records:
            r.id = self.ids[r.path]
        self.failed += sum(r.status != STATUS_OK for r in records)
        self.done += len(records)
        self.writer.put(records)
        self._report()

    def _copy_reused(self, same: list[Decoded]) -> None:
        """Byte-identical copies of indexed files: features copied, nothing decoded."""
        if not same:
            return
        embed = self.cfg.features.embed
        stored = self.store.features_by_content({d.content_hash for d in same},
                                                require_embedding=embed,
                                                need_meta=need_meta(self.cfg))
        records, redo = [], []
        for d in same:
            feats = stored.get(d.content_hash)
            if feats is None:             # the original changed meanwhile: do it the slow way
                redo.append(FileEntry(d.path, d.size, d.mtime_ns))
                continue
            self.hits += 1
            records.append(AssetRecord(
                path=d.path, size=d.size, mtime_ns=d.mtime_ns, status=STATUS_OK,
                width=feats["width"], height=feats["height"], format=feats["format"],
                hashes=feats["hashes"], embedding=feats["embedding"],
                content_hash=d.content_hash, meta=feats["meta"]))
        if redo:
            featuriser = self.local.featuriser()
            records += featuriser(self.local.decode_here(redo, featuriser.plan))
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
