"""The records that travel between stages: a file found, a file decoded, a stored row.

Torch-free and tiny, so that every stage (and a decode worker process) can
import them; each stage's callables take and return these, which is what lets
another engine (a Ray cluster) call the same stage code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

STATUS_OK = "ok"
STATUS_FAILED = "failed"
STATUS_SAME = "same-as-indexed"   # bytes identical to an indexed file: not decoded
STATUS_RAW = "raw-jpeg"           # JPEG bytes handed to the GPU decoder (``--decode gpu``)

# The 8 orientations of an image (the dihedral group), as what each does to the pixels
# X: (transpose, then flip rows, then flip columns). A copy that is ``name`` of an
# original is that orientation of it. Index 0 is the image itself.
ORIENTATIONS: tuple[tuple[str, bool, bool, bool], ...] = (
    ("", False, False, False),
    ("mirrored", False, False, True),
    ("flipped vertically", False, True, False),
    ("rotated 180°", False, True, True),
    ("mirrored, rotated 270°", True, False, False),
    ("rotated 90°", True, False, True),
    ("rotated 270°", True, True, False),
    ("mirrored, rotated 90°", True, True, True),
)
# the orientation that undoes each one (rotations by 90° and 270° undo each other)
ORIENT_INVERSE = (0, 1, 2, 3, 4, 6, 5, 7)
# the stored pHashes of orientations 1..7 (``Decoded.hashes`` / ``AssetRecord.hashes`` keys)
ORIENT_KEYS = tuple(f"phash_o{k}" for k in range(1, len(ORIENTATIONS)))


@dataclass(frozen=True, slots=True)
class FileEntry:
    """A media file found on disk, with the stat facts change detection uses."""

    path: str
    size: int
    mtime_ns: int

    def __reduce__(self):
        # sent to a decode worker with every file: a slots dataclass's default pickling
        # calls fields() per object, several times the cost of this tuple
        return FileEntry, (self.path, self.size, self.mtime_ns)


@dataclass(slots=True)
class VideoFrames:
    """A video's sampled frames: (F, S, S, 3) uint8 working images (or (F, S, S) luma)
    at ``times`` seconds; ``hashes`` (one dict per frame, as ``Decoded.hashes``) once
    hashed, ``embeddings`` (F, D) once embedded; ``poster`` is the frame shown for it."""

    pixels: np.ndarray | None
    times: np.ndarray
    poster: int = 0
    hashes: list[dict[str, int]] | None = None
    embeddings: np.ndarray | None = None

    def __reduce__(self):
        return VideoFrames, (self.pixels, self.times, self.poster, self.hashes, self.embeddings)


@dataclass(slots=True)
class Decoded:
    """The outcome for one file; ``pixels`` is (S, S, 3) uint8 (or (S, S) luma) when OK."""

    path: str
    size: int
    mtime_ns: int
    status: str
    error: str | None = None
    width: int | None = None
    height: int | None = None
    format: str | None = None
    pixels: np.ndarray | None = None
    content_hash: str | None = None            # SHA-256 of the file's bytes (hex)
    hashes: dict[str, int] | None = None       # filled when hashed in the worker
    raw: bytes | None = None                   # JPEG bytes for the GPU decoder
    orientation: int = 1
    meta: dict | None = None                   # decode.metadata.extract: EXIF, generation data
    frames: VideoFrames | None = None          # a video's sampled frames (pixels = its poster)

    def __reduce__(self):
        # every file comes back from a worker as one of these: a plain tuple pickles
        # faster than a slots dataclass's default state (fields() per object)
        return Decoded, (self.path, self.size, self.mtime_ns, self.status, self.error,
                         self.width, self.height, self.format, self.pixels,
                         self.content_hash, self.hashes, self.raw, self.orientation, self.meta,
                         self.frames)

    @classmethod
    def failed(cls, entry: FileEntry, reason: str) -> "Decoded":
        return cls(entry.path, entry.size, entry.mtime_ns, STATUS_FAILED, reason)


@dataclass(slots=True)
class AssetRecord:
    """One row of the store's ``assets`` table; hashes are uint64 ints, empty for failures."""

    path: str
    size: int
    mtime_ns: int
    status: str
    error: str | None = None
    width: int | None = None
    height: int | None = None
    format: str | None = None
    hashes: dict[str, int] = field(default_factory=dict)
    embedding: np.ndarray | None = None
    id: int | None = None
    content_hash: str | None = None
    meta: dict | None = None
    frames: VideoFrames | None = None      # a video's frames: times, hashes, embeddings

    @classmethod
    def of(cls, d: Decoded, hashes: dict[str, int] | None = None,
           embedding: np.ndarray | None = None, error: str | None = None) -> "AssetRecord":
        """The row for a decoded file: its features, or a failure with the reason."""
        if error is not None or d.status != STATUS_OK:
            return cls(path=d.path, size=d.size, mtime_ns=d.mtime_ns, status=STATUS_FAILED,
                       error=error or d.error, width=d.width, height=d.height,
                       format=d.format, content_hash=d.content_hash, meta=d.meta)
        return cls(path=d.path, size=d.size, mtime_ns=d.mtime_ns, status=STATUS_OK,
                   width=d.width, height=d.height, format=d.format, hashes=hashes or {},
                   embedding=embedding, content_hash=d.content_hash, meta=d.meta,
                   frames=d.frames)
