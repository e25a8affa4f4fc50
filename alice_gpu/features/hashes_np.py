"""Features on the CPU: the four perceptual hashes in numpy, computed inside the decode workers.

Torch-free so decode workers can use it: with ``parallel_hash_computation``
the hashes of a CPU run are computed in the worker processes (all cores, no
pixel transfer), and a hash-only run never imports torch at all. It also holds
the resampling and DCT matrices that the torch implementation
(:mod:`.hashes_torch`) uses, so both compute the same arithmetic (float64,
Pillow's Lanczos weights) and give the same bits; the tests compare them on
real photos.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np
from PIL import Image

from ..decode.blocks import lanczos_rows
from ..records import ORIENT_KEYS, ORIENTATIONS, STATUS_OK, Decoded

HASH_BITS = 64

_WEIGHTS = np.array([19595, 38470, 7471], dtype=np.int32)
_BIT_WEIGHTS = (np.uint64(1) << np.arange(63, -1, -1, dtype=np.uint64))

_SIGN = (-1.0) ** np.arange(8)


def orient_pixels(x: np.ndarray, k: int) -> np.ndarray:
    """Orientation ``k`` of (H, W, ...) pixels (what a rotated or mirrored copy holds)."""
    _, transpose, rows, cols = ORIENTATIONS[k]
    if transpose:
        x = np.swapaxes(x, 0, 1)
    if rows:
        x = x[::-1]
    if cols:
        x = x[:, ::-1]
    return np.ascontiguousarray(x)


def orient_low(low: np.ndarray, k: int) -> np.ndarray:
    """The 8x8 low DCT block (..., 8, 8) of orientation ``k`` of the image it came from.

    A flip of the image negates the odd frequencies along it and a transpose
    transposes the block, so all 8 pHashes follow from one DCT.
    """
    _, transpose, rows, cols = ORIENTATIONS[k]
    if transpose:
        low = np.swapaxes(low, -1, -2)
    if rows:
        low = low * _SIGN[:, None]
    if cols:
        low = low * _SIGN[None, :]
    return low


@lru_cache(maxsize=64)
def lanczos_matrix(in_size: int, out_size: int) -> np.ndarray:
    """Pillow's ``precompute_coeffs`` for LANCZOS as an (out, in) float64 matrix (cached)."""
    mat = lanczos_rows(in_size, out_size)
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
    """(..., H, W, 3) uint8 → float64 (..., H, W) with Pillow's integer luma.

    Pillow's own ``convert("L")`` per image: the same integer formula as
    :func:`luma_reference`, in C, about 8x faster than numpy's integer arithmetic
    (which has no BLAS path); the decode workers pay it for every file.
    """
    if rgb.dtype != np.uint8:
        return luma_reference(rgb)
    frames = rgb.reshape(-1, *rgb.shape[-3:])
    out = np.empty(frames.shape[:-1], dtype=np.float64)
    for i, frame in enumerate(frames):
        out[i] = Image.fromarray(np.ascontiguousarray(frame), "RGB").convert("L")
    return out.reshape(rgb.shape[:-1])


def luma_reference(rgb: np.ndarray) -> np.ndarray:
    """Pillow's integer luma, (R*19595 + G*38470 + B*7471 + 0x8000) >> 16, in numpy."""
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
    """All four hashes' bits, (..., 64) bool each, from (..., H, W) gray (H, W multiples of 8),
    and the pHash bits of the 7 other orientations (``ORIENT_KEYS``)."""
    lead = gray.shape[:-2]
    h, w = gray.shape[-2:]
    px8 = resize_gray(gray, 8, 8).reshape(*lead, 64)
    ahash = px8 > px8.mean(axis=-1, keepdims=True)
    px98 = resize_gray(gray, 9, 8)
    dhash = (px98[..., :, 1:] > px98[..., :, :-1]).reshape(*lead, 64)
    px32 = resize_gray(gray, 32, 32)
    dct = dct_matrix(32, 8)
    block = dct @ px32 @ dct.T
    low = block.reshape(*lead, 64)
    phash = low > np.median(low, axis=-1, keepdims=True)
    oriented = {}
    for k, key in enumerate(ORIENT_KEYS, 1):
        o = orient_low(block, k).reshape(*lead, 64)
        oriented[key] = o > np.median(o, axis=-1, keepdims=True)
    blocks = gray.reshape(*lead, 8, h // 8, 8, w // 8).mean(axis=(-3, -1)).reshape(*lead, 64)
    whash = blocks > np.median(blocks, axis=-1, keepdims=True)
    return {"ahash": ahash, "dhash": dhash, "phash": phash, "whash": whash, **oriented}


def hashes(pixels: np.ndarray) -> dict[str, np.ndarray]:
    """uint8 (..., H, W, 3) RGB or (..., H, W) luma → {name: uint64 (...)} (the four
    hashes and ``ORIENT_KEYS``)."""
    gray = to_gray(pixels) if pixels.shape[-1] == 3 and pixels.ndim >= 3 else pixels.astype(np.float64)
    return {k: pack_bits(v) for k, v in hash_bits(gray).items()}


def hash_decoded(decoded: Sequence[Decoded]) -> None:
    """Fill ``hashes`` of the OK records in place: one vectorised pass over their pixels."""
    ok = [d for d in decoded if d.status == STATUS_OK and d.pixels is not None]
    if not ok:
        return
    batch = hashes(np.stack([d.pixels for d in ok]))
    for i, d in enumerate(ok):
        d.hashes = {k: int(v[i]) for k, v in batch.items()}
        if d.frames is not None and d.frames.pixels is not None:   # a video: every frame
            got = hashes(d.frames.pixels)
            d.frames.hashes = [{k: int(v[j]) for k, v in got.items()}
                               for j in range(len(d.frames.times))]


def hash_hex(value: int) -> str:
    """16-digit hex in imagehash's ``str()`` order."""
    return f"{int(value) & 0xFFFFFFFFFFFFFFFF:016x}"


def hamming(a: int, b: int) -> int:
    """Bits that differ between two packed 64-bit hashes."""
    return (int(a) ^ int(b)).bit_count()
