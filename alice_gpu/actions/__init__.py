"""Actions on the answers: moving duplicates aside with a journal, and undoing it.

Above the search stage (it acts on ``duplicates``' groups) and beside the
pipeline; it writes to the index only to make it follow the files it moves.
"""


def human_bytes(n: float) -> str:
    """A file size as people read it: 812 B, 80.7 KB, 2.1 MB (powers of 1000)."""
    if n < 1000:
        return f"{n:.0f} B"
    for unit in ("KB", "MB"):
        n /= 1000
        if n < 1000:
            return f"{n:.1f} {unit}"
    return f"{n / 1000:.1f} GB"
