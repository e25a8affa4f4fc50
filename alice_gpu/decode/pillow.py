"""Decode-stage helper: everything that is not a plain JPEG, through Pillow.

Any mode (CMYK, 16-bit, palette + alpha, LA, animated: first frame) becomes
8-bit RGB or luma; EXIF orientation is applied; huge frames without a DCT
draft are box-reduced strip by strip before any conversion, so memory stays
near one decoded frame.
"""

from __future__ import annotations

import io
import logging
import struct
from functools import lru_cache

import numpy as np
from PIL import Image, ImageFile

# Formats we open; everything else (EPS/Ghostscript, PDF, ...) is refused unopened.
ALLOWED_FORMATS = ("JPEG", "MPO", "PNG", "GIF", "WEBP", "BMP", "DIB", "TIFF", "AVIF", "HEIF",
                   "PPM", "TGA", "ICO")
# containers whose decoder applies their own rotation and mirror (irot, imir): the EXIF
# orientation they also report must not be applied a second time
SELF_ORIENTING = frozenset({"AVIF", "HEIF"})
ImageFile.LOAD_TRUNCATED_IMAGES = False
log = logging.getLogger(__name__)

ORIENT_SWAPS = {5, 6, 7, 8}
# EXIF orientation → the transpose that shows the image upright (as ImageOps.exif_transpose)
UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
           4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
           6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
           8: Image.Transpose.ROTATE_90}

_REDUCIBLE = {"L", "LA", "La", "RGB", "RGBA", "RGBa", "CMYK", "I", "F", "YCbCr"}
_HUGE = 4096 * 4096   # pixels; below this a frame and its conversions are a few dozen MB


@lru_cache(maxsize=1)
def openable() -> tuple[str, ...]:
    """The allowlist minus plugins this Pillow lacks (AVIF is optional).

    Registering every plugin costs ~40 ms, so it happens on the first file that
    needs Pillow (plain JPEGs do not), not when a command starts. HEIF comes from
    pillow-heif (a dependency; without it HEIF files fail with a reason that says so).
    """
    Image.init()
    try:
        from pillow_heif import register_heif_opener

        register_heif_opener()
    except ImportError:
        log.warning("pillow-heif is not installed: HEIC/HEIF files will not be decoded")
    return tuple(f for f in ALLOWED_FORMATS if f in Image.OPEN)


def open_image(data: bytes) -> Image.Image:
    """Pillow's view of the bytes, restricted to the allowlisted formats."""
    return Image.open(io.BytesIO(data), formats=openable())


def _boxes(data: bytes, start: int, end: int):
    """ISO-BMFF boxes between ``start`` and ``end``: (type, payload start, box end)."""
    i = start
    while i + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, i)
        head = 8
        if size == 1 and i + 16 <= end:
            size, head = struct.unpack_from(">Q", data, i + 8)[0], 16
        elif size == 0:
            size = end - i
        if size < head or i + size > end:
            return
        yield kind, i + head, i + size
        i += size


def clean_aperture(data: bytes, width: int, height: int) -> tuple[int, int, int, int] | None:
    """The crop box of an AVIF's ``clap`` property (HEIF 6.5.9), as a Pillow box, when the
    file has one and no rotation or mirror (libavif, under Pillow, leaves it unapplied).
    With a rotation or mirror too, the crop is not applied (logged): none seen so far."""
    props: dict[bytes, bytes] = {}
    for kind, body, end in _boxes(data, 0, min(len(data), 1 << 20)):
        if kind != b"meta":
            continue
        for k2, b2, e2 in _boxes(data, body + 4, end):           # meta is a full box
            if k2 != b"iprp":
                continue
            for k3, b3, e3 in _boxes(data, b2, e2):
                if k3 == b"ipco":
                    for k4, b4, e4 in _boxes(data, b3, e3):
                        props.setdefault(k4, data[b4:e4])
    clap = props.get(b"clap")
    if clap is None or len(clap) < 32:
        return None
    if b"irot" in props or b"imir" in props:
        log.info("AVIF with a crop and a rotation or mirror: the crop is not applied")
        return None
    wn, wd, hn, hd, xn, xd, yn, yd = struct.unpack(">IIIIiIiI", clap[:32])
    if not (wd and hd and xd and yd):
        return None
    cw, ch = wn / wd, hn / hd
    left = int(round(xn / xd + (width - cw) / 2.0 - 0.49))
    top = int(round(yn / yd + (height - ch) / 2.0 - 0.49))
    box = (left, top, left + int(cw), top + int(ch))
    if box[0] < 0 or box[1] < 0 or box[2] > width or box[3] > height or cw < 1 or ch < 1:
        return None
    return box


