"""Features on a device: the perceptual hashes as batched torch ops (same code on cpu and cuda).

Definitions follow the ``imagehash`` library so users' thresholds carry over:
grayscale with Pillow's ITU-R 601-2 luma, Pillow's antialiased Lanczos resize
(reproduced exactly as separable weight matrices, horizontal pass first, each
pass rounded to uint8 as Pillow does), then

* aHash: 8x8, bit = pixel > mean
* dHash: 9x8 (w x h), bit = right neighbour > left... as imagehash: ``px[:, 1:] > px[:, :-1]``
* pHash: 32x32, 2-D DCT-II, top-left 8x8, bit = coefficient > median
* wHash: Haar LL band at 8x8 of the 256-px image (the block means), bit = LL > median

Bits are packed row-major with the first bit as the most significant, which
is the order of ``str(imagehash.ImageHash)``; values are stored as uint64.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np
import torch

from .hashes_np import HASH_BITS, ORIENT_KEYS, ORIENTATIONS, dct_matrix, lanczos_matrix
_SHIFTS = torch.arange(HASH_BITS - 1, -1, -1, dtype=torch.int64)


def _matrix(mat: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.tensor(mat, dtype=torch.float64, device=device)


def resize_gray(gray: torch.Tensor, out_w: int, out_h: int) -> torch.Tensor:
    """Pillow-exact LANCZOS resize of (N, H, W) uint8-valued float64 images."""
    _, h, w = gray.shape
    dev = gray.device
    x = gray
    if out_w != w:
        x = torch.matmul(x, _matrix(lanczos_matrix(w, out_w), dev).T).round_().clamp_(0, 255)
    if out_h != h:
        x = torch.matmul(_matrix(lanczos_matrix(h, out_h), dev), x).round_().clamp_(0, 255)
    return x


def to_gray(batch: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW RGB → float64 (N, H, W) with Pillow's integer luma (rounded)."""
    if batch.shape[1] == 1:
        return batch[:, 0].to(torch.float64)
    rgb = batch.to(torch.int32)
    luma = (rgb[:, 0] * 19595 + rgb[:, 1] * 38470 + rgb[:, 2] * 7471 + 0x8000) >> 16
    return luma.to(torch.float64)  # float64 so the bits equal the numpy path's


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """(N, 64) bool → (N,) int64 with bit 0 as the MSB (imagehash's hex order)."""
    shifts = _SHIFTS.to(bits.device)
    return (bits.to(torch.int64) << shifts).sum(dim=1)


def _median(x: torch.Tensor) -> torch.Tensor:
    """numpy's median (mean of the two middle values) over the last dim."""
    return torch.quantile(x, 0.5, dim=-1, keepdim=True)


class HashAlgorithm(ABC):
    """Template: grayscale batch in, packed 64-bit hashes out; subclasses give the bits."""

    name: ClassVar[str]

    def __call__(self, gray: torch.Tensor) -> torch.Tensor:
        bits = self.bits(gray)
        if bits.shape[1:] != (HASH_BITS,):
            raise ValueError(f"{self.name} produced {tuple(bits.shape)} bits, expected (N, 64)")
        return pack_bits(bits)

    @abstractmethod
    def bits(self, gray: torch.Tensor) -> torch.Tensor:
        """(N, H, W) float grayscale → (N, 64) bool."""


class AverageHash(HashAlgorithm):
    name = "ahash"

    def bits(self, gray: torch.Tensor) -> torch.Tensor:
        px = resize_gray(gray, 8, 8).flatten(1)
        return px > px.mean(dim=1, keepdim=True)


class DifferenceHash(HashAlgorithm):
    name = "dhash"

    def bits(self, gray: torch.Tensor) -> torch.Tensor:
        px = resize_gray(gray, 9, 8)
        return (px[:, :, 1:] > px[:, :, :-1]).flatten(1)


class PerceptualHash(HashAlgorithm):
    name = "phash"

    def block(self, gray: torch.Tensor) -> torch.Tensor:
        """(N, 8, 8) low-frequency DCT block of the 32x32 resize."""
        px = resize_gray(gray, 32, 32)
        dct = _matrix(dct_matrix(32, 8), gray.device)
        return dct @ px @ dct.T

    def bits(self, gray: torch.Tensor) -> torch.Tensor:
        low = self.block(gray).flatten(1)
        return low > _median(low)

    def with_orientations(self, gray: torch.Tensor) -> dict[str, torch.Tensor]:
        """Packed pHash and the pHashes of the 7 other orientations, from one DCT
        (``hashes_np.orient_low``)."""
        block = self.block(gray)
        sign = torch.tensor([(-1.0) ** k for k in range(8)], dtype=block.dtype,
                            device=block.device)
        flat = block.flatten(1)
        out = {"phash": pack_bits(flat > _median(flat))}
        for key, (_, transpose, rows, cols) in zip(ORIENT_KEYS, ORIENTATIONS[1:]):
            low = block.transpose(-1, -2) if transpose else block
            if rows:
                low = low * sign[:, None]
            if cols:
                low = low * sign[None, :]
            low = low.flatten(1)
            out[key] = pack_bits(low > _median(low))
        return out


class WaveletHash(HashAlgorithm):
    name = "whash"

    def bits(self, gray: torch.Tensor) -> torch.Tensor:
        _, h, w = gray.shape
        # Haar LL after (log2(size) - 3) levels is the mean of each block of an 8x8 grid
        ll = gray.reshape(-1, 8, h // 8, 8, w // 8).mean(dim=(2, 4)).flatten(1)
        return ll > _median(ll)


HASHES: dict[str, type[HashAlgorithm]] = {
    cls.name: cls for cls in (AverageHash, DifferenceHash, PerceptualHash, WaveletHash)
}


def get_hash(name: str) -> HashAlgorithm:
    try:
        return HASHES[name]()
    except KeyError:
        raise ValueError(f"unknown hash {name!r} (choose from {', '.join(HASHES)})") from None


def compute_hashes(batch: torch.Tensor, names: tuple[str, ...] = tuple(HASHES)
                   ) -> dict[str, torch.Tensor]:
    """All hashes of a uint8 NCHW batch, with the other orientations' pHashes when pHash is
    asked for; grayscale is computed once."""
    gray = to_gray(batch)
    out = {name: get_hash(name)(gray) for name in names if name != "phash"}
    if "phash" in names:
        out.update(PerceptualHash().with_orientations(gray))
    return out


def to_uint64(values: torch.Tensor | np.ndarray) -> np.ndarray:
    arr = values.cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    return arr.astype(np.int64, copy=False).view(np.uint64)
