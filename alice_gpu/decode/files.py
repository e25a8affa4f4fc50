"""Stage 2, decode: files in, fixed-size uint8 working images (or failure records) out.

Runs in CPU worker processes, so this stage imports Pillow, simplejpeg and
numpy only (no torch): a worker starts in a fraction of a second. A file that
fails never raises; it comes back as a record with ``status="failed"`` and a reason.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np
from PIL import Image

from ..errors import reason
from ..records import STATUS_FAILED, STATUS_OK, STATUS_RAW, STATUS_SAME, Decoded, FileEntry
from . import blocks, jpeg
from .pillow import finish, open_image, oriented, shrink

Known = Mapping[int, frozenset[str]]   # file size → content hashes of indexed files
_NOTHING: frozenset[str] = frozenset()


@dataclass(frozen=True)
class DecodePlan:
    """What decoding produces for one run (sent to the workers with every chunk)."""

    working_size: int
    mode: str = "RGB"          # "RGB" (embeddings need colour) or "L" (hash-only)
    hash_in_worker: bool = False
    keep_pixels: bool = True
    gpu_decode: bool = False   # JPEG bytes are handed over; nvJPEG decodes them on the device
    draft_size: int | None = None   # JPEG DCT scale floor; None: the working size
    block_means: bool = False       # luma: JPEGs in range estimated from 1/8-scale block means

    @property
    def bytes_per_item(self) -> int:
        if not self.keep_pixels:
            return 4096  # records, hashes and strings only
        return self.working_size ** 2 * (3 if self.mode == "RGB" else 1)


def decode_files(entries: Iterable[FileEntry], plan: DecodePlan, known: Known | None = None
                 ) -> list[Decoded]:
    """The decode stage callable: one record per file, in order; never raises for bad input.

    ``known`` maps a file size to the content hashes of indexed files of that size: a
    byte-identical file is recognised after reading it and not decoded (``STATUS_SAME``).
    ``entries`` is consumed one file at a time, so a caller can time each file.
    """
    known = known or {}
    return [decode_file(e, plan, known.get(e.size, _NOTHING)) for e in entries]


def decode_file(entry: FileEntry, plan: DecodePlan, known: frozenset[str] = _NOTHING
                ) -> Decoded:
    """Read, identify, decode, orient and resize one file into ``plan``'s working image.

    ``mode="L"`` (hash-only runs) lets the JPEG decoder skip colour entirely. JPEGs
    are decoded at the smallest DCT scale that keeps both sides >= ``plan.draft_size``;
    with ``plan.block_means`` a plain JPEG of 256 to 2048 px a side is decoded at 1/8
    scale and the working image is estimated from those block means (:mod:`.blocks`).
    """
    out = Decoded(entry.path, entry.size, entry.mtime_ns, STATUS_FAILED)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            data = _read(entry, out)
            if out.content_hash in known:
                out.status = STATUS_SAME
                return out
            out.status = _decode_bytes(data, plan, out)
    except Exception as exc:  # bad input is data: any failure becomes a record
        out.status, out.error, out.pixels = STATUS_FAILED, reason(exc), None
    return out


def decode_path(path: str, working_size: int) -> Decoded:
    """Decode a file that is not (necessarily) in the index, e.g. a query image."""
    st = os.stat(path)
    return decode_file(FileEntry(path, st.st_size, st.st_mtime_ns), DecodePlan(working_size))


def _read(entry: FileEntry, out: Decoded) -> bytes:
    """The file's bytes in one read; ``out`` gets the size and mtime of those bytes.

    A file rewritten since it was listed is recorded as read, so the next run sees what
    was indexed (and re-reads it only on a new change). SHA-256 is hardware-accelerated
    here and is what ``sha256sum`` prints, so users can match files against the index.
    """
    with open(entry.path, "rb", buffering=0) as fh:   # one read, no buffer copy
        st = os.fstat(fh.fileno())
        data = fh.readall()
    out.size, out.mtime_ns = st.st_size, st.st_mtime_ns
    if len(data) != st.st_size:
        raise OSError("the file changed while it was being read; it is read again "
                      "on the next run")
    out.content_hash = hashlib.sha256(data).hexdigest()
    return data


def _decode_bytes(data: bytes, plan: DecodePlan, out: Decoded) -> str:
    """Fill ``out`` from the bytes; returns its status (OK, or RAW for the GPU decoder)."""
    info = None if plan.gpu_decode else jpeg.probe(data)
    if info is not None:
        pixels = _plain_jpeg(data, info, plan)
        if pixels is not None:   # libjpeg-turbo without Pillow's parser
            out.format = "JPEG"
            out.width, out.height = oriented(info.width, info.height, info.orientation)
            out.pixels = pixels
            return STATUS_OK
    draft = plan.draft_size or plan.working_size
    with open_image(data) as im:
        out.format = im.format
        orientation = im.getexif().get(0x0112, 1)
        out.width, out.height = oriented(*im.size, orientation)
        if plan.gpu_decode and im.format == "JPEG" and im.mode in ("RGB", "L"):
            out.raw, out.orientation = data, int(orientation or 1)
            return STATUS_RAW      # the GPU decodes it; Pillow is the fallback
        if im.format in ("JPEG", "MPO"):
            # DCT-domain downscale: decode at >= draft size, at a fraction of the cost
            im.draft(plan.mode, (draft, draft))
        im.seek(0)
        out.pixels = finish(shrink(im, draft), orientation, plan.mode, plan.working_size)
    return STATUS_OK


def _plain_jpeg(data: bytes, info: jpeg.JpegInfo, plan: DecodePlan) -> np.ndarray | None:
    """A plain JPEG's working image via libjpeg-turbo, or None to let Pillow decide."""
    size = plan.working_size
    if (plan.block_means and plan.mode == "L"
            and blocks.in_range(info.width, info.height, size)):
        means = jpeg.decode_blocks(data, info)
        if means is not None:    # 1/8 scale: the working image estimated from block means
            return blocks.working_image(means, info.width, info.height, info.orientation, size)
    fast = jpeg.decode(data, info, plan.mode, plan.draft_size or size)
    return None if fast is None else finish(fast, info.orientation, plan.mode, size)
