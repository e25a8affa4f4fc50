"""Decode-stage helper: plain JPEGs straight through libjpeg-turbo, without Pillow's parser.

Decoding is nearly all of a decode worker's time, and for a 500 px photo
Pillow's Python-level marker parsing plus its chunked ``load`` cost a tenth
of it again. ``probe`` reads what the pipeline needs from the bytes (size,
colour space, EXIF orientation) and ``decode`` asks simplejpeg for the same
DCT-scaled pixels Pillow's ``draft`` + ``load`` give: bit-identical on every
JPEG in the shared data sets (``tests/test_decoding.py``).

Anything unusual answers ``None`` and the caller uses Pillow, whose verdict
then stands: MPO files, CMYK/YCCK, an orientation only XMP carries, EXIF the
small parser below does not fully understand, images over Pillow's pixel
limit, and bytes libjpeg-turbo warns about.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import simplejpeg
from PIL import Image

_MODES = {"Gray": "L", "YCbCr": "RGB", "RGB": "RGB"}   # JPEG colour space → Pillow mode
_COLOURS = {"L": "GRAY", "RGB": "RGB"}                  # wanted mode → simplejpeg output
_EXIF = b"Exif\x00\x00"
_XMP = b"http://ns.adobe.com/xap/1.0/\x00"
_MPF = b"MPF\x00"
_ORIENTATION = 0x0112


@dataclass(frozen=True, slots=True)
class JpegInfo:
    width: int
    height: int
    mode: str          # what Pillow would call the image: "L" or "RGB"
    orientation: int   # the EXIF value as Pillow's getexif() reports it (1 when absent)


def _orientation(tiff: bytes) -> int | None:
    """Tag 0x0112 of IFD0 in a TIFF-structured EXIF block; 1 when absent, None when odd."""
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return None
    order = "little" if tiff[:2] == b"II" else "big"
    if int.from_bytes(tiff[2:4], order) != 42:
        return None
    ifd = int.from_bytes(tiff[4:8], order)
    if ifd + 2 > len(tiff):
        return None
    count = int.from_bytes(tiff[ifd:ifd + 2], order)
    if ifd + 2 + 12 * count > len(tiff):
        return None
    for k in range(count):
        e = ifd + 2 + 12 * k
        if int.from_bytes(tiff[e:e + 2], order) != _ORIENTATION:
            continue
        kind, n = int.from_bytes(tiff[e + 2:e + 4], order), int.from_bytes(tiff[e + 4:e + 8], order)
        if n != 1:
            return None
        if kind == 3:       # SHORT
            return int.from_bytes(tiff[e + 8:e + 10], order)
        if kind == 4:       # LONG
            return int.from_bytes(tiff[e + 8:e + 12], order)
        return None
    return 1


def probe(data: bytes) -> JpegInfo | None:
    """Size, mode and orientation of a plain JPEG, or None when Pillow should handle it."""
    if data[:3] != b"\xff\xd8\xff":
        return None
    orientation: int | None = None
    xmp = False
    i, n = 2, len(data)
    while True:   # the segments before the first scan hold all the metadata Pillow reads
        if i + 4 > n or data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:                       # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:   # markers without a length
            i += 2
            continue
        if marker == 0xDA:                       # start of scan
            break
        if marker == 0xD9:                       # end of image before any scan
            return None
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if length < 2 or i + 2 + length > n:
            return None
        body = data[i + 4:i + 2 + length]
        if marker == 0xE1 and body.startswith(_EXIF) and orientation is None:
            orientation = _orientation(body[len(_EXIF):])
            if orientation is None:
                return None
        elif marker == 0xE1 and body.startswith(_XMP):
            xmp = True
        elif marker == 0xE2 and body.startswith(_MPF):
            return None                          # multi-picture: Pillow reports MPO
        i += 2 + length
    if orientation is None and xmp:
        return None                              # Pillow may find tiff:Orientation in XMP
    try:
        height, width, colour, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    limit = Image.MAX_IMAGE_PIXELS
    if colour not in _MODES or (limit and width * height > limit):
        return None
    return JpegInfo(width, height, _MODES[colour], 1 if orientation is None else orientation)


def draft_scale(size: tuple[int, int], draft: int) -> int:
    """The DCT scale denominator (1, 2, 4 or 8) Pillow's ``draft`` picks for this size."""
    fit = min(size[0] // draft, size[1] // draft)
    return next((s for s in (8, 4, 2) if fit >= s), 1)


def decode(data: bytes, info: JpegInfo, mode: str, draft: int) -> Image.Image | None:
    """``mode`` ("L" or "RGB") pixels at Pillow's draft scale; None if libjpeg-turbo objects."""
    s = draft_scale((info.width, info.height), draft)
    try:
        arr = simplejpeg.decode_jpeg(data, colorspace=_COLOURS[mode],
                                     min_width=-(-info.width // s),
                                     min_height=-(-info.height // s),
                                     min_factor=s, strict=True)
    except ValueError:
        return None
    return Image.fromarray(arr[..., 0] if mode == "L" else arr, mode)


def decode_blocks(data: bytes, info: JpegInfo) -> np.ndarray | None:
    """Luma at 1/8 scale, (ceil(h/8), ceil(w/8)) uint8: each value is one 8x8 block's mean.

    libjpeg-turbo reads only the DC coefficient of each block at this scale (the
    entropy decoding is the same), so this is the cheapest decode there is.
    """
    want = (-(-info.height // 8), -(-info.width // 8))
    try:
        arr = simplejpeg.decode_jpeg(data, colorspace="GRAY", min_width=want[1],
                                     min_height=want[0], min_factor=8, strict=True)
    except ValueError:
        return None
    return arr[..., 0] if arr.shape[:2] == want else None
