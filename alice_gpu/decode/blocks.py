"""Decode-stage helper: a JPEG's 8x8 block means → the small luma working image.

A JPEG decoded at 1/8 scale is its 8x8 block means: libjpeg-turbo reads only
the DC coefficient of each block, so this is the cheapest decode there is:
with the estimate below, a 500 px photo costs a hash-only worker about 15%
less than the half-scale decode plus resize the hashes otherwise need. Treating those means as pixels and resizing
them would not keep the hashes within a couple of bits of ``imagehash``'s
(a 1/4 or 1/8 DCT scale gives pHash 91-95% within 2 bits on the shared photos).

So the working image is *estimated*: what Pillow's Lanczos resize of the full
image to ``size`` px would give, from the block means, by linear least squares
under a smooth-image prior (simple kriging, exponential covariance of 16 px).
Per axis that is one matrix, ``T C B' (B C B' + nugget)^-1`` (T the Lanczos
resize, B the block averaging, C the prior's covariance), computed once per
side length in about half a millisecond and cached. Resampling the block means
as if they were pixels is more than 10x further off (tests/test_hashing.py).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

RHO = 16.0        # correlation length of the prior, in full-size pixels
NUGGET = 1e-3     # ridge: the DC values are quantised and rounded
BLOCKS_MIN, BLOCKS_MAX = 32, 256   # blocks per side for which the estimate is used


def in_range(width: int, height: int, size: int) -> bool:
    """Enough blocks for the hashes' detail (at least half the working size a side, and 32),
    few enough to keep the matrices cheap."""
    short = min(width, height)
    return max(BLOCKS_MIN * 8, 4 * size) <= short and max(width, height) <= BLOCKS_MAX * 8


def lanczos_rows(in_size: int, out_size: int) -> np.ndarray:
    """Pillow's LANCZOS coefficients (``precompute_coeffs``) as an (out, in) matrix.

    Computed with arrays, window by window, because a collection has hundreds of
    side lengths; the one implementation (``hashing_cpu.lanczos_matrix`` caches it),
    equal to a loop transcription of Pillow's C (tests/test_hashing.py).
    """
    scale = in_size / out_size
    fs = max(scale, 1.0)
    support = 3.0 * fs
    center = (np.arange(out_size) + 0.5) * scale
    lo = np.maximum((center - support + 0.5).astype(np.int64), 0)
    hi = np.minimum((center + support + 0.5).astype(np.int64), in_size)
    x = lo[:, None] + np.arange(int((hi - lo).max()))[None, :]    # each row's window
    u = (x - center[:, None] + 0.5) / fs
    third = np.sin(np.pi / 3.0 * u)                 # sin(pi u) = 3 sin(pi u/3) - 4 sin^3(pi u/3)
    with np.errstate(divide="ignore", invalid="ignore"):
        w = third * third * (9.0 - 12.0 * third * third) / (np.pi * np.pi * u * u)
    w[u == 0.0] = 1.0
    w[(x >= hi[:, None]) | (np.abs(u) >= 3.0)] = 0.0
    total = w.sum(axis=1, keepdims=True)
    w = np.divide(w, total, out=np.zeros_like(w), where=total != 0)
    mat = np.zeros((out_size, in_size + x.shape[1]))   # room for the windows' empty ends
    np.put_along_axis(mat, x, w, axis=1)
    return mat[:, :in_size]


@lru_cache(maxsize=1)
def _prior_tables() -> tuple[np.ndarray, np.ndarray, int]:
    """exp(-|d| / rho), and its mean over one block, for every offset d an axis can have."""
    reach = 8 * (BLOCKS_MAX + 2)
    d = np.arange(-reach, reach + 1)
    single = np.exp(-np.abs(d) / RHO)
    block = np.zeros_like(single)             # block[reach + d]: mean of single[reach + d - k]
    for k in range(8):
        block[k:] += single[:len(single) - k] / 8
    return single, block, reach


@lru_cache(maxsize=1)
def _gram_table() -> tuple[np.ndarray, int]:
    """g(m): covariance of two full block means m blocks apart, m in -M..M."""
    _, block, reach = _prior_tables()
    m = np.arange(-(BLOCKS_MAX + 1), BLOCKS_MAX + 2)
    g = block[reach + 8 * m[:, None] + np.arange(8)[None, :]].mean(axis=1)
    return g, BLOCKS_MAX + 1


@lru_cache(maxsize=1024)
def operator(n_px: int, out_size: int) -> np.ndarray:
    """(out_size, ceil(n_px / 8)): Lanczos-resized rows estimated from 8-px block means.

    The encoder pads a partial last block by repeating the edge pixel, and the
    block means are modelled so. C is Toeplitz, so ``C B'`` is a strided view of
    one table and ``B C B'`` another, except for the padded last block.
    """
    n = -(-n_px // 8)
    single, block, reach = _prior_tables()
    block_gram, mid = _gram_table()
    span = 8 * (n - 1)
    window = block[reach - span:reach + n_px]               # block[reach + x - 8b]
    cov = np.lib.stride_tricks.sliding_window_view(window, span + 1)[:, ::-8].copy()  # C B'
    x = np.arange(n_px)
    last = np.minimum(span + np.arange(8), n_px - 1)       # the padded last block's pixels
    cov[:, -1] = single[reach + x[:, None] - last[None, :]].mean(axis=1)
    gram = np.empty((n, n))                                 # B C B'
    diag = block_gram[mid - n + 1:mid + n]                  # g(m) for m in -(n-1)..n-1
    gram[:, :] = np.lib.stride_tricks.sliding_window_view(diag, n)[::-1]
    gram[-1, :] = cov[last].mean(axis=0)
    gram[:, -1] = gram[-1, :]
    gram += NUGGET * np.eye(n)
    op = np.linalg.solve(gram, (lanczos_rows(n_px, out_size) @ cov).T).T   # gram is symmetric
    op.flags.writeable = False
    return op


@lru_cache(maxsize=1024)
def _operator32(n_px: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``operator`` in float32, and its transpose laid out for the right-hand product."""
    op = operator(n_px, out_size).astype(np.float32)
    return op, np.ascontiguousarray(op.T)


