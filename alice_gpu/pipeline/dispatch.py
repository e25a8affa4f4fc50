"""The local engine's decode dispatch: files in, decoded records out, in input order.

Decoding runs ahead of its consumer by at most ``max_in_flight`` files, in
chunks on the worker pool, or in this process for small jobs. A worker that
dies (a file that crashes the decoder) or runs past a file's deadline costs
only its own chunk: those files are retried one per task, and only the
culprit is recorded as failed, with the reason.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from concurrent.futures import TimeoutError as FuturesTimeout
from concurrent.futures.process import BrokenProcessPool
from typing import Iterator, Sequence

from pebble import ProcessExpired, ProcessFuture

from ..decode import DecodePlan, Known
from ..features.worker import decode_and_hash
from ..records import Decoded, FileEntry
from .pool import TIMED_OUT, DecodePool

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
    """Chunks of files on the pool, collected in order, with per-chunk recovery."""

    def __init__(self, pool: DecodePool, plan: DecodePlan, known: Known, max_in_flight: int):
        self.pool, self.plan, self.known = pool, plan, known
        workers = pool.workers
        # chunks of records only (hash-only runs) can be larger: fewer round trips
        self.size = max(1, min(16 if plan.keep_pixels else 64, max_in_flight // (2 * workers)))
        self.depth = max(workers, max_in_flight // self.size)   # chunks in flight

    def submit(self, part: Sequence[FileEntry]) -> ProcessFuture:
        try:
            return self.pool.submit(part, self.plan, _known_for(part, self.known))
        except RuntimeError:          # pebble refuses work once its pool is broken
            log.warning("the decode pool broke; starting a new one")
            self.pool.restart()
            return self.pool.submit(part, self.plan, _known_for(part, self.known))

    def run(self, entries: Sequence[FileEntry]) -> Iterator[Decoded]:
        parts = (entries[i:i + self.size] for i in range(0, len(entries), self.size))
        pending: deque[tuple[Sequence[FileEntry], ProcessFuture]] = deque()
        for part in parts:
            pending.append((part, self.submit(part)))
            if len(pending) >= self.depth:
                break
        try:
            while pending:
                part, fut = pending.popleft()
                results = self.collect(part, fut)
                nxt = next(parts, None)
                if nxt is not None:
                    pending.append((nxt, self.submit(nxt)))
                yield from results
        finally:
            for _, f in pending:
                f.cancel()

    def collect(self, part: Sequence[FileEntry], fut: ProcessFuture) -> list[Decoded]:
        """The chunk's records; if its worker died or hung, its files one per task."""
        try:
            return fut.result()
        except (ProcessExpired, FuturesTimeout) as exc:
            log.warning("a decode worker %s; retrying its %d files one by one",
                        _how(exc, self.pool.timeout), len(part))
        except BrokenProcessPool:
            log.warning("the decode pool broke; starting a new one")
            self.pool.restart()
        singles = [(e, self.submit([e])) for e in part]
        return [self.single(e, f) for e, f in singles]

    def single(self, entry: FileEntry, fut: ProcessFuture) -> Decoded:
        """One file's record; if its worker died again, the file is the culprit."""
        try:
            return fut.result()[0]
        except (ProcessExpired, FuturesTimeout, BrokenProcessPool) as exc:
            how = _how(exc, self.pool.timeout)
            log.warning("the decoder %s on %s; recorded as failed", how, entry.path)
            if isinstance(exc, BrokenProcessPool):
                self.pool.restart()
            timed_out = isinstance(exc, FuturesTimeout) or getattr(exc, "exitcode", 0) == TIMED_OUT
            return Decoded.failed(entry, _timeout_reason(self.pool.timeout) if timed_out
                                  else "decoder crashed (its worker process died)")


def _how(exc: BaseException, timeout: float) -> str:
    """How a worker ended, for the log."""
    code = getattr(exc, "exitcode", None)
    if isinstance(exc, FuturesTimeout) or code == TIMED_OUT:
        return f"ran past the {timeout:g} s deadline of a file"
    if code is not None:
        return f"died (exit code {code})"
    return "pool broke"
