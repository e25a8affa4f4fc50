"""The local engine's decode dispatch: files in, decoded records out, in input order.

Decoding runs ahead of its consumer by at most ``max_in_flight`` files, in
chunks on the worker pool, or in this process for small jobs; either way each
file is decoded under its deadline by the shared decode callable. A worker
that dies (a file that crashes the decoder, or hangs holding the GIL until the
deadline's backstop ends it) breaks the pool: a new one is started, the files
that were in flight are retried one by one, and only the culprit is recorded
as failed, with the reason.
"""

from __future__ import annotations

import logging
from collections import deque
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FuturesTimeout
from concurrent.futures.process import BrokenProcessPool
from typing import Iterator, Sequence

from ..decode import DecodePlan, Known
from ..decode.deadline import KILL_GRACE
from ..features.worker import decode_and_hash
from ..records import Decoded, FileEntry
from .pool import DecodePool

log = logging.getLogger(__name__)

BACKSTOP = 30.0     # seconds a chunk may take beyond its files' deadlines before it is given up


def decode_stream(entries: Sequence[FileEntry], plan: DecodePlan, pool: DecodePool | None,
                  max_in_flight: int, parallel_threshold: int, known: Known | None = None,
                  timeout: float = 60.0) -> Iterator[Decoded]:
    """Decoded files in input order, with at most ``max_in_flight`` files decoded ahead.

    Jobs smaller than ``parallel_threshold`` (or without a pool) are decoded in this
    process, each file under the same ``timeout`` as in a worker.
    """
    known = known or {}
    if pool is None or len(entries) < parallel_threshold:
        for e in entries:
            yield decode_and_hash([e], plan, _known_for([e], known), timeout)[0]
        return
    yield from _Chunks(pool, plan, known, max_in_flight).run(entries)


def _known_for(part: Sequence[FileEntry], known: Known) -> dict[int, frozenset[str]] | None:
    """Only the sizes this chunk needs travel to its worker."""
    sub = {e.size: known[e.size] for e in part if e.size in known}
    return sub or None


def _per_file_limit(timeout: float) -> float:
    """The longest one file can hold a worker: its deadline, then the backstop alarm."""
    return timeout + max(KILL_GRACE, timeout)


def _exit_codes(exc: BaseException) -> str:
    """How the pool says its workers ended (loky names their exit codes), for the log."""
    import re

    found = re.search(r"exit codes of the workers are (\{[^}]*\})", str(exc))
    return f" (worker exit codes {found.group(1)})" if found else ""


class _Chunks:
    """Chunks of files on the pool, collected in order; a broken pool is recovered."""

    def __init__(self, pool: DecodePool, plan: DecodePlan, known: Known, max_in_flight: int):
        self.pool, self.plan, self.known = pool, plan, known
        workers = pool.workers
        # chunks of records only (hash-only runs) can be larger: fewer round trips
        self.size = max(1, min(16 if plan.keep_pixels else 64, max_in_flight // (2 * workers)))
        self.depth = max(workers, max_in_flight // self.size)   # chunks in flight

    def submit(self, part: Sequence[FileEntry]) -> tuple[Sequence[FileEntry], Future]:
        return part, self.pool.submit(part, self.plan, _known_for(part, self.known))

    def run(self, entries: Sequence[FileEntry]) -> Iterator[Decoded]:
        parts = (entries[i:i + self.size] for i in range(0, len(entries), self.size))
        pending: deque[tuple[Sequence[FileEntry], Future]] = deque()

        def refill() -> None:
            for part in parts:
                pending.append(self.submit(part))
                if len(pending) >= self.depth:
                    return

        refill()
        try:
            while pending:
                part, fut = pending.popleft()
                try:
                    # each file has its deadline in the worker; this bound is a backstop
                    limit = _per_file_limit(self.pool.timeout) * len(part) + BACKSTOP
                    results = fut.result(timeout=limit)
                except (BrokenProcessPool, FuturesTimeout) as exc:
                    results = self.recover([part, *(p for p, _ in pending)], exc)
                    pending.clear()
                refill()
                yield from results
        finally:
            for _, f in pending:
                f.cancel()

    def recover(self, parts: list[Sequence[FileEntry]], exc: BaseException) -> list[Decoded]:
        """After a worker died: a new pool, then the files that were in flight one by one."""
        log.warning("a decode worker %s; retrying the %d files in flight one by one",
                    "hung" if isinstance(exc, FuturesTimeout) else "died",
                    sum(len(p) for p in parts))
        self.pool.restart()
        return [self.single(e) for part in parts for e in part]

    def single(self, entry: FileEntry) -> Decoded:
        """One file alone on the pool: if its worker dies, the file is the culprit (ended
        by the deadline's backstop alarm: it hung; by anything else: it crashed)."""
        _, fut = self.submit([entry])
        try:
            return fut.result(timeout=_per_file_limit(self.pool.timeout) + BACKSTOP)[0]
        except (BrokenProcessPool, FuturesTimeout) as exc:
            hung = isinstance(exc, FuturesTimeout) or "SIGALRM" in str(exc)
            log.warning("%s on %s%s; recorded as failed, restarting the decode workers",
                        "decoding timed out" if hung else "the decoder died", entry.path,
                        _exit_codes(exc))
            self.pool.restart()
            return Decoded.failed(entry, f"decode timeout: more than {self.pool.timeout:g} s"
                                  if hung else "decoder crashed (its worker process died)")
