"""Blocked brute force on a device: every pair of stored vectors within a cosine threshold.

On a GPU an exact all-pairs pass is faster than any CPU index: the vectors go to
the device once (streamed from the store in slices), then each block of rows is
multiplied with each block at or after it (fp32, no TF32, so scores match the
CPU's) and only the pairs above the threshold come back. Quadratic work, so it is used on
CUDA only; the tests run it on the CPU device against FAISS's exact range search.
"""

from __future__ import annotations

import logging
from typing import Iterable

import numpy as np
import torch

log = logging.getLogger(__name__)


def cosine_pairs(slices: Iterable[tuple[np.ndarray, np.ndarray]], threshold: float,
                 device: torch.device, block: int = 8192
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (a < b by id) with cosine >= threshold: (id_a, id_b, score)."""
    ids_parts, mats = [], []
    for ids, mat in slices:
        ids_parts.append(np.asarray(ids, np.int64))
        host = torch.from_numpy(np.ascontiguousarray(mat, dtype=np.float32))
        if device.type == "cuda":
            host = host.pin_memory()
        mats.append(host.to(device, non_blocking=True))
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
    if not mats:
        return empty
    ids = np.concatenate(ids_parts)
    x = torch.cat(mats)
    del mats
    n = len(ids)
    rows, cols, scores = [], [], []
    with torch.no_grad():
        for s in range(0, n, block):
            for t in range(s, n, block):
                sim = x[s:s + block] @ x[t:t + block].T         # (block, block) at most
                hit = sim >= threshold
                if t == s:                                      # the diagonal: only j > i
                    hit = torch.triu(hit, diagonal=1)
                r, c = hit.nonzero(as_tuple=True)
                if len(r):
                    rows.append((r + s).cpu().numpy())
                    cols.append((c + t).cpu().numpy())
                    scores.append(sim[r, c].cpu().numpy())
    if not rows:
        return empty
    r, c, d = np.concatenate(rows), np.concatenate(cols), np.concatenate(scores)
    a, b = ids[r], ids[c]
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    log.debug("blocked brute force on %s: %d vectors, %d pairs", device, n, len(lo))
    return lo, hi, d
