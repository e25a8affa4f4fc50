"""Search, IVF join: every pair of vectors within a cosine threshold, list by list.

Each vector's neighbours are looked for in the ``probes`` IVF lists whose centroids
are nearest to it (its own list first), as a search with ``nprobe = probes`` would,
but computed as matrix products per list instead of one search per vector: the
vectors of a list against each other, then, for each list, the vectors of other
lists that probe it against its members. Never an n x n matrix: the work is the
sum over lists of (members x probers), about probes x N x N / nlist dot products.
Vectors come from the index's own SQ8 codes (no second read of the store).
"""

from __future__ import annotations

import logging

import numpy as np

from .hamming import load_faiss

log = logging.getLogger(__name__)


class _Lists:
    """The members of an IVF-SQ index's lists, decoded from its codes (mmap or not)."""

    def __init__(self, index: object):
        faiss = load_faiss()
        self.ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
        inv, size = self.ivf.invlists, self.ivf.invlists.code_size
        nlist = self.ivf.nlist
        self.sizes = np.array([inv.list_size(i) for i in range(nlist)], np.int64)
        # views into the index's own memory (no copies), and every id once (8 bytes each)
        self.codes = [faiss.rev_swig_ptr(inv.get_codes(i), int(n) * size).reshape(int(n), size)
                      for i, n in enumerate(self.sizes.tolist())]
        self.ids = [faiss.rev_swig_ptr(inv.get_ids(i), int(n)).astype(np.int64)
                    for i, n in enumerate(self.sizes.tolist())]
        self.centroids = (self.ivf.quantizer.reconstruct_n(0, nlist) if self.ivf.by_residual
                          else np.zeros((nlist, self.ivf.d), np.float32))

    def decode(self, codes: np.ndarray, lists: np.ndarray) -> np.ndarray:
        """Codes (rows) of members of ``lists`` (one list per row) → float32 vectors."""
        vecs = self.ivf.sq.decode(np.ascontiguousarray(codes))
        vecs += self.centroids[lists]
        return vecs

    def members(self, lst: int) -> np.ndarray:
        return self.decode(self.codes[lst], np.full(len(self.ids[lst]), lst))


def _hits(sim: np.ndarray, threshold: float, rows: np.ndarray, cols: np.ndarray, parts: list,
          upper: bool = False) -> None:
    r, c = np.nonzero(sim >= threshold)
    if upper:                                      # a list against itself: each pair once
        keep = r < c
        r, c = r[keep], c[keep]
    if len(r):
        a, b = rows[r], cols[c]
        parts.append((np.minimum(a, b), np.maximum(a, b), sim[r, c]))


def ivf_pairs(index: object, threshold: float, probes: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (a < b by id) with cosine >= threshold among each vector's probed lists."""
    lists = _Lists(index)
    parts: list = []
    visits = []                                    # (probed list, own list, row in own list)
    for lst in np.flatnonzero(lists.sizes).tolist():
        vecs, ids = lists.members(lst), lists.ids[lst]
        _hits(vecs @ vecs.T, threshold, ids, ids, parts, upper=True)
        if probes > 1:
            _, near = lists.ivf.quantizer.search(vecs, probes)
            row = np.repeat(np.arange(len(ids)), probes)
            near = near.reshape(-1)
            other = (near != lst) & (near >= 0)
            visits.append(np.stack([near[other], np.full(other.sum(), lst), row[other]], 1))
    if visits:
        _cross(lists, np.concatenate(visits), threshold, parts)
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    a, b, d = (np.concatenate(x) for x in zip(*parts))
    pair, first = np.unique(np.stack([a, b], axis=1), axis=0, return_index=True)
    log.debug("IVF join: %d lists, %d probes, %d pairs", len(lists.sizes), probes, len(pair))
    return pair[:, 0], pair[:, 1], d[first]


def _cross(lists: _Lists, visits: np.ndarray, threshold: float, parts: list) -> None:
    """Vectors against the members of the other lists they probe, one probed list at a time."""
    visits = visits[np.lexsort((visits[:, 2], visits[:, 1], visits[:, 0]))]
    cuts = np.flatnonzero(np.diff(visits[:, 0])) + 1
    for group in np.split(visits, cuts):
        target = int(group[0, 0])
        src_cuts = np.flatnonzero(np.diff(group[:, 1])) + 1
        codes, ids = [], []
        for part in np.split(group, src_cuts):
            src = int(part[0, 1])
            codes.append(lists.codes[src][part[:, 2]])
            ids.append(lists.ids[src][part[:, 2]])
        queries = lists.decode(np.concatenate(codes), group[:, 1])
        _hits(queries @ lists.members(target).T, threshold, np.concatenate(ids),
              lists.ids[target], parts)
