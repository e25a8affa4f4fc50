"""The local engine's decode workers: a pebble process pool running the decode-stage task.

pebble (not ``concurrent.futures``) because a worker that dies takes down only
its own task there: the pool replaces the worker, reports how it died
(``ProcessExpired`` with its exit code) and every other task goes on, where a
stdlib pool breaks as a whole. What pebble does not do is added here:

* a deadline per *file*: the worker arms ``SIGALRM`` (default action: the
  process ends) before each file of its chunk, so a file that hangs, even in C
  code that never returns to Python, ends its worker after
  ``decode.timeout_seconds`` and the exit code says so;
* workers that die with the main process, by any signal (``kill -9``
  included): ``PR_SET_PDEATHSIG`` on Linux; elsewhere a worker notices when the
  pool's pipe closes, at the end of its chunk.

pebble's workers ignore SIGINT (the main process decides how a run stops) and
exit on SIGTERM instead of inheriting the main process's handler.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
import threading
from typing import Iterable, Iterator, Sequence

from pebble import ProcessFuture, ProcessPool

from ..decode import DecodePlan, Known
from ..features.worker import decode_and_hash
from ..records import Decoded, FileEntry

log = logging.getLogger(__name__)

TIMED_OUT = -signal.SIGALRM   # exit code of a worker whose file ran past its deadline


def effective_workers(requested: int) -> int:
    """Workers are capped at the cores present."""
    return max(1, min(requested, os.cpu_count() or 1))


def decode_task(entries: Sequence[FileEntry], plan: DecodePlan, known: Known | None,
                timeout: float) -> list[Decoded]:
    """What a worker runs: the decode-stage task, each file under its own deadline."""
    return decode_and_hash(_each_within(entries, timeout), plan, known)


def _each_within(entries: Iterable[FileEntry], timeout: float) -> Iterator[FileEntry]:
    """The files, with the alarm re-armed as each one is taken (and off after the last).

    ``SIGALRM`` keeps its default action in a worker: the kernel ends the process,
    whatever the decoder is doing, and the pool reports ``TIMED_OUT``.
    """
    try:
        for entry in entries:
            signal.setitimer(signal.ITIMER_REAL, timeout)
            yield entry
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _worker_init(parent: int) -> None:
    """Start-up of a decode worker: die with the main process, one BLAS thread,
    glibc's freed buffers kept for reuse."""
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    _die_with(parent)
    _keep_freed_buffers()
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)   # N workers on N cores, no spinning BLAS threads
    except ImportError:  # pragma: no cover - a declared dependency
        pass


def _die_with(parent: int) -> None:
    """Ask the kernel to SIGKILL this worker when its parent dies (Linux).

    The parent is the main process, or a fork server that itself exits when the
    main process does. A parent that died before the request was made is caught
    by looking for the main process once the request is in place.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    try:
        os.kill(parent, 0)
    except ProcessLookupError:
        os._exit(1)
    except PermissionError:
        pass


def _keep_freed_buffers() -> None:
    """Let glibc reuse the per-file buffers instead of returning them to the kernel.

    By default every freed block over 128 KiB (a file's bytes, a decoded frame) is
    unmapped, and the next file faults the same pages back in: 5x the page faults
    and a few percent of a hash-only worker's time (RESULTS.md). Blocks up to 32 MiB
    now stay in the heap, and at most 64 MiB of free heap is kept, so memory stays bounded.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        libc.mallopt(m_mmap_threshold, 32 << 20)
        libc.mallopt(m_trim_threshold, 64 << 20)
    except (OSError, AttributeError):  # not glibc (musl, ...): keep the defaults
        pass


def _noop() -> None:
    return None


def start_method() -> str:
    """fork while this process is small and single-threaded, else a fork server.

    Workers forked before torch is imported or any pipeline thread runs start in
    milliseconds and inherit no torch or thread state; otherwise a fork server (a
    clean interpreter with the decode modules loaded) does the same more slowly.
    ``ALICE_GPU_START_METHOD`` (fork, forkserver, spawn) overrides the choice.
    """
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    if method == "fork" and ("torch" in sys.modules or threading.active_count() > 1):
        method = "forkserver"
    return os.environ.get("ALICE_GPU_START_METHOD", method)


class DecodePool:
    """The decode worker processes; ``submit`` runs :func:`decode_task` on one of them."""

    def __init__(self, workers: int, timeout: float):
        self.workers, self.timeout = workers, timeout
        self.restarts = 0
        self.pool = self._start()

    def _start(self) -> ProcessPool:
        method = start_method()
        ctx = multiprocessing.get_context(method)
        if method == "forkserver":
            ctx.set_forkserver_preload(["alice_gpu.features.worker"])
        pool = ProcessPool(max_workers=self.workers, initializer=_worker_init,
                           initargs=(os.getpid(),), context=ctx)
        pool.schedule(_noop)   # the workers start now, not on the first real task
        return pool

    def submit(self, entries: Sequence[FileEntry], plan: DecodePlan, known: Known | None
               ) -> ProcessFuture:
        # pebble's own deadline is a backstop only: the per-file alarm comes first
        backstop = self.timeout * len(entries) + 30
        return self.pool.schedule(decode_task, args=(entries, plan, known, self.timeout),
                                  timeout=backstop)

    def restart(self) -> None:
        """A new pool after this one broke as a whole (pebble gives up on a broken channel)."""
        self.close()
        self.restarts += 1
        self.pool = self._start()

    def close(self) -> None:
        """Stop the workers now; what they were doing is no longer wanted."""
        self.pool.stop()
        self.pool.join()
