"""Decode-stage helper: what a file says about itself, from the bytes already read.

Runs in the decode workers on the same bytes the pixels come from, so there is no
second read. Containers are walked raw (PNG chunks, JPEG segments, WebP RIFF
chunks), which also finds what Pillow does not surface: C2PA manifests (PNG
``caBX``, JPEG APP11 JUMBF), PNG ``eXIf``, and text chunks after the pixels.
HEIF and AVIF metadata comes from their decoder (``Image.info``). EXIF is read by
Pillow's parser; generation data by :mod:`.aimeta`.
"""

from __future__ import annotations

import logging
import struct
import zlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .aimeta import MAX_TEXT, parse_generation
from .dates import FROM_CREATE, FROM_MODIFY, FROM_ORIGINAL, parse_iso, xmp_date

log = logging.getLogger(__name__)

META_VERSION = 1            # raise when extraction learns more: older rows are read again

# EXIF tags (IFD0, Exif IFD, GPS IFD)
_MAKE, _MODEL, _SOFTWARE, _ARTIST, _DESCRIPTION, _DATETIME = 0x010F, 0x0110, 0x0131, 0x013B, \
    0x010E, 0x0132
_ORIENTATION, _EXIF_IFD, _GPS_IFD = 0x0112, 0x8769, 0x8825
_TAKEN, _OFFSET_TAKEN, _USER_COMMENT, _LENS = 0x9003, 0x9011, 0x9286, 0xA434
_DIGITIZED, _OFFSET_DIGITIZED, _OFFSET = 0x9004, 0x9012, 0x9010


@dataclass
class Raw:
    """Metadata blocks found in a container, undecoded beyond text."""

    text: dict[str, str] = field(default_factory=dict)    # PNG text chunks, keyword → text
    exif: bytes | None = None                               # TIFF-structured EXIF
    xmp: str | None = None
    c2pa: bool = False
    comment: str | None = None                              # JPEG COM


