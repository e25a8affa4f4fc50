"""The local engine's decode dispatch: files in, decoded records out, in input order.

Decoding runs ahead of its consumer by at most ``max_in_flight`` files, in
chunks on the worker pool, or in this process for small jobs. A worker that
dies (a file that crashes the decoder, or runs past its deadline) breaks the
pool: a new one is started, the files that were in flight are retried one by
one, and only the culprit is recorded as failed, with the reason.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from concurrent.futures import TimeoutError as FuturesTimeout
from concurrent.futures.process import BrokenProcessPool
from typing import Iterator, Sequence

from concurrent.futures import Future

from ..decode import DecodePlan, Known
from ..features.worker import decode_and_hash
from ..records import Decoded, FileEntry
from .pool import DecodePool

log = logging.getLogger(__name__)


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
            yield decode_in_process(e, plan, _known_for([e], known), timeout)
        return
    yield from _Chunks(pool, plan, known, max_in_flight).run(entries)


def decode_in_process(entry: FileEntry, plan: DecodePlan, known: Known | None,
                      timeout: float) -> Decoded:
    """One decode on a daemon thread, given up after ``timeout`` seconds.

    A decoder that hangs cannot be stopped in-process, but it can be left behind:
    the file is recorded as failed and the run goes on (the thread, stuck in C with
    the GIL released, dies with the process). A decoder that kills the process is
    the job of the in-process guard (:mod:`.run`).
    """
    box: list = []

    def work() -> None:
        try:
            box.append(decode_and_hash([entry], plan, known)[0])
        except BaseException as exc:  # noqa: BLE001 - re-raised below, in the caller
            box.append(exc)

    t = threading.Thread(target=work, name="alice-decode", daemon=True)
    t.start()
    t.join(timeout)
    if not box:
        log.warning("decoding timed out on %s (in-process); recorded as failed", entry.path)
        return Decoded.failed(entry, _timeout_reason(timeout))
    if isinstance(box[0], BaseException):
        raise box[0]
    return box[0]


def _known_for(part: Sequence[FileEntry], known: Known) -> dict[int, frozenset[str]] | None:
    """Only the sizes this chunk needs travel to its worker."""
    sub = {e.size: known[e.size] for e in part if e.size in known}
    return sub or None


def _timeout_reason(timeout: float) -> str:
    return f"decode timeout: more than {timeout:g} s"


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
                    # the per-file alarm ends a hung worker; this bound is only a backstop
                    results = fut.result(timeout=self.pool.timeout * len(part) + 30)
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
        """One file alone on the pool: if its worker dies, the file is the culprit.

        Alone, a file that hangs is seen here, when ``timeout`` seconds have passed
        since it was sent (its worker's alarm, armed later, has not even fired yet);
        a worker that dies before then crashed.
        """
        _, fut = self.submit([entry])
        timeout = self.pool.timeout
        try:
            return fut.result(timeout=timeout)[0]
        except (BrokenProcessPool, FuturesTimeout) as exc:
            hung = isinstance(exc, FuturesTimeout)
            log.warning("%s on %s; recorded as failed, restarting the decode workers",
                        "decoding timed out" if hung else "the decoder died", entry.path)
            self.pool.restart()
            return Decoded.failed(entry, _timeout_reason(timeout) if hung
                                  else "decoder crashed (its worker process died)")