def orientation_of(im: Image.Image) -> int:
    """The EXIF orientation still to apply to what Pillow decoded: none for containers
    whose decoder already turned the picture (AVIF, HEIF)."""
    if im.format in SELF_ORIENTING:
        return 1
    value = im.getexif().get(0x0112, 1)
    return value if value in UPRIGHT else 1


def displayed(im: Image.Image, data: bytes) -> Image.Image:
    """The picture as it is displayed and indexed: an AVIF's crop, and each format's
    orientation applied exactly once."""
    orientation = orientation_of(im)
    crop = clean_aperture(data, *im.size) if im.format == "AVIF" else None
    if crop is not None:
        im = im.crop(crop)
    return im.transpose(UPRIGHT[orientation]) if orientation in UPRIGHT else im


def oriented(width: int, height: int, orientation: object) -> tuple[int, int]:
    """The upright size of a picture stored ``width`` x ``height`` with this orientation."""
    return (height, width) if orientation in ORIENT_SWAPS else (width, height)


def to_mode(im: Image.Image, target: str) -> Image.Image:
    """Any mode to 8-bit ``target`` (RGB or L); high bit depth scaled, alpha over white."""
    rgb = to_rgb(im) if im.mode not in ("L", target) else im
    return rgb if rgb.mode == target else rgb.convert(target)


def to_rgb(im: Image.Image) -> Image.Image:
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


def shrink(im: Image.Image, draft: int) -> Image.Image:
    """A huge frame without a DCT draft (PNG, TIFF, WebP...) box-reduced to >= ``draft`` px.

    Done before any mode conversion, orientation or alpha compositing, which would
    each copy the full frame, and strip by strip (Pillow's own ``reduce`` copies an
    RGBA frame to premultiply it): peak memory stays near one decoded frame
    (tests/test_decoding.py measures it).
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
    parts = [_reduce_strip(im.crop((0, top, w, min(top + rows, h))), k, sixteen)
             for top in range(0, h, rows)]
    if sixteen:
        return Image.fromarray(np.rint(np.concatenate(parts)).astype(np.uint16))
    out = Image.new(im.mode, (-(-w // k), -(-h // k)))
    for n, part in enumerate(parts):
        out.paste(part, (0, n * 16))
    return out


def _reduce_strip(strip: Image.Image, k: int, sixteen: bool):
    """One strip box-reduced by ``k``: Pillow's ``reduce``, or numpy for 16-bit (kept 16-bit)."""
    if not sixteen:
        return strip.reduce(k)
    arr = np.asarray(strip, dtype=np.float64)
    sh, sw = -(-arr.shape[0] // k) * k, -(-arr.shape[1] // k) * k
    arr = np.pad(arr, ((0, sh - arr.shape[0]), (0, sw - arr.shape[1])), mode="edge")
    return arr.reshape(sh // k, k, sw // k, k).mean(axis=(1, 3))


def finish(im: Image.Image, orientation: object, mode: str, size: int) -> np.ndarray:
    """Upright, in ``mode``, resized to size x size: the working image as an array."""
    if orientation in UPRIGHT:
        im = im.transpose(UPRIGHT[orientation])
    im = to_mode(im, mode)
    if im.size != (size, size):
        # luma for hashes only: BILINEAR (antialiased) costs a third of LANCZOS
        # and keeps the hashes within 2 bits of imagehash for >= 99% of photos
        if mode == "L":
            im = im.resize((size, size), Image.Resampling.BILINEAR)
        else:
            im = im.resize((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return np.asarray(im, dtype=np.uint8)
