"""Features of videos: their frames travel in the same batches as images (torch-free).

A video is featurised as its sampled frames, each hashed and embedded like an
image; its own row gets the poster frame's hashes and the normalised mean of its
frames' embeddings (the video-level embedding, what ``similar clip.mp4`` searches
with), and keeps every frame's hashes and embedding for the frames table.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from ..records import Decoded
from .batch import Features


def frames_of(items: Sequence[Decoded], index: Sequence[int]
              ) -> tuple[list[np.ndarray], list[int]]:
    """The pixels to compute (an image's working image; each frame of a video) and, for
    each, the position of the item it belongs to."""
    pixels: list[np.ndarray] = []
    owners: list[int] = []
    for i, d in zip(index, items):
        if d.frames is not None and d.frames.pixels is not None:
            pixels.extend(d.frames.pixels)
            owners.extend([i] * len(d.frames.pixels))
        else:
            pixels.append(d.pixels)
            owners.append(i)
    return pixels, owners


def per_item(items: Sequence[Decoded], owners: Sequence[int], results: Sequence[Features]
             ) -> Iterator[tuple[int, Features]]:
    """One result per item again: a video's frames folded into its own (the video's
    hashes are its poster's; its embedding the mean of its frames')."""
    k = 0
    while k < len(owners):
        i = owners[k]
        end = k
        while end < len(owners) and owners[end] == i:
            end += 1
        d = items[i]
        if d.frames is None or d.frames.pixels is None:
            yield i, results[k]
            k += 1
            continue
        yield i, _fold(d, results[k:end])
        k = end


def _fold(d: Decoded, got: Sequence[Features]) -> Features:
    bad = next((f.error for f in got if f.error), None)
    if bad is not None:
        return Features(None, None, bad)
    vf = d.frames
    if vf.hashes is None and got[0].hashes is not None:
        vf.hashes = [f.hashes for f in got]
    poster = vf.hashes[vf.poster] if vf.hashes else None
    emb = None
    if got[0].embedding is not None:
        vf.embeddings = np.stack([f.embedding for f in got]).astype(np.float32)
        emb = video_embedding(vf.embeddings)
    vf.pixels = None          # the frames' pixels are done with: rows carry features only
    return Features(poster, emb)


def video_embedding(frames: np.ndarray) -> np.ndarray:
    """The video-level embedding: the mean of its frames' unit vectors, unit length."""
    mean = frames.mean(axis=0)
    norm = float(np.linalg.norm(mean))
    return (mean / norm).astype(np.float32) if norm > 0 else mean.astype(np.float32)
