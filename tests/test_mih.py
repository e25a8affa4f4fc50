"""Multi-index hashing is exact: the same pairs as the brute-force scan, on awkward data."""

import numpy as np
import pytest

from alice_gpu.search import mih
from alice_gpu.search.hamming import brute_hamming_pairs, hamming_pairs


def _codes(n: int, seed: int) -> np.ndarray:
    """Random codes with planted near-copies (0-12 bits apart) and a block of equal codes."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)
    for src in rng.integers(0, n, n // 4):
        v = int(codes[src])
        for bit in rng.integers(0, 64, rng.integers(0, 13)):
            v ^= 1 << int(bit)
        codes[rng.integers(0, n)] = v
    codes[: min(n, 40)] = codes[0] if n else codes[:0]
    return codes


@pytest.mark.parametrize("n", [2, 3, 257, 5000, 30000])
@pytest.mark.parametrize("threshold", [0, 1, 4, 10, 11, 20])
def test_same_pairs_as_brute_force(n, threshold):
    codes = _codes(n, seed=n + threshold)
    got = hamming_pairs(codes, threshold)
    ref = brute_hamming_pairs(codes, threshold)
    assert [a.tolist() for a in got] == [b.tolist() for b in ref]


@pytest.mark.parametrize("threads", [1, 3])
def test_multi_index_path_itself_is_exact(threads):
    codes = _codes(20000, seed=7)
    assert mih.plan(len(codes), 10) is not None          # not the brute-force fallback
    got = mih.mih_pairs(codes, 10, threads=threads)
    ref = brute_hamming_pairs(codes, 10)
    assert [a.tolist() for a in got] == [b.tolist() for b in ref]
    assert len(ref[0]) > 1000


def test_plan_grows_chunks_with_n_and_falls_back_for_tiny_or_huge_thresholds():
    small, big = mih.plan(20000, 10), mih.plan(1_000_000, 10)
    assert small is not None and big is not None
    assert max(big[0]) >= max(small[0])
    assert mih.plan(10, 10) is None                      # a scan is cheaper
    assert mih.plan(1_000_000, 64) is None               # every pair qualifies


def _cross_reference(base: np.ndarray, queries: np.ndarray, threshold: int):
    """The bipartite join by numpy, all against all (small n only)."""
    d = np.bitwise_count(base[:, None] ^ queries[None, :]).astype(np.int64)
    i, j = np.nonzero(d <= threshold)
    return i, j, d[i, j]


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("n_base,n_query,threshold", [(1, 1, 0), (300, 2100, 10), (6000, 6000, 6),
                                                      (6000, 6000, 11)])
def test_cross_join_is_exact_and_never_pairs_one_side(threads, n_base, n_query, threshold):
    codes = _codes(n_base + n_query, seed=n_base + threshold)
    base, queries = codes[:n_base], codes[n_base:]
    ref = _cross_reference(base, queries, threshold)
    got = mih.mih_cross_pairs(base, queries, threshold, threads=threads)
    if got is None:                                       # the plan chose brute force
        from alice_gpu.search.hamming import hamming_cross_pairs

        got = hamming_cross_pairs(base, queries, threshold)
    assert [a.tolist() for a in got] == [b.tolist() for b in ref]


def test_cross_join_fallback_is_exact():
    from alice_gpu.search.hamming import hamming_cross_pairs

    codes = _codes(60, seed=3)
    got = hamming_cross_pairs(codes[:20], codes[20:], 40)   # too wide for multi-index hashing
    assert mih.plan(60, 40) is None
    ref = _cross_reference(codes[:20], codes[20:], 40)
    assert [a.tolist() for a in got] == [b.tolist() for b in ref]
