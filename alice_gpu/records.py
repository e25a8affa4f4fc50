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

    def __reduce__(self):
        # every file comes back from a worker as one of these: a plain tuple pickles
        # faster than a slots dataclass's default state (fields() per object)
        return Decoded, (self.path, self.size, self.mtime_ns, self.status, self.error,
                         self.width, self.height, self.format, self.pixels,
                         self.content_hash, self.hashes, self.raw, self.orientation)

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

    @classmethod
    def of(cls, d: Decoded, hashes: dict[str, int] | None = None,
           embedding: np.ndarray | None = None, error: str | None = None) -> "AssetRecord":
        """The row for a decoded file: its features, or a failure with the reason."""
        if error is not None or d.status != STATUS_OK:
            return cls(path=d.path, size=d.size, mtime_ns=d.mtime_ns, status=STATUS_FAILED,
                       error=error or d.error, width=d.width, height=d.height,
                       format=d.format, content_hash=d.content_hash)
        return cls(path=d.path, size=d.size, mtime_ns=d.mtime_ns, status=STATUS_OK,
                   width=d.width, height=d.height, format=d.format, hashes=hashes or {},
                   embedding=embedding, content_hash=d.content_hash)
