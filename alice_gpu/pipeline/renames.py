"""The run, renames: a file that only changed its name or folder keeps its row.

A vanished indexed file and a new file with the same size and mtime (what
``mv`` and a folder rename keep) are one file when the new file's SHA-256 is
the stored one: its row takes the new path, keeping id, features, vector, tags
and decisions, and nothing is decoded. Only those candidates are read, in this
process; everything else goes through the run as before. A file still settling
(``watch``: ``mv`` sets its ctime) is a candidate too: the same bytes as stored
are complete by definition.
"""

from __future__ import annotations

import logging
from collections import defaultdict

from ..decode.video import file_sha256
from ..discover import Discovery
from ..store import Store

log = logging.getLogger(__name__)


def follow_renames(store: Store, found: Discovery) -> int:
    """Apply the renames among ``found``'s vanished and new files to the store, and take
    them out of ``found`` (its ``todo`` and ``removed``); returns how many."""
    candidates = found.todo + found.deferred      # a moved file's ctime is new: deferred
    if not found.removed or not candidates:
        return 0
    gone = store.contents_of(found.removed)
    by_stat: dict[tuple[int, int], list[str]] = defaultdict(list)
    for path, (size, mtime_ns, _) in gone.items():
        by_stat[size, mtime_ns].append(path)
    pairs: list[tuple[str, str]] = []
    for entry in candidates:
        olds = by_stat.get((entry.size, entry.mtime_ns))
        if not olds:
            continue
        try:
            digest, size, mtime_ns = file_sha256(entry.path)
        except OSError:
            continue                          # unreadable now: the run records why
        for old in olds:
            if gone[old][2] == digest and (size, mtime_ns) == (entry.size, entry.mtime_ns):
                pairs.append((old, entry.path))
                olds.remove(old)
                break
    if not pairs:
        return 0
    store.move_paths(pairs)
    moved_from, moved_to = {a for a, _ in pairs}, {b for _, b in pairs}
    found.todo[:] = [e for e in found.todo if e.path not in moved_to]
    found.deferred[:] = [e for e in found.deferred if e.path not in moved_to]
    found.removed[:] = [p for p in found.removed if p not in moved_from]
    log.info("%d files were renamed or moved; their rows follow them", len(pairs))
    return len(pairs)
