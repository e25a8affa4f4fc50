"""Search, vectors: the FAISS embedding index, derived from the store, never the other way round.

The index (inner product over L2-normalised vectors, ids = asset ids) is saved
atomically beside the DuckDB file with a sidecar naming the store's
``vectors_version`` it reflects. Missing, stale or unreadable files are rebuilt
from DuckDB; that is never fatal.
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np

from ..errors import StorageError
from ..store import Store
from .hamming import load_faiss as _faiss

log = logging.getLogger(__name__)

INDEX_FILE = "vectors.faiss"
SIDECAR_FILE = "vectors.json"


class VectorIndex:
    """The embedding index of one store, kept in step with ``Store.vectors_version``."""

    def __init__(self, store: Store):
        self.store = store
        self.dim = store.dim
        self.path = store.folder / INDEX_FILE
        self.sidecar = store.folder / SIDECAR_FILE
        self.index: object | None = None
        self.rebuilt = False
        self.deferred = False

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

    def _empty(self) -> object:
        return _faiss().IndexIDMap2(_faiss().IndexFlatIP(self.dim))

    def load(self) -> object:
        """The index, from disk when it matches the store, else rebuilt from DuckDB."""
        if self.index is not None:
            return self.index
        want = self.store.vectors_version()
        try:
            meta = json.loads(self.sidecar.read_text())
            if meta.get("version") != want or meta.get("dim") != self.dim:
                raise ValueError(f"stale (file v{meta.get('version')}, store v{want})")
            index = _faiss().read_index(str(self.path))
            if index.d != self.dim or index.ntotal != meta.get("count"):
                raise ValueError("does not match its sidecar")
            if not isinstance(index, _faiss().IndexIDMap2):
                raise ValueError(f"unexpected index type {type(index).__name__}")
            self.index = index
            return self.index
        except FileNotFoundError:
            reason = "missing"
        except Exception as exc:  # corrupt, truncated, garbage, stale: rebuild, never fatal
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return self.rebuild(reason)

    def rebuild(self, reason: str = "requested") -> object:
        ids, mat = self.store.embeddings()
        log.info("rebuilding vector index from the store (%s): %d vectors", reason, len(ids))
        index = self._empty()
        if len(ids):
            index.add_with_ids(np.ascontiguousarray(mat, dtype=np.float32), ids)
        self.index = index
        self.rebuilt = True
        try:
            self.save()   # also after a read-only open: the file is derived, not the store
        except (OSError, StorageError) as exc:
            log.info("could not save the rebuilt vector index (%s); using it in memory", exc)
        return index

    def update(self, remove_ids: np.ndarray, add_ids: np.ndarray, add_vecs: np.ndarray) -> None:
        """Apply changes and save."""
        self.apply(remove_ids, add_ids, add_vecs)
        self.save()

    def apply(self, remove_ids: np.ndarray, add_ids: np.ndarray, add_vecs: np.ndarray) -> None:
        """Apply committed changes in memory (``save`` writes them).

        Call ``load()`` before the run writes, so the loaded index matches the
        store as it was; applying a change twice is harmless (ids re-added are
        removed first), so a rebuild that already saw it stays correct.
        """
        if self.deferred:
            return
        index = self.load()
        drop = np.unique(np.concatenate([np.asarray(remove_ids, dtype=np.int64),
                                         np.asarray(add_ids, dtype=np.int64)]))
        if len(drop):
            index.remove_ids(drop)
        if len(add_ids):
            index.add_with_ids(np.ascontiguousarray(add_vecs, dtype=np.float32),
                               np.asarray(add_ids, dtype=np.int64))

    def save(self) -> None:
        """Atomic: temp file + rename, the sidecar last (a crash between = stale = rebuild)."""
        if self.deferred or self.index is None:
            return
        tmp = self.path.with_name(f".{INDEX_FILE}.tmp")
        stmp = self.sidecar.with_name(f".{SIDECAR_FILE}.tmp")
        meta = {"version": self.store.vectors_version(), "dim": self.dim,
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

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by cosine: (scores, ids) for one (dim,) query, best first."""
        index = self.load()
        k = min(k, index.ntotal)
        if k == 0:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        scores, ids = index.search(np.ascontiguousarray(query.reshape(1, -1), dtype=np.float32), k)
        keep = ids[0] >= 0
        return scores[0][keep], ids[0][keep]

    def range_pairs(self, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All pairs (i < j) with cosine >= threshold: (id_a, id_b, score)."""
        ids, mat = self.store.embeddings()
        if len(ids) < 2:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
        flat = _faiss().IndexFlatIP(self.dim)
        flat.add(np.ascontiguousarray(mat))
        lims, dist, labels = flat.range_search(np.ascontiguousarray(mat), float(threshold))
        rows = np.repeat(np.arange(len(ids)), np.diff(lims).astype(np.int64))
        keep = rows < labels
        return ids[rows[keep]], ids[labels[keep]], dist[keep]
