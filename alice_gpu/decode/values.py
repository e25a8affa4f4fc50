"""Decode-stage helper: the values generation metadata holds, read forgivingly.

Shared by the generators' parsers (:mod:`.aimeta`, :mod:`.comfy`): JSON that may
not be JSON, numbers that may be strings or out of range, text that may be blank.
"""

from __future__ import annotations

import json
from typing import Any


def as_json(text: str | None) -> Any:
    if not text:
        return None
    text = text.strip().strip("\x00").strip()
    if not text or text[0] not in "{[":
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def as_number(value: Any, kind: type = float) -> Any:
    if value is None or isinstance(value, bool):
        return None
    try:
        out = kind(float(value)) if kind is int else kind(value)
    except (TypeError, ValueError, OverflowError):
        return None
    if kind is int and not -(2 ** 63) <= out < 2 ** 63:
        return None
    return out


def clean(text: Any) -> str | None:
    if not isinstance(text, str):
        return None
    text = text.strip()
    return text or None