def orient(a: np.ndarray, orientation: int) -> np.ndarray:
    """``a`` (rows, cols) as PIL's transpose for EXIF ``orientation`` shows it upright."""
    if orientation == 2:
        return a[:, ::-1]
    if orientation == 3:
        return a[::-1, ::-1]
    if orientation == 4:
        return a[::-1, :]
    if orientation == 5:
        return a.T
    if orientation == 6:
        return np.rot90(a, -1)
    if orientation == 7:
        return np.rot90(a, 2).T
    if orientation == 8:
        return np.rot90(a, 1)
    return a


def working_image(blocks: np.ndarray, width: int, height: int, orientation: int,
                  size: int) -> np.ndarray:
    """(size, size) uint8 upright luma from (ceil(h/8), ceil(w/8)) block means.

    ``width`` x ``height`` is the stored (not upright) size in pixels. The
    estimate is of the departures from the mean block, so a flat picture stays
    exactly flat (the kriging rows sum to 1 only within a few percent). A resize
    commutes with flips and transposes, so the estimate is made in stored
    orientation and turned upright afterwards.
    """
    x = blocks.astype(np.float32)     # float32: half the matmul time, same rounded pixels
    mean = x.mean()   # the prior is about departures from the picture's mean level
    x -= mean
    est = _operator32(height, size)[0] @ (x @ _operator32(width, size)[1])
    est += mean
    np.rint(est, out=est)
    np.clip(est, 0, 255, out=est)
    return np.ascontiguousarray(orient(est.astype(np.uint8), orientation))
