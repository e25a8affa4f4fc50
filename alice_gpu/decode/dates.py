"""When a picture was taken, and which fact said so: the one chain ``organize`` and
``show`` use.

The chain, first found wins: EXIF DateTimeOriginal → EXIF CreateDate
(DateTimeDigitized) → an XMP date or the container's creation date (PNG
``Creation Time``, a video's ``creation_time``) → a date in the file name →
EXIF ModifyDate → the file's mtime. ModifyDate comes after the file name: it
is when the file was last edited, which a camera's or phone's name
(``IMG_20190704_…``) beats. The in-file dates are read at decode time and stored
with their source (``taken_at``, ``taken_from``); the file name and mtime are
looked at here, so nothing is decoded to date a file.
"""

from __future__ import annotations

import os
import re
from datetime import datetime
from typing import Any

# where a stored date came from (the value of the ``taken_from`` column)
FROM_ORIGINAL = "exif:DateTimeOriginal"
FROM_CREATE = "exif:CreateDate"
FROM_MODIFY = "exif:ModifyDate"
FROM_EXIF = "exif"                 # stored before schema 9: one of the EXIF dates
FROM_NAME = "file name"
FROM_MTIME = "mtime"

_XMP_DATES = ("exif:DateTimeOriginal", "xmp:CreateDate", "photoshop:DateCreated")

# 2019-07-04, 20190704_153012, 2019-07-04 15.30.12, IMG-20190704-WA0001, PXL_20190704_153012345
_NAME_DATE = re.compile(
    r"(?<!\d)(19[7-9]\d|20\d\d)([-_.]?)(0[1-9]|1[0-2])\2(0[1-9]|[12]\d|3[01])"
    r"(?:[-_ T.]{0,3}(?:at )?([01]\d|2[0-3])[-_.:h]?([0-5]\d)[-_.:m]?([0-5]\d))?(?!\d{3})")


def parse_iso(text: Any) -> datetime | None:
    """An ISO 8601 date or date-time as local wall time (an offset is dropped: a photo
    is filed under the day it was where it was taken); None when it is not one."""
    if not isinstance(text, str) or len(text.strip()) < 10:
        return None
    text = text.strip().replace("Z", "+00:00")
    for candidate in (text, text[:19], text[:10]):
        try:
            when = datetime.fromisoformat(candidate)
        except ValueError:
            continue
        if 1900 < when.year < 2200:
            return when.replace(tzinfo=None)
        return None
    return None


def xmp_date(xmp: str | None) -> tuple[str, str] | None:
    """The first XMP creation date (ISO text) and its source, from an XMP packet."""
    if not xmp:
        return None
    for name in _XMP_DATES:
        m = re.search(rf"{name}\s*=\s*\"([^\"]+)\"", xmp) or \
            re.search(rf"<{name}>\s*([^<]+?)\s*</{name}>", xmp)
        if m and parse_iso(m.group(1)):
            return parse_iso(m.group(1)).isoformat(), f"xmp:{name.split(':', 1)[1]}"
    return None


def name_date(name: str, now: datetime | None = None) -> datetime | None:
    """A date written in a file name (cameras, phones, screenshots, messengers), or None;
    a date after ``now`` (a serial number that looks like one) is none."""
    latest = now or datetime.now()
    for m in _NAME_DATE.finditer(name):
        y, _, mo, d, h, mi, s = m.groups()
        try:
            when = datetime(int(y), int(mo), int(d), int(h or 0), int(mi or 0), int(s or 0))
        except ValueError:
            continue
        if when <= latest:
            return when
    return None


def date_taken(taken_at: Any, taken_from: str | None, path: str, mtime_ns: int
               ) -> tuple[datetime, str]:
    """The date a file was taken by the chain above, and where it came from."""
    stored = taken_at if isinstance(taken_at, datetime) else parse_iso(taken_at)
    if stored is not None and taken_from != FROM_MODIFY:
        return stored, taken_from or FROM_EXIF
    named = name_date(os.path.basename(path))
    if named is not None:
        return named, FROM_NAME
    if stored is not None:
        return stored, FROM_MODIFY
    return datetime.fromtimestamp(mtime_ns / 1e9), FROM_MTIME
