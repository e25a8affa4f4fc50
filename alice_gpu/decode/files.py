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
from ..discover import is_video
from ..records import (STATUS_FAILED, STATUS_OK, STATUS_RAW, STATUS_SAME, Decoded, FileEntry,
                       VideoFrames)
from . import blocks, jpeg
from .metadata import extract, frame_count
from .pillow import (clean_aperture, finish, open_image, openable, orientation_of, oriented,
                     shrink)

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
    metadata: bool = True           # EXIF, generation data (decode.metadata), from the same bytes
    gps: bool = True                # keep EXIF GPS positions (metadata.gps: false drops them)

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
    if is_video(entry.path):
        return _video_file(entry, plan, known, out)
    data = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            data = _read(entry, out)
            if out.content_hash in known:
                out.status = STATUS_SAME
                return out
            out.status = _decode_bytes(data, plan, out)
    except Exception as exc:  # bad input is data: any failure becomes a record
        out.status, out.error, out.pixels = STATUS_FAILED, failure_reason(exc, data), None
    return out


def _video_file(entry: FileEntry, plan: DecodePlan, known: frozenset[str], out: Decoded
                ) -> Decoded:
    """A video: streamed for its SHA-256 (never held whole), then sampled (:mod:`.video`);
    its poster frame is the record's working image."""
    from .metadata import META_VERSION
    from .video import VideoError, available, decode_video, file_sha256

    out.meta = {"kind": "video"}           # a failed video is still counted as one
    try:
        out.content_hash, out.size, out.mtime_ns = file_sha256(entry.path)
        if out.content_hash in known:
            out.status = STATUS_SAME
            return out
        if not available():
            raise VideoError("video, but PyAV is not installed (pip install 'alice-gpu[video]')")
        got = decode_video(entry.path, plan.working_size, plan.mode)
    except VideoError as exc:
        out.status, out.error = STATUS_FAILED, str(exc)
        return out
    except Exception as exc:  # bad input is data: any failure becomes a record
        out.status, out.error = STATUS_FAILED, reason(exc)
        return out
    out.status, out.format, out.width, out.height = STATUS_OK, got.format, got.width, got.height
    out.pixels = got.frames[got.poster]
    out.frames = VideoFrames(got.frames, got.times, got.poster)
    out.meta = {**got.facts, "mode": "video", "kind": "video",
                "meta_version": META_VERSION if plan.metadata else 0}
    return out


# leading bytes of formats people keep beside their pictures, named in the reason
_OTHER_FORMATS = ((0, b"%PDF", "PDF"), (0, b"%!PS", "PostScript"), (0, b"8BPS", "Photoshop PSD"),
                  (0, b"<svg", "SVG"), (0, b"<?xml", "XML/SVG"), (4, b"ftypisom", "MP4 video"),
                  (4, b"ftypmp4", "MP4 video"), (4, b"ftypqt", "QuickTime video"),
                  (8, b"AVI ", "AVI video"), (0, b"PK\x03\x04", "ZIP"),
                  (0, b"\x00\x00\x01\x00", "ICO"), (0, b"gimp xcf", "GIMP XCF"),
                  (4, b"ftypcrx", "Canon CR3 raw"), (0, b"FUJIFILMCCD-RAW", "Fuji RAF raw"))
_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1",
                b"avif", b"avis")


def failure_reason(exc: BaseException, data: bytes | None) -> str:
    """A reason a person understands for a file that did not decode: what the file is,
    and what is wrong with it, never an object's repr."""
    from PIL import UnidentifiedImageError

    data = data or b""
    text = str(exc)
    if isinstance(exc, UnidentifiedImageError):
        if not data:
            return "empty file (0 bytes)"
        if data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS:
            kind = "AVIF" if data[8:12] in (b"avif", b"avis") else "HEIF"
            if kind == "HEIF" and "HEIF" not in openable():
                return "HEIF image, but pillow-heif is not installed (pip install pillow-heif)"
            return f"{kind} image that cannot be read (corrupt, or a variant its decoder lacks)"
        for off, magic, name in _OTHER_FORMATS:
            if data[off:off + len(magic)] == magic:
                return f"format {name} not supported"
        return "not an image format alice-gpu reads (unknown content)"
    if isinstance(exc, OSError) and "truncated" in text.lower():
        fmt = next((name for off, magic, name in _KNOWN_MAGIC if data[off:off + len(magic)]
                    == magic), "image")
        return f"{fmt} truncated ({text.strip().splitlines()[0]})"[:300]
    return reason(exc)


_KNOWN_MAGIC = ((0, b"\xff\xd8\xff", "JPEG image"), (0, b"\x89PNG", "PNG image"),
                (0, b"GIF8", "GIF image"), (8, b"WEBP", "WebP image"),
                (4, b"ftypavif", "AVIF image"), (4, b"ftyp", "HEIF image"))


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
            if plan.metadata:
                out.meta = {**extract(data, gps=plan.gps), "mode": info.mode, "frames": 1}
            return STATUS_OK
    draft = plan.draft_size or plan.working_size
    with open_image(data) as im:
        out.format = im.format
        if plan.metadata:
            out.meta = _metadata(data, im, plan)
        orientation = orientation_of(im)
        crop = clean_aperture(data, *im.size) if im.format == "AVIF" else None
        if crop is not None:
            im = im.crop(crop)
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


def _metadata(data: bytes, im, plan: DecodePlan) -> dict:
    """The file's metadata, before its pixels are touched (the alpha plane, for hidden
    parameters, is read only when nothing else was found)."""
    walked = im.format in ("PNG", "JPEG", "MPO", "WEBP")        # their blocks are walked raw

    def alpha():
        return im.getchannel("A") if im.format == "PNG" and "A" in im.getbands() else None

    meta = extract(data, None if walked else im.info, gps=plan.gps, alpha=alpha)
    meta["mode"] = im.mode
    frames = frame_count(data)
    if frames is None:     # containers that list their frames (HEIF, AVIF, TIFF, MPO): cheap
        frames = int(getattr(im, "n_frames", 1) or 1)
    meta["frames"] = frames
    return meta


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
