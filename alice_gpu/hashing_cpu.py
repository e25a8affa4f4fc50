"""Stage 4a on the CPU: the same four hashes in numpy, computed inside the decode workers.

This module is torch-free so decode workers can use it: with
``parallel_hash_computation`` the hashes of a CPU run are computed in the
worker processes (all cores, no pixel transfer), and a hash-only run never
imports torch at all. It also holds the resampling and DCT matrices that the
torch implementation in :mod:`alice_gpu.hashing` uses, so both compute the
same arithmetic (float64, Pillow's Lanczos weights) and give the same bits;
the tests compare them on real photos.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Sequence

import numpy as np

from .decoding import STATUS_OK, Decoded, DecodePlan, decode_file
from .discovery import FileEntry

_WEIGHTS = np.array([19595, 38470, 7471], dtype=np.int32)
_BIT_WEIGHTS = (np.uint64(1) << np.arange(63, -1, -1, dtype=np.uint64))


def _lanczos(x: float) -> float:
    if x == 0.0:
        return 1.0
    if -3.0 < x < 3.0:
        px = math.pi * x
        return (math.sin(px) / px) * (math.sin(px / 3.0) / (px / 3.0))
    return 0.0


@lru_cache(maxsize=64)
def lanczos_matrix(in_size: int, out_size: int) -> np.ndarray:
    """Pillow's ``precompute_coeffs`` for LANCZOS as an (out, in) float64 matrix."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 3.0 * filterscale
    mat = np.zeros((out_size, in_size), dtype=np.float64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size)
        weights = [_lanczos((x - center + 0.5) / filterscale) for x in range(xmin, xmax)]
        total = sum(weights)
        if total:
            mat[xx, xmin:xmax] = np.asarray(weights) / total
    mat.flags.writeable = False
    return mat


@lru_cache(maxsize=8)
def dct_matrix(n: int, keep: int) -> np.ndarray:
    """The first ``keep`` rows of scipy.fftpack's unnormalised DCT-II of size ``n``."""
    k = np.arange(keep)[:, None]
    i = np.arange(n)[None, :]
    mat = 2.0 * np.cos(np.pi * k * (2 * i + 1) / (2 * n))
    mat.flags.writeable = False
    return mat


def to_gray(rgb: np.ndarray) -> np.ndarray:
    """(..., H, W, 3) uint8 → float64 (..., H, W) with Pillow's integer luma."""
    luma = (rgb.astype(np.int32) @ _WEIGHTS + 0x8000) >> 16
    return luma.astype(np.float64)


