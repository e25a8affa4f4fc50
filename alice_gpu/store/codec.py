"""The stored form of an embedding: int8 codes with one float32 scale per vector.

A 1280-d vector takes 1,284 bytes instead of 5,120 (fp32) or 2,560 (fp16), in a
``TINYINT[dim]`` column and a ``FLOAT`` column, so migrations stay plain SQL. The
scale is ``max|x| / 127`` per vector, so no value saturates; decoded vectors are
re-normalised, so a vector's cosine with itself stays 1. Measured on real
embeddings, a decoded vector's cosine with its original is >= 0.9998, as close
as fp16 gets for these small values (benchmarks/RESULTS.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa



def encode(mat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, dim) float → int8 codes (n, dim) and float32 scales (n,)."""
    mat = np.asarray(mat, dtype=np.float32)
    scale = (np.abs(mat).max(axis=1) / 127.0 if mat.shape[1] else
             np.zeros(len(mat))).astype(np.float32)
    safe = np.where(scale > 0, scale, 1.0).astype(np.float32)
    codes = np.clip(np.rint(mat / safe[:, None]), -127, 127).astype(np.int8)
    return codes, scale


def decode(codes: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """int8 codes and scales → (n, dim) float32, L2-normalised (a zero vector stays zero)."""
    mat = np.asarray(codes, dtype=np.int8).astype(np.float32)
    mat *= np.asarray(scale, dtype=np.float32)[:, None]
    norm = np.linalg.norm(mat, axis=1, keepdims=True)
    np.divide(mat, norm, out=mat, where=norm > 0)
    return mat


def to_arrow(codes: np.ndarray, scale: np.ndarray, dim: int) -> tuple["pa.Array", "pa.Array"]:
    """The ``scale`` and ``vector`` columns of encoded vectors, without per-row objects."""
    import pyarrow as pa

    return (pa.array(np.asarray(scale, np.float32), pa.float32()),
            pa.FixedSizeListArray.from_arrays(
                pa.array(np.asarray(codes, np.int8).reshape(-1), pa.int8()), dim))


def from_arrow(vector: "pa.ChunkedArray | pa.Array", scale: "pa.ChunkedArray | pa.Array",
               dim: int) -> np.ndarray:
    """The ``vector`` (TINYINT[dim]) and ``scale`` columns → (n, dim) float32."""
    import pyarrow as pa

    vec = vector.combine_chunks() if isinstance(vector, pa.ChunkedArray) else vector
    if len(vec) == 0:
        return np.zeros((0, dim), np.float32)
    if vec.null_count:
        raise ValueError("an embedding row is NULL")
    codes = vec.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
    sc = (scale.combine_chunks() if isinstance(scale, pa.ChunkedArray) else scale)
    return decode(codes, sc.to_numpy(zero_copy_only=False))
