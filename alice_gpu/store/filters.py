"""Which files a query is about: the ``find`` filters, as one SQL condition.

The same filters narrow ``find``, ``tag``, ``similar`` and ``duplicates``. Every
value is a bound parameter; only the shape of the SQL depends on which filters
are given. Dates compare against the date taken, or the file's mtime where the
file has none (most generated images).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from datetime import date, datetime, timedelta
from typing import Any

from ..config import SOURCES
from ..errors import QueryError

_SOURCE_ALIASES = {"automatic1111": "a1111", "forge": "a1111", "reforge": "a1111",
                   "sdnext": "a1111", "sd.next": "a1111", "comfy": "comfyui", "invoke": "invokeai",
                   "nai": "novelai", "swarm": "swarmui", "stabilitymatrix": "stability-matrix",
                   "draw-things": "drawthings"}
_FORMATS = {"jpg": "JPEG", "jpeg": "JPEG", "jpe": "JPEG", "heic": "HEIF", "heif": "HEIF",
            "hif": "HEIF", "tif": "TIFF", "tiff": "TIFF", "png": "PNG", "webp": "WEBP",
            "gif": "GIF", "avif": "AVIF", "bmp": "BMP", "mpo": "MPO", "ico": "ICO", "tga": "TGA",
            "ppm": "PPM", "mp4": "MP4", "mov": "MOV", "mkv": "MKV", "webm": "MKV",
            "avi": "AVI"}


@dataclass(frozen=True)
class Filters:
    """All given filters must hold (AND); several tags must all be present."""

    tags: tuple[str, ...] = ()
    source: str | None = None
    prompt: str | None = None
    camera: str | None = None
    since: str | None = None
    until: str | None = None
    folder: str | None = None
    format: str | None = None
    model: str | None = None
    kind: str | None = None          # "image" | "video"

    def empty(self) -> bool:
        return not any(getattr(self, f.name) for f in fields(self))


def _day(text: str, what: str) -> tuple[datetime, bool]:
    """A date or date-time; True when only a day was given."""
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text.strip()):
            return datetime.combine(date.fromisoformat(text.strip()), datetime.min.time()), True
        return datetime.fromisoformat(text.strip()), False
    except ValueError:
        raise QueryError(f"--{what} {text!r} is not a date (YYYY-MM-DD or YYYY-MM-DDTHH:MM)") \
            from None


def source_name(text: str) -> str:
    key = text.strip().lower()
    key = _SOURCE_ALIASES.get(key, key)
    if key not in SOURCES:
        raise QueryError(f"unknown --source {text!r} (choose from {', '.join(SOURCES)})")
    return key


def format_name(text: str) -> str:
    key = text.strip().lower().lstrip(".")
    if key in _FORMATS:
        return _FORMATS[key]
    if key.upper() in _FORMATS.values():
        return key.upper()
    raise QueryError(f"unknown --format {text!r} (e.g. jpeg, png, heic, avif, webp)")


# scripts written without spaces between words: a word there is any run of its letters
_UNSPACED = re.compile("[\u0e00-\u0e7f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
# RE2 (DuckDB's regex engine) reads \b and \w as ASCII: word edges spelt in Unicode classes
_EDGE = r"(?:^|[^\p{L}\p{N}_])"
_EDGE_END = r"(?:$|[^\p{L}\p{N}_])"


def prompt_word(word: str, a: str) -> tuple[str, str]:
    """One ``--prompt`` word as a condition: a whole word, whatever its script (case
    folded), or a substring in scripts that put no spaces between words (CJK, Thai)."""
    if _UNSPACED.search(word):
        return f"contains(lower({a}.prompt), ?)", word
    return f"regexp_matches({a}.prompt, ?, 'i')", _EDGE + re.escape(word) + _EDGE_END


def folder_condition(folder: str, a: str) -> tuple[str, list[str]]:
    """Files at or under ``folder``, their names stored as text or, not being UTF-8, as
    raw bytes (``store.paths``)."""
    import os

    from ..discover import normalize_path
    from .paths import raw_form, to_db

    path = normalize_path(os.path.expanduser(folder)).rstrip("/") or "/"
    under = path.rstrip("/") + "/"
    prefixes = sorted({to_db(under), raw_form(under)})
    cond = " OR ".join([f"{a}.path = ?"] + [f"starts_with({a}.path, ?)"] * len(prefixes))
    return f"({cond})", [to_db(path), *prefixes]


def where(f: Filters, alias: str = "a") -> tuple[str, list[Any]]:
    """``(condition, parameters)`` for ``WHERE``; "TRUE" when nothing is filtered."""
    a = alias
    parts: list[str] = []
    params: list[Any] = []
    for tag in f.tags:
        parts.append(f"{a}.id IN (SELECT asset_id FROM tags WHERE tag = ?)")
        params.append(tag)
    if f.source:
        parts.append(f"coalesce({a}.ai_source, 'none') = ?")
        params.append(source_name(f.source))
    if f.prompt:
        words = re.findall(r"\w+", f.prompt.lower())
        if not words:
            raise QueryError("--prompt needs at least one word")
        for word in words:
            part, value = prompt_word(word, a)
            parts.append(part)
            params.append(value)
    if f.camera:
        # a plain substring: % and _ are what they are, not LIKE's wildcards
        parts.append(f"contains(lower(coalesce({a}.camera_make, '') || ' ' || "
                     f"coalesce({a}.camera_model, '')), lower(?))")
        params.append(f.camera.strip())
    when = f"coalesce({a}.taken_at, make_timestamp({a}.mtime_ns // 1000))"
    if f.since:
        start, _ = _day(f.since, "since")
        parts.append(f"{when} >= ?")
        params.append(start)
    if f.until:
        end, whole_day = _day(f.until, "until")
        parts.append(f"{when} {'<' if whole_day else '<='} ?")
        params.append(end + timedelta(days=1) if whole_day else end)
    if f.folder:
        part, values = folder_condition(f.folder, a)
        parts.append(part)
        params += values
    if f.format:
        parts.append(f"{a}.format = ?")
        params.append(format_name(f.format))
    if f.model:
        parts.append(f"contains(lower(coalesce({a}.ai_model, '')), lower(?))")
        params.append(f.model.strip())
    if f.kind:
        if f.kind not in ("image", "video"):
            raise QueryError(f"--kind {f.kind!r}: choose image or video")
        parts.append(f"{a}.kind {'=' if f.kind == 'video' else 'IS DISTINCT FROM'} 'video'")
    return (" AND ".join(parts) if parts else "TRUE"), params
