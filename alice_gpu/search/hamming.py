"""Search, Hamming: exact searches over packed 64-bit hashes on the CPU.

Top-k by XOR + popcount in numpy. All pairs within a threshold (within one set,
or across two): a dense numpy product when small, multi-index hashing
(:mod:`.mih`) where its cost model wins, else FAISS's brute-force range search,
which defines the semantics the others and the CUDA kernels in ``kernels/``
(:mod:`alice_gpu.gpu.kernels`) must meet.
"""

from __future__ import annotations

import numpy as np

# below this many code comparisons a dense numpy XOR + popcount beats starting the
# multi-index threads (measured in benchmarks/bench_duplicates.py at 462 files)
DENSE_MAX = 1 << 20


def load_faiss():
    """FAISS, imported on first use (hash-only runs and hash top-k never need it)."""
    import faiss

    return faiss


def _as_bytes(hashes: np.ndarray) -> np.ndarray:
    """uint64 → (n, 8) uint8, big-endian so bit order is irrelevant to distances."""
    return np.ascontiguousarray(np.asarray(hashes, dtype=">u8").view(np.uint8).reshape(-1, 8))


def hamming_topk(query: int, hashes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact Hamming top-k: (distances, row indices), nearest first, ties by row order."""
    if len(hashes) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    dist = np.bitwise_count(np.asarray(hashes, dtype=np.uint64) ^ np.uint64(query)).astype(np.int64)
    k = min(k, len(dist))
    order = np.lexsort((np.arange(len(dist)), dist))[:k]
    return dist[order], order


def hamming_pairs(hashes: np.ndarray, threshold: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair of rows (i < j) within ``threshold`` bits: (i, j, distance), sorted by (i, j).

    Multi-index hashing (sub-quadratic) wherever its cost model beats a scan; else
    FAISS's brute-force range search, which defines the semantics both must meet.
    """
    n = len(hashes)
    if n < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    if n * n <= 2 * DENSE_MAX:
        codes = np.asarray(hashes, np.uint64)
        d = np.bitwise_count(codes[:, None] ^ codes[None, :])
        i, j = np.nonzero(np.triu(d <= threshold, 1))        # row-major: sorted by (i, j)
        return i.astype(np.int64), j.astype(np.int64), d[i, j].astype(np.int64)
    from .mih import mih_pairs

    found = mih_pairs(hashes, threshold)
    return found if found is not None else brute_hamming_pairs(hashes, threshold)


def brute_hamming_pairs(hashes: np.ndarray, threshold: int
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs within ``threshold`` bits by an all-against-all FAISS scan (the reference)."""
    n = len(hashes)
    if n < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    rows, labels, dist = _range_search(hashes, hashes, threshold)
    keep = rows < labels
    i, j, d = rows[keep], labels[keep], dist[keep]
    order = np.lexsort((j, i))
    return i[order], j[order], d[order]


def _range_search(base: np.ndarray, queries: np.ndarray, threshold: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FAISS's exact scan: (query row, base row, distance) of every pair within
    ``threshold`` bits, by query."""
    index = load_faiss().IndexBinaryFlat(64)
    index.add(_as_bytes(base))
    # FAISS keeps distances strictly below the radius
    lims, dist, labels = index.range_search(_as_bytes(queries), int(threshold) + 1)
    rows = np.repeat(np.arange(len(queries)), np.diff(lims).astype(np.int64))
    return rows, labels.astype(np.int64), dist.astype(np.int64)


def hamming_cross_pairs(base: np.ndarray, queries: np.ndarray, threshold: int
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (base row i, query row j) within ``threshold`` bits: (i, j, distance), sorted
    by (i, j). Multi-index hashing where it is cheaper, else a FAISS range search of the
    queries over the base."""
    empty = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    if len(base) == 0 or len(queries) == 0:
        return empty
    if len(base) * len(queries) <= DENSE_MAX:
        d = np.bitwise_count(np.asarray(base, np.uint64)[:, None]
                             ^ np.asarray(queries, np.uint64)[None, :])
        i, j = np.nonzero(d <= threshold)                    # row-major: sorted by (i, j)
        return i.astype(np.int64), j.astype(np.int64), d[i, j].astype(np.int64)
    from .mih import mih_cross_pairs

    found = mih_cross_pairs(base, queries, threshold)
    if found is not None:
        return found
    j, i, d = _range_search(base, queries, threshold)
    order = np.lexsort((j, i))
    return i[order], j[order], d[order]
