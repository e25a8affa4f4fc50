"""Stage 2, decode: one file in, one fixed-size uint8 RGB image (or an error record) out.

Runs in CPU worker processes, so this module imports Pillow and numpy only
(no torch): a worker starts in a fraction of a second. A file that fails
never raises; it comes back as a record with ``status="failed"`` and a reason.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np
from PIL import Image, ImageFile

from . import blocks, jpeg
from .discovery import FileEntry

log = logging.getLogger(__name__)

# Formats we open; everything else (EPS/Ghostscript, PDF, ...) is refused unopened.
ALLOWED_FORMATS = ("JPEG", "MPO", "PNG", "GIF", "WEBP", "BMP", "DIB", "TIFF", "AVIF", "PPM",
                   "TGA", "ICO")
ImageFile.LOAD_TRUNCATED_IMAGES = False


@lru_cache(maxsize=1)
def _openable() -> tuple[str, ...]:
    """The allowlist minus plugins this Pillow lacks (AVIF is optional).

    Registering every plugin costs ~40 ms, so it happens on the first file that
    needs Pillow (plain JPEGs do not), not when a command starts.
    """
    Image.init()
    return tuple(f for f in ALLOWED_FORMATS if f in Image.OPEN)

STATUS_OK = "ok"
STATUS_FAILED = "failed"
STATUS_SAME = "same-as-indexed"   # bytes identical to an indexed file: not decoded
STATUS_RAW = "raw-jpeg"           # JPEG bytes handed to the GPU decoder (``--decode gpu``)

_ORIENT_SWAPS = {5, 6, 7, 8}
# EXIF orientation → the transpose that shows the image upright (as ImageOps.exif_transpose)
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
            4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
            6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}


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


@dataclass(frozen=True)
class DecodePlan:
    """What the decode workers produce for this run (sent to them with every chunk)."""

    working_size: int
    mode: str = "RGB"          # "RGB" (embeddings need colour) or "L" (hash-only)
    hash_in_worker: bool = False
    keep_pixels: bool = True
    gpu_decode: bool = False   # workers hand JPEG bytes over; nvJPEG decodes them
    draft_size: int | None = None   # JPEG DCT scale floor; None: the working size
    block_means: bool = False       # luma: JPEGs in range estimated from 1/8-scale block means

    @property
    def bytes_per_item(self) -> int:
        if not self.keep_pixels:
            return 4096  # records, hashes and strings only
        return self.working_size ** 2 * (3 if self.mode == "RGB" else 1)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    reason = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return reason[:300]


def _to_mode(im: Image.Image, target: str) -> Image.Image:
    """Any mode to 8-bit ``target`` (RGB or L); high bit depth scaled, alpha over white."""
    rgb = _to_rgb(im) if im.mode not in ("L", target) else im
    return rgb if rgb.mode == target else rgb.convert(target)


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any mode to 8-bit RGB; high-bit-depth is scaled (not clipped), alpha over white."""
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        arr = np.clip(arr * (255.0 / top) + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if mode == "RGB":
        return im
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


_REDUCIBLE = {"L", "LA", "La", "RGB", "RGBA", "RGBa", "CMYK", "I", "F", "YCbCr"}
_HUGE = 4096 * 4096   # pixels; below this a frame and its conversions are a few dozen MB


def _shrink(im: Image.Image, draft: int) -> Image.Image:
    """A huge frame without a DCT draft (PNG, TIFF, WebP...) box-reduced to >= ``draft`` px.

    Done before any mode conversion, orientation or alpha compositing, which would
    each copy the full frame, and strip by strip (Pillow's own ``reduce`` copies an
    RGBA frame to premultiply it): peak memory stays near one decoded frame (a 63 MP
    RGBA PNG: 1.2 GB before, measured in tests/test_decoding.py).
    """
    w, h = im.size
    k = min(w // draft, h // draft)
    if w * h <= _HUGE or k < 2:
        return im
    if im.mode in ("P", "PA"):
        im = im.convert("RGBA" if im.mode == "PA" or "transparency" in im.info else "RGB")
    elif im.mode == "1":
        im = im.convert("L")
    sixteen = im.mode.startswith("I;16")
    if not sixteen and im.mode not in _REDUCIBLE:
        return im
    rows = 16 * k                         # strips of whole k x k blocks
    parts = []
    for top in range(0, h, rows):
        strip = im.crop((0, top, w, min(top + rows, h)))
        if sixteen:                       # averaged in numpy, kept 16-bit
            arr = np.asarray(strip, dtype=np.float64)
            sh, sw = -(-arr.shape[0] // k) * k, -(-w // k) * k
            arr = np.pad(arr, ((0, sh - arr.shape[0]), (0, sw - w)), mode="edge")
            parts.append(arr.reshape(sh // k, k, sw // k, k).mean(axis=(1, 3)))
        else:
            parts.append(strip.reduce(k))
    if sixteen:
        return Image.fromarray(np.rint(np.concatenate(parts)).astype(np.uint16))
    out = Image.new(im.mode, (-(-w // k), -(-h // k)))
    for n, part in enumerate(parts):
        out.paste(part, (0, n * 16))
    return out


def _finish(im: Image.Image, orientation: object, mode: str, size: int) -> np.ndarray:
    """Upright, in ``mode``, resized to size x size: the working image as an array."""
    if orientation in _UPRIGHT:
        im = im.transpose(_UPRIGHT[orientation])
    im = _to_mode(im, mode)
    if im.size != (size, size):
        # luma for hashes only: BILINEAR (antialiased) costs a third of LANCZOS
        # and keeps the hashes within 2 bits of imagehash for >= 99% of photos
        if mode == "L":
            im = im.resize((size, size), Image.Resampling.BILINEAR)
        else:
            im = im.resize((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return np.asarray(im, dtype=np.uint8)


def _oriented(width: int, height: int, orientation: object) -> tuple[int, int]:
    return (height, width) if orientation in _ORIENT_SWAPS else (width, height)


def decode_file(entry: FileEntry, working_size: int, mode: str = "RGB",
                known: frozenset[str] = frozenset(), raw_jpeg: bool = False,
                draft_size: int | None = None, block_means: bool = False) -> Decoded:
    """Open, draft, orient, convert and resize one file; never raises for bad input.

    ``mode="L"`` (hash-only runs) lets the JPEG decoder skip colour entirely:
    pixels are then (S, S) luma, which is all the hashes use. JPEGs are decoded
    at the smallest DCT scale that keeps both sides >= ``draft_size`` (default:
    the working size): hash-only runs draft at twice their working size, because
    a coarser DCT scale moves pHash away from imagehash's. A file whose
    content hash is in ``known`` (byte-identical to an indexed file) is not
    decoded: it comes back with ``status == STATUS_SAME``. With ``block_means``
    (luma only) a plain JPEG of 256 to 2048 px a side (and at least 4x the working
    size) is decoded at 1/8 scale, and the working image is estimated from those
    block means (:mod:`.blocks`).
    """
    out = Decoded(entry.path, entry.size, entry.mtime_ns, STATUS_FAILED)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with open(entry.path, "rb", buffering=0) as fh:   # one read, no buffer copy
                st = os.fstat(fh.fileno())
                data = fh.readall()
            # rewritten since it was listed: the record describes the bytes decoded,
            # so the next run sees what was indexed (and re-reads it only on a new change)
            out.size, out.mtime_ns = st.st_size, st.st_mtime_ns
            if len(data) != st.st_size:
                raise OSError("the file changed while it was being read; it is read again "
                              "on the next run")
            # SHA-256: hardware-accelerated (half blake2b's cost here), and it is what
            # `sha256sum` prints, so users can match files against the index
            out.content_hash = hashlib.sha256(data).hexdigest()
            if out.content_hash in known:
                out.status = STATUS_SAME
                return out
            draft = draft_size or working_size
            info = None if raw_jpeg else jpeg.probe(data)
            means = (jpeg.decode_blocks(data, info) if block_means and mode == "L" and info
                     and blocks.in_range(info.width, info.height, working_size) else None)
            if means is not None:    # 1/8 scale: the working image estimated from block means
                out.format = "JPEG"
                out.width, out.height = _oriented(info.width, info.height, info.orientation)
                out.pixels = blocks.working_image(means, info.width, info.height,
                                                  info.orientation, working_size)
                out.status = STATUS_OK
                return out
            fast = jpeg.decode(data, info, mode, draft) if info else None
            if fast is not None:     # a plain JPEG: libjpeg-turbo without Pillow's parser
                out.format = "JPEG"
                out.width, out.height = _oriented(info.width, info.height, info.orientation)
                out.pixels = _finish(fast, info.orientation, mode, working_size)
                out.status = STATUS_OK
                return out
            with Image.open(io.BytesIO(data), formats=_openable()) as im:
                out.format = im.format
                orientation = im.getexif().get(0x0112, 1)
                out.width, out.height = _oriented(*im.size, orientation)
                if raw_jpeg and im.format == "JPEG" and im.mode in ("RGB", "L"):
                    out.raw, out.orientation = data, int(orientation or 1)
                    out.status = STATUS_RAW      # the GPU decodes it; Pillow falls back
                    return out
                if im.format in ("JPEG", "MPO"):
                    # DCT-domain downscale: decode at >= draft size, at a fraction of the cost
                    im.draft(mode, (draft, draft))
                im.seek(0)
                out.pixels = _finish(_shrink(im, draft), orientation, mode, working_size)
        out.status = STATUS_OK
    except Exception as exc:  # bad input is data: any failure becomes a record
        out.error = _reason(exc)
        out.pixels = None
    return out


def decode_many(entries: Sequence[FileEntry], working_size: int, mode: str = "RGB"
                ) -> list[Decoded]:
    """Worker entry point: a small chunk per task keeps IPC overhead low."""
    return [decode_file(e, working_size, mode) for e in entries]


def decode_path(path: str, working_size: int) -> Decoded:
    """Decode a file that is not (necessarily) in the index, e.g. a query image."""
    st = os.stat(path)
    return decode_file(FileEntry(path, st.st_size, st.st_mtime_ns), working_size)