def resize_gray(gray: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    """Pillow-exact LANCZOS of (..., H, W) gray: horizontal pass first, each pass rounded."""
    h, w = gray.shape[-2:]
    x = gray
    if out_w != w:
        x = np.clip(np.rint(x @ lanczos_matrix(w, out_w).T), 0, 255)
    if out_h != h:
        x = np.clip(np.rint(lanczos_matrix(h, out_h) @ x), 0, 255)
    return x


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """(..., 64) bool → (...) uint64, first bit most significant (imagehash's hex order)."""
    return (bits.astype(np.uint64) * _BIT_WEIGHTS).sum(axis=-1, dtype=np.uint64)


def hash_bits(gray: np.ndarray) -> dict[str, np.ndarray]:
    """All four hashes' bits, (..., 64) bool each, from (..., H, W) gray (H, W multiples of 8)."""
    lead = gray.shape[:-2]
    h, w = gray.shape[-2:]
    px8 = resize_gray(gray, 8, 8).reshape(*lead, 64)
    ahash = px8 > px8.mean(axis=-1, keepdims=True)
    px98 = resize_gray(gray, 9, 8)
    dhash = (px98[..., :, 1:] > px98[..., :, :-1]).reshape(*lead, 64)
    px32 = resize_gray(gray, 32, 32)
    dct = dct_matrix(32, 8)
    low = (dct @ px32 @ dct.T).reshape(*lead, 64)
    phash = low > np.median(low, axis=-1, keepdims=True)
    blocks = gray.reshape(*lead, 8, h // 8, 8, w // 8).mean(axis=(-3, -1)).reshape(*lead, 64)
    whash = blocks > np.median(blocks, axis=-1, keepdims=True)
    return {"ahash": ahash, "dhash": dhash, "phash": phash, "whash": whash}


# ------------------------------------------------------------------ hashes from JPEG block means
#
# A JPEG decoded at 1/8 scale is its 8x8 block means (the DC coefficients), for
# three quarters of the cost of the half-scale decode the hashes otherwise need,
# and with no resize at all. What imagehash computes from the full image (Lanczos
# to 8, 9 or 32 px; 8x8 box means for wHash) is estimated from those means by
# linear least squares under a smooth-image prior (simple kriging, exponential
# covariance): on the 461 upright photos of photo_collection that keeps aHash,
# pHash and wHash within 2 bits of imagehash for >= 99% of them (README).

_RHO = 16.0       # correlation length of the prior, in full-size pixels
_NUGGET = 1e-3    # ridge: the DC values are quantised and rounded
# rows of an axis operator: Lanczos to 8, to 9, to 32, then 8 box means
_A, _D, _P, _W = slice(0, 8), slice(8, 17), slice(17, 49), slice(49, 57)
BLOCKS_MAX = 256   # blocks per side at most (decoding.BLOCKS_MAX): the tables' reach


def _lanczos_rows(in_size: int, out_size: int) -> np.ndarray:
    """``lanczos_matrix`` computed with arrays (no Python loop): for many axis lengths."""
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


def _box_rows(in_size: int, out_size: int) -> np.ndarray:
    """Means over ``out_size`` equal spans of the axis (fractional pixels at the ends)."""
    edges = np.arange(out_size + 1) * (in_size / out_size)
    x = np.arange(in_size)
    overlap = (np.minimum(x[None, :] + 1, edges[1:, None]) - np.maximum(x[None, :], edges[:-1, None]))
    return np.clip(overlap, 0.0, None) / (in_size / out_size)


@lru_cache(maxsize=1)
def _prior_tables() -> tuple[np.ndarray, np.ndarray, int]:
    """exp(-|d| / rho) and its mean over one block, for every offset d an axis can have."""
    reach = 8 * (BLOCKS_MAX + 2)
    d = np.arange(-reach, reach + 1)
    single = np.exp(-np.abs(d) / _RHO)
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
def block_operator(n_px: int) -> np.ndarray:
    """(57, ceil(n_px / 8)): the resampled rows every hash needs, from 8-px block means.

    The encoder pads a partial last block by repeating the edge pixel, and the
    block means are modelled so. The estimate is the kriging one:
    ``T C B' (B C B' + nugget)^-1`` with T the targets, B the block averaging and
    C the prior's covariance. C is Toeplitz, so ``C B'`` is a strided view of one
    table; a few hundred microseconds per side length, cached.
    """
    n = -(-n_px // 8)
    single, block, reach = _prior_tables()
    block_gram, n_blocks = _gram_table()
    span = 8 * (n - 1)
    window = block[reach - span:reach + n_px]               # block[reach + x - 8b]
    cov = np.lib.stride_tricks.sliding_window_view(window, span + 1)[:, ::-8].copy()  # C B'
    x = np.arange(n_px)
    last = np.minimum(span + np.arange(8), n_px - 1)       # the padded last block's pixels
    cov[:, -1] = single[reach + x[:, None] - last[None, :]].mean(axis=1)
    # B C B': Toeplitz between full blocks, the padded last block's row and column apart
    gram = np.empty((n, n))
    diag = block_gram[n_blocks - n + 1:n_blocks + n]      # g(m) for m in -(n-1)..n-1
    gram[:, :] = np.lib.stride_tricks.sliding_window_view(diag, n)[::-1]
    gram[-1, :] = cov[last].mean(axis=0)
    gram[:, -1] = gram[-1, :]
    gram += _NUGGET * np.eye(n)
    targets = np.concatenate([_lanczos_rows(n_px, 8), _lanczos_rows(n_px, 9),
                              _lanczos_rows(n_px, 32), _box_rows(n_px, 8)])
    op = np.linalg.solve(gram, (targets @ cov).T).T        # gram is symmetric
    op.flags.writeable = False
    return op


def orient(a: np.ndarray, orientation: int) -> np.ndarray:
    """``a`` (rows, cols) as PIL's transpose for EXIF ``orientation`` would show it upright."""
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


def block_hashes(blocks: np.ndarray, width: int, height: int, orientation: int = 1
                 ) -> dict[str, int]:
    """The four hashes of the upright image from its 1/8-scale JPEG decode (stored orientation).

    ``width`` x ``height`` is the stored (not upright) size in pixels. Resampled
    values are rounded as Pillow rounds the small images imagehash compares
    (equal neighbours give a 0 bit in dHash, as there).
    """
    x = blocks.astype(np.float64)
    y = block_operator(height) @ (x @ block_operator(width).T)     # (57, 57), stored axes
    swap = orientation in (5, 6, 7, 8)

    def part(rows: slice, cols: slice) -> np.ndarray:
        return orient(y[cols, rows] if swap else y[rows, cols], orientation)

    def over_median(v: np.ndarray) -> np.ndarray:
        s = np.sort(v)                      # np.median costs 10x this for 64 values
        return v > (s[31] + s[32]) / 2

    px8 = np.rint(part(_A, _A)).reshape(64)
    px98 = np.rint(part(_A, _D))
    dct = dct_matrix(32, 8)
    low = (dct @ part(_P, _P) @ dct.T).reshape(64)
    bits = np.concatenate([px8 > px8.mean(), (px98[:, 1:] > px98[:, :-1]).reshape(64),
                           over_median(low), over_median(part(_W, _W).reshape(64))])
    packed = np.packbits(bits).tobytes()    # first bit most significant, as pack_bits
    return {name: int.from_bytes(packed[8 * i:8 * i + 8], "big")
            for i, name in enumerate(("ahash", "dhash", "phash", "whash"))}


def hashes(pixels: np.ndarray) -> dict[str, np.ndarray]:
    """uint8 (..., H, W, 3) RGB or (..., H, W) luma → {name: uint64 (...)}."""
    gray = to_gray(pixels) if pixels.shape[-1] == 3 and pixels.ndim >= 3 else pixels.astype(np.float64)
    return {k: pack_bits(v) for k, v in hash_bits(gray).items()}


def decode_and_hash(entries: Sequence[FileEntry], plan: DecodePlan,
                    known: dict[int, frozenset[str]] | None = None) -> list[Decoded]:
    """Worker entry point: decode, hash on the spot (``plan.hash_in_worker``), drop pixels.

    ``known`` maps a file size to the content hashes of indexed files of that size:
    a byte-identical file is recognised after reading it, and not decoded.
    """
    known = known or {}
    empty: frozenset[str] = frozenset()
    out = [decode_file(entry, plan.working_size, plan.mode, known.get(entry.size, empty),
                       plan.gpu_decode, plan.draft_size, plan.block_hashes)
           for entry in entries]
    for d in out:
        if d.blocks is not None:        # 1/8-scale JPEG luma: hashed here, whatever the plan
            w, h = (d.height, d.width) if d.orientation in (5, 6, 7, 8) else (d.width, d.height)
            d.hashes = block_hashes(d.blocks, w, h, d.orientation)
            d.blocks = None
    ok = [d for d in out if d.status == STATUS_OK and d.hashes is None]
    if plan.hash_in_worker and ok:
        batch = hashes(np.stack([d.pixels for d in ok]))   # one vectorised pass per chunk
        for i, d in enumerate(ok):
            d.hashes = {k: int(v[i]) for k, v in batch.items()}
    if not plan.keep_pixels:
        for d in ok:
            d.pixels = None
    return out
