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

import ctypes
import logging
import mmap
import sys

import numpy as np

from .hamming import load_faiss

log = logging.getLogger(__name__)


class _Lists:
    """The members of an IVF-SQ index's lists, decoded from its codes (mmap or not)."""

    def __init__(self, index: object, mapped: bool = False):
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
        self.span = _span(self.codes) if mapped and sys.platform.startswith("linux") else None

    def forget(self) -> None:
        """Let go of the file's pages read so far (a read-only file mapping: they come
        back from the page cache when read again), so the join's resident memory is the
        lists in use, not the whole index."""
        if self.span is not None:
            _madvise_dontneed(*self.span)

    def decode(self, codes: np.ndarray, lists: np.ndarray) -> np.ndarray:
        """Codes (rows) of members of ``lists`` (one list per row) → float32 vectors."""
        vecs = self.ivf.sq.decode(np.ascontiguousarray(codes))
        vecs += self.centroids[lists]
        return vecs

    def members(self, lst: int) -> np.ndarray:
        return self.decode(self.codes[lst], np.full(len(self.ids[lst]), lst))


class _Pairs:
    """The pairs found so far; with a cap, deduplicated and capped per vector every
    ``COMPACT_EVERY`` pairs, so memory stays about vectors x cap however dense the data."""

    def __init__(self, cap: int | None, strong: float | None):
        self.cap, self.strong, self.parts, self.size = cap, strong, [], 0
        self.limit = COMPACT_EVERY

    def append(self, part: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
        self.parts.append(part)
        self.size += len(part[0])
        if self.cap is not None and self.size > self.limit:
            self.parts = [self.compact()]
            self.size = len(self.parts[0][0])
            self.limit = max(COMPACT_EVERY, 2 * self.size)   # amortised: O(1) sorts per pair

    def compact(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        a, b, d = _unique_pairs(*(np.concatenate(x) for x in zip(*self.parts)))
        return cap_per_node(a, b, d, self.cap, self.strong)

    def __bool__(self) -> bool:
        return bool(self.parts)


COMPACT_EVERY = 2_000_000     # pairs gathered before the first compaction


def _span(arrays: list[np.ndarray]) -> tuple[int, int] | None:
    """The page-aligned address range that holds ``arrays`` (views of one mapping)."""
    spans = [(a.ctypes.data, a.ctypes.data + a.nbytes) for a in arrays if a.size]
    if not spans:
        return None
    page = mmap.PAGESIZE
    lo = min(x for x, _ in spans) // page * page
    hi = -(-max(y for _, y in spans) // page) * page
    return lo, hi - lo


def _madvise_dontneed(addr: int, length: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    if libc.madvise(ctypes.c_void_p(addr), ctypes.c_size_t(length), MADV_DONTNEED) != 0:
        log.debug("madvise: errno %d", ctypes.get_errno())


MADV_DONTNEED = 4          # Linux: drop the pages from this process (file pages re-read)
FORGET_EVERY = 64          # lists joined between two let-gos of the file's pages


def _hits(sim: np.ndarray, threshold: float, rows: np.ndarray, cols: np.ndarray, parts: _Pairs,
          upper: bool = False, cap: int | None = None) -> None:
    """The pairs of ``sim`` (rows x cols) at or above ``threshold``; ``cap``: only each
    row's ``cap`` closest (so a dense cluster yields rows x cap pairs, not rows x cols)."""
    if upper:                                      # a list against itself: no self pairs
        np.fill_diagonal(sim, -np.inf)
    if cap is not None and sim.shape[1] > cap:
        top = np.argpartition(sim, -cap, axis=1)[:, -cap:]
        val = np.take_along_axis(sim, top, 1)
        r, k = np.nonzero(val >= threshold)
        c, score = top[r, k], val[r, k]
    else:
        r, c = np.nonzero(sim >= threshold)
        if upper:                                  # each pair once
            keep = r < c
            r, c = r[keep], c[keep]
        score = sim[r, c]
    if len(r):
        a, b = rows[r], cols[c]
        parts.append((np.minimum(a, b), np.maximum(a, b), score))


def ivf_pairs(index: object, threshold: float, probes: int, cap: int | None = None,
              strong: float | None = None, mapped: bool = False
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (a < b by id) with cosine >= threshold among each vector's probed lists;
    ``cap``: at most that many per vector from each list it probes, and as it goes only
    those :func:`cap_per_node` keeps (``strong`` passed on). ``mapped``: the index is a
    read-only file mapping, whose pages the join lets go of as it goes."""
    lists = _Lists(index, mapped)
    parts = _Pairs(cap, strong)
    visits = []                                    # (probed list, own list, row in own list)
    for k, lst in enumerate(np.flatnonzero(lists.sizes).tolist()):
        if k % FORGET_EVERY == FORGET_EVERY - 1:
            lists.forget()
        vecs, ids = lists.members(lst), lists.ids[lst]
        _hits(vecs @ vecs.T, threshold, ids, ids, parts, upper=True, cap=cap)
        if probes > 1:
            _, near = lists.ivf.quantizer.search(vecs, probes)
            row = np.repeat(np.arange(len(ids)), probes)
            near = near.reshape(-1)
            other = (near != lst) & (near >= 0)
            visits.append(np.stack([near[other], np.full(other.sum(), lst), row[other]], 1))
    if visits:
        _cross(lists, np.concatenate(visits), threshold, parts, cap)
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    lists.forget()
    a, b, d = _unique_pairs(*(np.concatenate(x) for x in zip(*parts.parts)))
    log.debug("IVF join: %d lists, %d probes, %d pairs", len(lists.sizes), probes, len(a))
    return a, b, d


def _unique_pairs(a: np.ndarray, b: np.ndarray, d: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each pair (a < b) once, sorted, by one int64 key per pair (ids below 2**31)."""
    key = a.astype(np.int64) << 31 | b.astype(np.int64)
    key, first = np.unique(key, return_index=True)
    return key >> 31, key & ((1 << 31) - 1), d[first]


def _cross(lists: _Lists, visits: np.ndarray, threshold: float, parts: _Pairs,
           cap: int | None = None) -> None:
    """Vectors against the members of the other lists they probe, one probed list at a time."""
    visits = visits[np.lexsort((visits[:, 2], visits[:, 1], visits[:, 0]))]
    cuts = np.flatnonzero(np.diff(visits[:, 0])) + 1
    for k, group in enumerate(np.split(visits, cuts)):
        if k % FORGET_EVERY == FORGET_EVERY - 1:
            lists.forget()
        target = int(group[0, 0])
        src_cuts = np.flatnonzero(np.diff(group[:, 1])) + 1
        codes, ids = [], []
        for part in np.split(group, src_cuts):
            src = int(part[0, 1])
            codes.append(lists.codes[src][part[:, 2]])
            ids.append(lists.ids[src][part[:, 2]])
        queries = lists.decode(np.concatenate(codes), group[:, 1])
        _hits(queries @ lists.members(target).T, threshold, np.concatenate(ids),
              lists.ids[target], parts, cap=cap)


def cap_per_node(a: np.ndarray, b: np.ndarray, score: np.ndarray, cap: int | None,
                 strong: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pairs among the ``cap`` highest-scoring of either of their two nodes (all of
    them when ``cap`` is None): at most nodes x cap pairs, whatever the density.
    ``strong``: past a node's best pair, only pairs scoring at least this count. Applied
    to a growing set of pairs in steps, it drops nothing the whole set would keep."""
    if cap is None or len(a) == 0:
        return a, b, score
    node = np.concatenate([a, b])                      # each pair seen from both ends
    both = np.concatenate([score, score])
    pair = np.concatenate([np.arange(len(a))] * 2)
    # one int64 key per end: the node (ids below 2**31), then the score descending in 2**22
    # steps of its range; one argsort of it is faster than a lexsort of both (measured)
    hi, lo = float(both.max()), float(both.min())
    q = ((hi - np.asarray(both, np.float64)) * (((1 << 22) - 1) / max(hi - lo, 1e-12)))
    order = np.argsort(node.astype(np.int64) << 22 | q.astype(np.int64), kind="stable")
    sorted_node = node[order]
    start = np.flatnonzero(np.r_[True, sorted_node[1:] != sorted_node[:-1]])
    rank = np.arange(len(order)) - np.repeat(start, np.diff(np.r_[start, len(order)]))
    ok = rank < cap
    if strong is not None:
        ok &= (rank == 0) | (both[order] >= strong)
    keep = np.zeros(len(a), bool)
    keep[pair[order[ok]]] = True
    return a[keep], b[keep], score[keep]