def _latin_or_utf8(raw: bytes) -> str:
    """tEXt is Latin-1 by the spec, but generators write UTF-8 into it."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _png(data: bytes, raw: Raw) -> None:
    i, n = 8, len(data)
    while i + 12 <= n:
        length, kind = struct.unpack_from(">I4s", data, i)
        body = data[i + 8:i + 8 + length]
        i += 12 + length
        try:
            if kind == b"tEXt":
                key, _, value = body.partition(b"\x00")
                raw.text[key.decode("latin-1")] = _latin_or_utf8(value[:MAX_TEXT])
            elif kind == b"zTXt":
                key, _, rest = body.partition(b"\x00")
                raw.text[key.decode("latin-1")] = _latin_or_utf8(
                    zlib.decompressobj().decompress(rest[1:], MAX_TEXT))
            elif kind == b"iTXt":
                key, _, rest = body.partition(b"\x00")
                compressed, rest = rest[0], rest[2:]
                _, _, rest = rest.partition(b"\x00")          # language tag
                _, _, value = rest.partition(b"\x00")         # translated keyword
                if compressed:
                    value = zlib.decompressobj().decompress(value, MAX_TEXT)
                text = value.decode("utf-8", "replace")
                name = key.decode("latin-1")
                if name == "XML:com.adobe.xmp":
                    raw.xmp = text
                else:
                    raw.text[name] = text
            elif kind == b"eXIf":
                raw.exif = bytes(body)
            elif kind == b"caBX":
                raw.c2pa = True
            elif kind == b"IEND":
                break
        except (zlib.error, IndexError, ValueError):
            continue                      # one bad chunk does not hide the others


def _jpeg(data: bytes, raw: Raw) -> None:
    i, n = 2, len(data)
    while i + 4 <= n and data[i] == 0xFF:
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        if marker in (0xDA, 0xD9):                      # start of scan: metadata is before
            break
        length = int.from_bytes(data[i + 2:i + 4], "big")
        body = data[i + 4:i + 2 + length]
        if marker == 0xE1 and body.startswith(b"Exif\x00\x00") and raw.exif is None:
            raw.exif = bytes(body[6:])
        elif marker == 0xE1 and body.startswith(b"http://ns.adobe.com/xap/1.0/\x00"):
            raw.xmp = body[29:].decode("utf-8", "replace")
        elif marker == 0xEB and (b"jumb" in body[:64] or b"c2pa" in body[:256]):
            raw.c2pa = True
        elif marker == 0xFE and raw.comment is None:
            raw.comment = _latin_or_utf8(bytes(body[:MAX_TEXT]))
        i += 2 + length


def _webp(data: bytes, raw: Raw) -> None:
    i, n = 12, len(data)
    while i + 8 <= n:
        kind, length = data[i:i + 4], int.from_bytes(data[i + 4:i + 8], "little")
        body = data[i + 8:i + 8 + length]
        if kind == b"EXIF":
            raw.exif = bytes(body[6:] if body.startswith(b"Exif\x00\x00") else body)
        elif kind == b"XMP ":
            raw.xmp = body.decode("utf-8", "replace")
        i += 8 + length + (length & 1)


def containers(data: bytes, info: dict | None = None) -> Raw:
    """The metadata blocks of a file; ``info`` is Pillow's ``Image.info`` for formats
    walked by their decoder (HEIF, AVIF, TIFF, GIF...)."""
    raw = Raw()
    try:
        if data[:8] == b"\x89PNG\r\n\x1a\n":
            _png(data, raw)
        elif data[:3] == b"\xff\xd8\xff":
            _jpeg(data, raw)
        elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            _webp(data, raw)
    except (struct.error, IndexError, ValueError) as exc:
        log.debug("metadata walk stopped: %s", exc)
    if info:
        exif = info.get("exif")
        if raw.exif is None and isinstance(exif, (bytes, bytearray)):
            exif = bytes(exif)
            raw.exif = exif[6:] if exif.startswith(b"Exif\x00\x00") else exif
        xmp = info.get("xmp") or info.get("XML:com.adobe.xmp")
        if raw.xmp is None and xmp:
            raw.xmp = xmp.decode("utf-8", "replace") if isinstance(xmp, (bytes, bytearray)) \
                else str(xmp)
    return raw


def frame_count(data: bytes) -> int | None:
    """Frames of an animated GIF, APNG or WebP, counted in the raw bytes (Pillow's
    ``n_frames`` would seek through, and decode, every frame); None for other formats."""
    try:
        if data[:6] in (b"GIF87a", b"GIF89a"):
            i = 13 + (3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 0)
            frames = 0
            while i < len(data):
                block = data[i]
                if block == 0x3B:                         # trailer
                    break
                if block == 0x21:                         # extension: label, then sub-blocks
                    i += 2
                elif block == 0x2C:                       # image descriptor
                    frames += 1
                    flags = data[i + 9]
                    i += 10 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0) + 1   # + LZW size
                else:
                    break
                while i < len(data) and data[i]:          # data sub-blocks
                    i += data[i] + 1
                i += 1
            return max(frames, 1)
        if data[:8] == b"\x89PNG\r\n\x1a\n":
            k = data.find(b"acTL", 8, 1 << 16)
            return int.from_bytes(data[k + 4:k + 8], "big") if k > 0 else 1
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return max(1, data.count(b"ANMF", 12)) if b"ANIM" in data[12:4096] else 1
    except IndexError:
        return None
    return None


def user_comment(value: Any) -> str | None:
    """EXIF UserComment: an 8-byte charset code, then text (UTF-16 of either byte order
    for UNICODE: A1111 writes big-endian, SwarmUI little-endian)."""
    if isinstance(value, str):
        return value
    if not isinstance(value, (bytes, bytearray)) or len(value) < 8:
        return None
    code, body = bytes(value[:8]), bytes(value[8:])
    if code.startswith(b"UNICODE"):
        if body[:2] in (b"\xff\xfe", b"\xfe\xff"):
            return body.decode("utf-16")
        # more zero bytes at even offsets: big-endian (ASCII text has a zero high byte)
        even, odd = body[0::2].count(0), body[1::2].count(0)
        return body.decode("utf-16-be" if even >= odd else "utf-16-le", "replace").rstrip("\x00")
    if code.startswith(b"ASCII") or code == b"\x00" * 8:
        return body.decode("utf-8", "replace").rstrip("\x00")
    return bytes(value).decode("utf-8", "replace").rstrip("\x00")


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        value = _latin_or_utf8(bytes(value))
    text = str(value).replace("\x00", "").strip()
    return text or None


def _when(value: Any, offset: Any = None) -> str | None:
    """EXIF "YYYY:MM:DD HH:MM:SS" → ISO 8601 (with the offset when there is one)."""
    text = _text(value)
    if not text:
        return None
    try:
        when = datetime.strptime(text[:19], "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None
    iso = when.isoformat()
    off = _text(offset)
    return iso + off if off and len(off) == 6 and off[0] in "+-" else iso


def _degrees(value: Any, ref: Any) -> float | None:
    try:
        d, m, s = (float(x) for x in value)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    deg = d + m / 60.0 + s / 3600.0
    return -deg if _text(ref) in ("S", "W") else deg


def _plain_field(value: str | None) -> bool:
    """A camera or software name, not a generator's payload stored in its place."""
    if not value:
        return False
    head = value[:16].lower()
    return len(value) <= 128 and not head.startswith(("{", "[", "prompt:", "workflow:"))


