"""Search, vectors: the FAISS embedding index, derived from the store, never the other way round.

Below ``FLAT_MAX`` vectors the index is exact (``IndexFlatIP``); from there on it
is an IVF index with SQ8 codes (``d`` bytes per vector): ``nlist`` grows with
sqrt(N), it is trained on a reservoir sample of the store, and a query probes a
fixed fraction of the lists. SQ8 ranks as the exact vectors do (re-ranking with
the stored vectors did not change recall, benchmarks/RESULTS.md), so there is no
re-rank step. The file is saved atomically beside the DuckDB file with a sidecar
naming the store's ``vectors_version`` it reflects; missing, stale or unreadable
files are rebuilt from DuckDB, streaming, never fatal. Queries memory-map it.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import threading
from contextlib import contextmanager
from typing import Iterator

import numpy as np

from ..errors import QueryMemoryError, StorageError
from ..store import Store
from .hamming import load_faiss as _faiss

log = logging.getLogger(__name__)

INDEX_FILE = "vectors.faiss"
SIDECAR_FILE = "vectors.json"
FLAT_MAX = 20_000          # exact below this many vectors (the crossover: RESULTS.md)
TRAIN_PER_LIST = 32        # training vectors per IVF list (FAISS advises 39: RESULTS.md)
PROBE_FRACTION = 8         # similar probes nlist / 8 lists (its recall: RESULTS.md)
GRAPH_PROBES = 4           # duplicates: lists each vector is joined with (RESULTS.md);
CANDIDATE_PROBES = 2       # for the capped candidates of checked pairs (RESULTS.md, issue 23)
SQ_MARGIN = 0.2            # SQ8 ranges: the sample's min..max, widened by 20% each side
RETRAIN_GROWTH = 4         # retrain once the index holds 4x what it was trained on
CHUNK = 4096               # vectors per streamed slice (20 MiB at 1280-d, and FAISS's
                           # assignment of a slice to 2048 lists: 32 MiB more)
# pairs among at most this many vectors: one dense numpy product from the store, without
# FAISS or pyarrow, whose imports cost more than the search (bench_duplicates.py)
DENSE_PAIRS_MAX = 4096
DENSE_BLOCK = 1024         # rows per block of the dense product (1024 x 4096 floats: 16 MiB)
BASE_MB = 200              # a query process besides the index (measured: RESULTS.md)


def _libc():
    import ctypes

    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:                      # not glibc: its allocator tuning does not apply
        return None


def _release_freed_memory() -> None:
    """Give freed heap back to the system (glibc keeps it otherwise; peak RSS is budgeted)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def _lists_in_their_own_pages() -> None:
    """Allocate blocks of 128 KiB and more with mmap, so a FAISS list that grows (and
    drops its old copy) gives the old pages back; in the heap the freed copies stayed
    resident: +600 MB at 1M vectors (measured, RESULTS.md)."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(-3, 128 * 1024)     # M_MMAP_THRESHOLD


def ivf_lists(n: int) -> int:
    """IVF lists for n vectors: the power of two nearest 2 * sqrt(n), at least 64."""
    return max(64, 2 ** round(math.log2(2 * math.sqrt(max(n, 1)))))


class VectorIndex:
    """The embedding index of one store, kept in step with ``Store.vectors_version``.

    ``mmap=True`` (queries) maps an IVF file instead of reading it: a query touches
    only the lists it probes. A mapped index is read-only.
    """

    def __init__(self, store: Store, *, mmap: bool = False, memory_mb: int | None = None):
        self.store = store
        self.memory_mb = memory_mb
        self.dim = store.dim
        self.path = store.folder / INDEX_FILE
        self.sidecar = store.folder / SIDECAR_FILE
        self.mmap = mmap
        self.index: object | None = None
        self.meta: dict = {}
        self.rebuilt = False
        self.deferred = False
        # in a process that answers queries while it writes (remote.server): a query holds
        # the lock while it uses the index, and the writer's changes then wait in pending
        self.lock = threading.RLock()
        self.pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.mapped = False          # the index in memory is a read-only mapping of the file

    def is_current(self) -> bool:
        """Does the file on disk reflect the store as it is now? (reads only the sidecar)"""
        try:
            meta = json.loads(self.sidecar.read_text())
        except (OSError, ValueError):
            return False
        return (meta.get("version") == self.store.vectors_version() and meta.get("dim") == self.dim
                and self.path.exists())

    def defer(self) -> None:
        """Do not keep the index in step during this run: it is rebuilt on first use.

        Used when there is no current index file anyway (a first or bulk run), so an
        indexing run never holds all the vectors in memory.
        """
        self.deferred = True
        self.index = None

    def release(self) -> None:
        """Unmap a file-backed index a query is done with (its pages leave the process's
        memory; the next use maps it again). A live index (the holder's) stays."""
        if self.mmap and not self.pending:
            self.index = None

    @property
    def kind(self) -> str:
        return self.meta.get("kind", "flat")

    def load(self) -> object:
        """The index, from disk when it matches the store, else rebuilt from DuckDB."""
        if self.index is not None:
            return self.index
        want = self.store.vectors_version()
        faiss = _faiss()
        try:
            meta = json.loads(self.sidecar.read_text())
            if meta.get("version") != want or meta.get("dim") != self.dim:
                raise ValueError(f"stale (file v{meta.get('version')}, store v{want})")
            flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if self.mmap else 0
            index = faiss.read_index(str(self.path), flags)
            if index.d != self.dim or index.ntotal != meta.get("count"):
                raise ValueError("does not match its sidecar")
            expected = faiss.IndexIVF if meta.get("kind") == "ivf" else faiss.IndexIDMap2
            if not isinstance(index, expected):
                raise ValueError(f"unexpected index type {type(index).__name__}")
            self.index, self.meta = index, meta
            self.mapped = bool(self.mmap)          # a read-only mapping of the file
            return self.index
        except FileNotFoundError:
            reason = "missing"
        except Exception as exc:  # corrupt, truncated, garbage, stale: rebuild, never fatal
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return self.rebuild(reason)

    def _slices(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return self.store.iter_embeddings(CHUNK)

    def _flat_slices(self, index) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The flat index's own vectors (views of its memory-mapped file, no copy) with
        their ids, in slices: no second read of them from the store."""
        faiss = _faiss()
        n, d = index.ntotal, index.d
        if n == 0:
            return
        flat = faiss.downcast_index(index.index)
        xb = faiss.rev_swig_ptr(flat.get_xb(), n * d).reshape(n, d)
        ids = faiss.vector_to_array(index.id_map).astype(np.int64)
        for s in range(0, n, CHUNK):
            yield ids[s:s + CHUNK], xb[s:s + CHUNK]

    def rebuild(self, reason: str = "requested") -> object:
        """Build from the store, streaming: memory is the index plus one slice. The file
        saved names the store's version from before the read: rows committed meanwhile
        make it stale, never wrongly current."""
        version = self.store.vectors_version()
        n = self.store.embedding_count()
        self._check_budget(n)
        faiss = _faiss()
        if n < FLAT_MAX:
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
            meta = {"kind": "flat"}
        else:
            nlist = ivf_lists(n)
            sample = self.store.sample_embeddings(min(n, TRAIN_PER_LIST * nlist))
            quantizer = faiss.IndexFlatIP(self.dim)
            index = faiss.IndexIVFScalarQuantizer(quantizer, self.dim, nlist,
                                                  faiss.ScalarQuantizer.QT_8bit,
                                                  faiss.METRIC_INNER_PRODUCT)
            index.own_fields = True
            quantizer.this.disown()
            # per-dimension ranges from the sample, widened by SQ_MARGIN on each side so a
            # vector added later that falls outside them is not clipped much
            index.sq.rangestat = faiss.ScalarQuantizer.RS_minmax
            index.sq.rangestat_arg = SQ_MARGIN
            log.info("training an IVF%d,SQ8 index on %d of %d vectors", nlist, len(sample), n)
            index.train(np.ascontiguousarray(sample))
            del sample
            _release_freed_memory()           # training's buffers, before the index grows
            _lists_in_their_own_pages()
            meta = {"kind": "ivf", "nlist": nlist, "trained_on": n}
        log.info("rebuilding the vector index from the store (%s): %d vectors, %s",
                 reason, n, meta["kind"])
        for ids, mat in self._slices():
            index.add_with_ids(np.ascontiguousarray(mat), ids)
        self.index, self.meta = index, meta
        self.mapped = False
        self.rebuilt = True
        try:
            self.save(version)   # also after a read-only open: the file is derived
        except (OSError, StorageError) as exc:
            log.info("could not save the rebuilt vector index (%s); using it in memory", exc)
        return index

    def needs_mb(self, n: int) -> float:
        """Peak memory of a rebuild at n vectors: the larger of training (the sample, twice
        for k-means' work) and adding (the index, plus a streamed slice in three forms)."""
        per = 4 * self.dim + 8 if n < FLAT_MAX else self.dim + 8
        sample = min(n, TRAIN_PER_LIST * ivf_lists(n)) * self.dim * 4 if n >= FLAT_MAX else 0
        return max(2 * sample, n * per + 3 * min(CHUNK, n) * self.dim * 4) / 2 ** 20

    def _check_budget(self, n: int) -> None:
        # the interpreter, FAISS and DuckDB's working set take about BASE_MB more
        if self.memory_mb and self.needs_mb(n) + BASE_MB > self.memory_mb:
            raise QueryMemoryError(
                f"the vector index of {n:,} embeddings needs about "
                f"{self.needs_mb(n) + BASE_MB:,.0f} MiB, more than query.memory_mb "
                f"({self.memory_mb}) allows; raise it in a config file (--config) on a "
                f"machine with more memory")

    def update(self, remove_ids: np.ndarray, add_ids: np.ndarray, add_vecs: np.ndarray) -> None:
        """Apply changes and save."""
        self.apply(remove_ids, add_ids, add_vecs)
        self.save()

    def apply(self, remove_ids: np.ndarray, add_ids: np.ndarray, add_vecs: np.ndarray) -> None:
        """Apply committed changes in memory (``save`` writes them).

        Call ``load()`` before the run writes, so the loaded index matches the
        store as it was; applying a change twice is harmless (ids re-added are
        removed first), so a rebuild that already saw it stays correct. An index
        that outgrows its kind (flat past ``FLAT_MAX``, IVF past ``RETRAIN_GROWTH``
        times its training size) is rebuilt from the store instead. While a query
        holds the index the change waits, and goes in with the next one.
        """
        if self.deferred:
            return
        self.pending.append((np.asarray(remove_ids, dtype=np.int64),
                             np.asarray(add_ids, dtype=np.int64), add_vecs))
        if self.lock.acquire(blocking=False):
            try:
                self._apply_pending()
            finally:
                self.lock.release()

    def _apply_pending(self) -> None:
        while self.pending:
            remove_ids, add_ids, add_vecs = self.pending.pop(0)
            index = self.load()
            drop = np.unique(np.concatenate([remove_ids, add_ids]))
            if len(drop):
                index.remove_ids(drop)
            if len(add_ids):
                index.add_with_ids(np.ascontiguousarray(add_vecs, dtype=np.float32), add_ids)
            if self._outgrown():
                self.index = None
                self.pending.clear()          # the rebuild reads every committed change
                self.rebuild("outgrown")

    @contextmanager
    def reading(self, store: Store, memory_mb: int | None) -> Iterator["VectorIndex"]:
        """This (live) index for a query on another thread, through ``store`` (a view):
        held for the query's length. A run that was not keeping it in step (``defer``)
        starts to, from an index built once from what is committed."""
        with self.lock:
            reader = copy.copy(self)
            reader.store, reader.memory_mb, reader.mmap = store, memory_mb, False
            reader.mapped = False             # a live index: never let go of its pages
            if self.deferred or self.index is None:
                self.deferred = False         # the writer's changes from now on: pending
                reader.deferred, reader.index = False, None
                reader.load()                 # the file when current, else built once
                self.index, self.meta = reader.index, reader.meta
            reader.index, reader.meta = self.index, self.meta
            yield reader              # the writer's changes meanwhile wait in pending

    def _outgrown(self) -> bool:
        n = self.index.ntotal
        if self.kind == "flat":
            return n >= FLAT_MAX
        return n > RETRAIN_GROWTH * self.meta.get("trained_on", n)

    def save(self, version: int | None = None) -> None:
        """Atomic: temp file + rename, the sidecar last (a crash between = stale = rebuild).
        ``version``: the store's version the index reflects (default: the current one)."""
        if self.deferred or self.index is None:
            return
        with self.lock:
            self._apply_pending()
        tmp = self.path.with_name(f".{INDEX_FILE}.tmp.{os.getpid()}.{threading.get_ident()}")
        stmp = self.sidecar.with_name(f".{SIDECAR_FILE}.tmp.{os.getpid()}.{threading.get_ident()}")
        version = self.store.vectors_version() if version is None else version
        meta = {**self.meta, "version": version, "dim": self.dim,
                "count": int(self.index.ntotal), "model": self.store.model}
        try:
            _faiss().write_index(self.index, str(tmp))
            os.replace(tmp, self.path)
            stmp.write_text(json.dumps(meta) + "\n")
            os.replace(stmp, self.sidecar)
        except (OSError, RuntimeError) as exc:   # FAISS reports I/O errors as RuntimeError
            tmp.unlink(missing_ok=True)
            stmp.unlink(missing_ok=True)
            # an old sidecar now names an older version: the file is stale and gets rebuilt
            raise StorageError(f"could not write the vector index {self.path} "
                               f"({str(exc).splitlines()[0][-160:]}); the store is intact and "
                               f"the index is rebuilt from it on next use") from None
        self.meta = meta

    def _probe(self, index: object, probes: int) -> None:
        if self.kind == "ivf":
            ivf = _faiss().extract_index_ivf(index)
            ivf.nprobe = max(1, min(probes, self.meta["nlist"]))
            ivf.parallel_mode = 1     # one query: its lists split across the cores (2x here)

    def count(self) -> int:
        """Vectors in the index."""
        return int(self.load().ntotal)

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by cosine: (scores, ids) for one (dim,) query, best first."""
        index = self.load()
        k = min(k, index.ntotal)
        if k == 0:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        self._probe(index, self.meta.get("nlist", 1) // PROBE_FRACTION)
        scores, ids = index.search(np.ascontiguousarray(query.reshape(1, -1), dtype=np.float32), k)
        keep = ids[0] >= 0
        return scores[0][keep], ids[0][keep]

    def range_pairs(self, threshold: float, cap: int | None = None,
                    strong: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pairs (a < b) with cosine >= threshold: (id_a, id_b, score); ``cap``: only
        the pairs among each vector's ``cap`` closest, past its closest only those at
        ``strong`` or above (:func:`~.ivfjoin.cap_per_node`).

        Exact on a flat index (capped: each vector's cap + 1 nearest); on an IVF index,
        each vector against the members of its nearest lists (:mod:`.ivfjoin`).
        """
        from .ivfjoin import cap_per_node

        if self.index is None and self.store.embedding_count() <= DENSE_PAIRS_MAX:
            ids, mat = self.store.embedding_matrix()
            return cap_per_node(*dense_pairs(ids, mat, float(threshold)), cap, strong)
        index = self.load()
        if self.kind == "ivf":
            from .ivfjoin import ivf_pairs

            probes = GRAPH_PROBES if cap is None else CANDIDATE_PROBES
            return cap_per_node(*ivf_pairs(index, float(threshold), probes, cap, strong,
                                           mapped=self.mapped), cap, strong)
        parts = []
        for ids, mat in self._flat_slices(index):
            mat = np.ascontiguousarray(mat)
            if cap is None:
                lims, dist, labels = index.range_search(mat, float(threshold))
                rows = np.repeat(ids, np.diff(lims).astype(np.int64))
            else:                  # capped: each vector's cap + 1 nearest, not a range
                k = min(cap + 1, int(index.ntotal))
                dist, labels = index.search(mat, k)
                rows, dist, labels = np.repeat(ids, k), dist.ravel(), labels.ravel()
            keep = (labels >= 0) & (rows != labels) & (dist >= threshold)
            lo, hi = np.minimum(rows, labels)[keep], np.maximum(rows, labels)[keep]
            parts.append((lo, hi, dist[keep]))
        if not parts:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
        a, b, d = (np.concatenate(x) for x in zip(*parts))
        pair, first = np.unique(np.stack([a, b], axis=1).astype(np.int64), axis=0,
                                return_index=True)
        return cap_per_node(pair[:, 0], pair[:, 1], d[first], cap, strong)


def dense_pairs(ids: np.ndarray, mat: np.ndarray, threshold: float
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (a < b by id) with cosine >= threshold among a few thousand unit vectors:
    (id_a, id_b, score), by blocks of one matrix product (what a flat range search does)."""
    order = np.argsort(ids, kind="stable")
    ids, mat = ids[order], np.ascontiguousarray(mat[order], dtype=np.float32)
    parts = []
    for s in range(0, len(ids), DENSE_BLOCK):
        score = mat[s:s + DENSE_BLOCK] @ mat.T
        i, j = np.nonzero(score >= threshold)
        keep = j > i + s
        i, j = i[keep], j[keep]
        parts.append((ids[i + s], ids[j], score[i, j]))
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    a, b, d = (np.concatenate(x) for x in zip(*parts))
    return a.astype(np.int64), b.astype(np.int64), d.astype(np.float32)
