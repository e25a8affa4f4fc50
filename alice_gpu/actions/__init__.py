"""Actions on the answers: moving duplicates aside with a journal, and undoing it.

Above the search stage (it acts on ``duplicates``' groups) and beside the
pipeline; it writes to the index only to make it follow the files it moves.
"""


def human_bytes(n: float) -> str:
    """A file size as people read it: 812 B, 80.7 KB, 2.1 MB (powers of 1000)."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"
