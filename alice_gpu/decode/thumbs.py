"""Decode-stage helper: small pictures for people, made as safely as the index decodes.

A thumbnail (or a full-size rendering of a format browsers do not show) goes
through the same guards as indexing: the format allowlist, Pillow's pixel limit
as an error (a decompression bomb is refused, not decoded), a JPEG's DCT draft,
a huge frame box-reduced strip by strip before anything else, and each format's
orientation applied once.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image

from .pillow import displayed, open_image, shrink, to_rgb

# what browsers show as they are: anything else is rendered (HEIC, AVIF, TIFF, BMP...)
BROWSER_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp",
                   "GIF": "image/gif"}
MEDIA_TYPES = {"WEBP": "image/webp", "JPEG": "image/jpeg"}


def render(data: bytes, size: int, fmt: str = "WEBP", quality: int = 80) -> bytes:
    """The picture in ``data``, upright, its long side at most ``size`` px, as ``fmt``."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with open_image(data) as im:
            if im.format in ("JPEG", "MPO"):
                im.draft("RGB", (size, size))
            im.seek(0)
            picture = to_rgb(displayed(shrink(im, size), data))
            picture.thumbnail((size, size), Image.Resampling.LANCZOS)
            out = io.BytesIO()
            picture.save(out, fmt, quality=quality)
    return out.getvalue()


def render_file(path: str, size: int, fmt: str = "WEBP", quality: int = 80) -> bytes:
    """``render`` of a file: a picture's bytes, or a video's poster frame (read by
    seeking, never the whole file)."""
    from ..discover import is_video

    if is_video(path):
        from .video import poster

        out = io.BytesIO()
        poster(path, size).convert("RGB").save(out, fmt, quality=quality)
        return out.getvalue()
    with open(path, "rb") as fh:
        return render(fh.read(), size, fmt, quality)


def image_format(data: bytes) -> str | None:
    """The format Pillow names for ``data`` (allowlisted formats only), or None."""
    try:
        with open_image(data) as im:
            return im.format
    except Exception:  # noqa: BLE001 - not an image we read: no format
        return None
