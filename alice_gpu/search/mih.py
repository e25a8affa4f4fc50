"""Search, multi-index hashing: all pairs of 64-bit hashes within a threshold, below n².

The codes are cut into ``m`` chunks; a pair within ``t`` bits has a chunk within
``t // m`` bits (pigeonhole), so probing, per code and chunk, the buckets within
that radius finds every pair, and verifying on the whole code keeps exactly the
right ones. ``m`` is chosen from n and t by a cost model: wide chunks keep buckets
sparse but need more probes. The inner loop is C (``_mih.c``, through ctypes);
tables, threads and the final order are numpy.
"""

from __future__ import annotations

import ctypes
import importlib.util
import itertools
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from math import comb

import numpy as np

log = logging.getLogger(__name__)

MAX_WIDTH = 24          # bucket tables of 2^24 offsets (64 MiB) at most
SMALL = 1 << 16         # codes: fewer than this are joined in one thread
PROBE_COST = 4.0        # a bucket probe (a random read of the offsets) against a verification


@lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL:
    spec = importlib.util.find_spec("alice_gpu.search._mih")
    if spec is None or not spec.origin:
        raise ImportError("alice_gpu.search._mih is not built; reinstall alice-gpu "
                          "(pip install . builds it with the C compiler)")
    lib = ctypes.CDLL(spec.origin)
    p, ll, i = ctypes.c_void_p, ctypes.c_longlong, ctypes.c_int
    lib.mih_join.restype = ll
    lib.mih_join.argtypes = [p, p, p, ll, p, i, i, p, i, i, ll, ll, p, p, p, ll]
    lib.mih_cross.restype = ll
    lib.mih_cross.argtypes = [p, p, p, p, ll, p, i, i, p, i, i, ll, ll, p, p, p, ll]
    return lib


def _probes(width: int, radius: int) -> int:
    return sum(comb(width, k) for k in range(min(radius, width) + 1))


def plan(n: int, threshold: int) -> tuple[list[int], int] | None:
    """Chunk widths and radius with the least estimated work, or None when a
    brute-force scan (n/2 verifications per code) is estimated cheaper."""
    best, best_cost = None, n / 2.0
    for m in range(1, 17):
        widths = [64 // m + (1 if c < 64 % m else 0) for c in range(m)]
        if max(widths) > MAX_WIDTH:
            continue
        radius = threshold // m
        cost = sum(_probes(w, radius) * (PROBE_COST + n / 2.0 ** w) for w in widths)
        if cost < best_cost:
            best, best_cost = (widths, radius), cost
    return best


def _masks(width: int, radius: int) -> np.ndarray:
    out = [0]
    for k in range(1, min(radius, width) + 1):
        out += [sum(1 << b for b in bits) for bits in itertools.combinations(range(width), k)]
    return np.asarray(out, dtype=np.uint32)


def _ptr(a: np.ndarray) -> int:
    return a.ctypes.data


def mih_pairs(hashes: np.ndarray, threshold: int, threads: int | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Every pair (i < j) within ``threshold`` bits, sorted by (i, j); None when the
    plan says brute force is cheaper (tiny n or a very large threshold)."""
    return _pairs(np.ascontiguousarray(hashes, dtype=np.uint64), None, threshold, threads)


def mih_cross_pairs(base: np.ndarray, queries: np.ndarray, threshold: int,
                    threads: int | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Every (base row i, query row j) within ``threshold`` bits, sorted by (i, j); None
    when the plan says brute force is cheaper. Pairs inside one side are never examined."""
    codes = np.ascontiguousarray(np.concatenate([np.asarray(base, np.uint64),
                                                 np.asarray(queries, np.uint64)]))
    found = _pairs(codes, len(base), threshold, threads)
    if found is None:
        return None
    i, j, d = found
    return i, j - len(base), d


def _pairs(codes: np.ndarray, split: int | None, threshold: int, threads: int | None
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The join of ``codes`` with themselves (``split`` None) or of rows < split with the
    rest (a bipartite join)."""
    n = len(codes)
    chosen = plan(n, int(threshold))
    if chosen is None or n >= 2 ** 32:
        return None
    widths, radius = chosen
    log.debug("multi-index hashing: n=%d t=%d chunks=%s radius=%d", n, threshold, widths, radius)
    # below SMALL codes starting threads costs more than it saves (bench_duplicates.py)
    stripes = 1 if threads is None and n < SMALL else \
        max(1, min(threads or len(os.sched_getaffinity(0)), 8))
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    shift = 64
    earlier: list[int] = []
    with ThreadPoolExecutor(stripes) as pool:
        for width in widths:
            shift -= width
            parts += _join_chunk(codes, shift, width, radius, int(threshold),
                                 np.asarray(earlier, np.uint64), pool, stripes, split)
            earlier.append(((1 << width) - 1) << shift)
    i = np.concatenate([p[0] for p in parts])
    j = np.concatenate([p[1] for p in parts])
    d = np.concatenate([p[2] for p in parts])
    order = np.lexsort((j, i))
    return i[order], j[order], d[order]


def _join_chunk(codes: np.ndarray, shift: int, width: int, radius: int, threshold: int,
                earlier: np.ndarray, pool: ThreadPoolExecutor, stripes: int,
                split: int | None = None) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The pairs one chunk finds first: its buckets, joined in ``stripes`` threads."""
    key = ((codes >> np.uint64(shift)) & np.uint64((1 << width) - 1)).astype(np.uint32)
    rows = np.argsort(key, kind="stable").astype(np.uint32)   # rows increase in a bucket
    sorted_codes = codes[rows]
    off = np.zeros((1 << width) + 1, np.uint32)
    np.cumsum(np.bincount(key, minlength=1 << width), out=off[1:])
    mid = None
    if split is not None:      # where each bucket's query rows (rows >= split) start
        mid = (off[:-1] + np.bincount(key[:split], minlength=1 << width)).astype(np.uint32)
    del key
    masks = _masks(width, radius)
    lib = _lib()

    def run(stripe: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        capacity = max(1024, len(codes) // stripes)
        while True:
            oi = np.empty(capacity, np.int64)
            oj = np.empty(capacity, np.int64)
            od = np.empty(capacity, np.uint8)
            if mid is None:
                found = lib.mih_join(_ptr(sorted_codes), _ptr(rows), _ptr(off), 1 << width,
                                     _ptr(masks), len(masks), threshold, _ptr(earlier),
                                     len(earlier), radius, stripe, stripes,
                                     _ptr(oi), _ptr(oj), _ptr(od), capacity)
            else:
                found = lib.mih_cross(_ptr(sorted_codes), _ptr(rows), _ptr(off), _ptr(mid),
                                      1 << width, _ptr(masks), len(masks), threshold,
                                      _ptr(earlier), len(earlier), radius, stripe, stripes,
                                      _ptr(oi), _ptr(oj), _ptr(od), capacity)
            if found <= capacity:
                return oi[:found], oj[:found], od[:found].astype(np.int64)
            capacity = int(found)       # more pairs than room: run again with room

    return list(pool.map(run, range(stripes)))
