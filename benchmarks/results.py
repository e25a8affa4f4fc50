"""RESULTS.md's machine-written blocks: one JSON document between two markers per benchmark."""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def record(key: str, doc: dict) -> None:
    """Replace the block marked ``<!-- key -->`` with ``doc`` (appended the first time)."""
    text, mark = RESULTS.read_text(), f"<!-- {key} -->"
    block = f"{mark}\n```json\n{json.dumps(doc, indent=1)}\n```\n{mark}"
    if mark in text:
        head, _, rest = text.partition(mark)
        text = head + block + rest.partition(mark)[2]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(text)