def read_exif(tiff: bytes, gps: bool = True) -> dict[str, Any]:
    """The EXIF facts users search by, and the generation tags some tools write there."""
    from PIL import Image

    exif = Image.Exif()
    try:
        exif.load(tiff)
        sub = exif.get_ifd(_EXIF_IFD)
        gps_ifd = exif.get_ifd(_GPS_IFD) if gps else {}
    except Exception as exc:  # noqa: BLE001 - a damaged EXIF block is no metadata, not a failure
        log.debug("unreadable EXIF: %s", exc)
        return {}
    out: dict[str, Any] = {
        **_exif_date(exif, sub),
        "camera_make": _text(exif.get(_MAKE)), "camera_model": _text(exif.get(_MODEL)),
        "lens": _text(sub.get(_LENS)), "software": _text(exif.get(_SOFTWARE)),
        "exif_orientation": exif.get(_ORIENTATION),
        # some ComfyUI savers put UserComment in IFD0, as plain text
        "user_comment": user_comment(sub.get(_USER_COMMENT, exif.get(_USER_COMMENT))),
        "description": _text(exif.get(_DESCRIPTION)), "artist": _text(exif.get(_ARTIST)),
    }
    if gps_ifd:
        lat, lon = _degrees(gps_ifd.get(2), gps_ifd.get(1)), _degrees(gps_ifd.get(4), gps_ifd.get(3))
        if lat is not None and lon is not None and (lat, lon) != (0.0, 0.0):
            out["gps_lat"], out["gps_lon"] = round(lat, 7), round(lon, 7)
    return out


def _exif_date(exif: Any, sub: Any) -> dict[str, Any]:
    """The EXIF date (ISO text) and which tag it came from (decode/dates.py's chain)."""
    for value, offset, source in ((sub.get(_TAKEN), sub.get(_OFFSET_TAKEN), FROM_ORIGINAL),
                                  (sub.get(_DIGITIZED), sub.get(_OFFSET_DIGITIZED), FROM_CREATE),
                                  (exif.get(_DATETIME), sub.get(_OFFSET), FROM_MODIFY)):
        when = _when(value, offset)
        if when:
            return {"taken_at": when, "taken_from": source}
    return {"taken_at": None, "taken_from": None}


def _file_date(raw: Raw, facts: dict[str, Any]) -> tuple[str | None, str | None]:
    """The in-file date of the chain: EXIF's original or digitised date, else an XMP or
    PNG creation date, else EXIF's modify date (which the file name outranks later)."""
    if facts.get("taken_at") and facts.get("taken_from") != FROM_MODIFY:
        return facts["taken_at"], facts["taken_from"]
    found = xmp_date(raw.xmp)
    if found is None:
        created = parse_iso(raw.text.get("Creation Time"))
        found = (created.isoformat(), "png:Creation Time") if created else None
    if found is not None:
        return found
    return facts.get("taken_at"), facts.get("taken_from")


def extract(data: bytes, info: dict | None = None, *, gps: bool = True,
            alpha: Any = None) -> dict[str, Any]:
    """Every fact the store keeps about a file beyond its pixels (None where absent).

    ``alpha`` is a callable giving the full-size alpha plane, for parameters hidden in
    its low bits ("stealth" PNG info); it is called only when nothing else was found.
    """
    raw = containers(data, info)
    facts = read_exif(raw.exif, gps) if raw.exif else {}
    gen = parse_generation(raw.text, facts, raw.xmp, raw.c2pa, raw.comment, alpha)
    out = {k: facts.get(k) for k in ("camera_make", "camera_model", "lens",
                                     "software", "gps_lat", "gps_lon")}
    out["taken_at"], out["taken_from"] = _file_date(raw, facts)
    for key in ("camera_make", "camera_model", "software"):   # ComfyUI's graphs live there
        if not _plain_field(out[key]):
            out[key] = None
    out.update(gen)
    out["meta_version"] = META_VERSION
    return out
