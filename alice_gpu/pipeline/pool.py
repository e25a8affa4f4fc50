"""The local engine's decode workers: a loky process pool running the decode-stage task.

loky detects a worker that dies from the process's sentinel, always: every task
in flight then fails with ``TerminatedWorkerError`` and :mod:`.dispatch` starts a
new pool and retries those files one by one (pebble, tried first, lost tasks of
killed workers: RESULTS.md). What the pool does not do is added here: workers
that may be ended by the decode deadline's backstop alarm
(:mod:`alice_gpu.decode.deadline`), that die with the main process by any signal
(``PR_SET_PDEATHSIG`` on Linux), and that ignore SIGINT (the main process decides
how a run stops) and take SIGTERM's default action.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import signal
import sys
import threading
from concurrent.futures import Future
from typing import TYPE_CHECKING, Sequence

from ..decode import DecodePlan, Known
from ..decode.deadline import mark_disposable
from ..errors import ConfigError
from ..features.worker import decode_and_hash
from ..records import Decoded, FileEntry

if TYPE_CHECKING:
    from loky import ProcessPoolExecutor

log = logging.getLogger(__name__)


def effective_workers(requested: int) -> int:
    """Workers are capped at the cores present."""
    return max(1, min(requested, os.cpu_count() or 1))


def decode_task(entries: Sequence[FileEntry], plan: DecodePlan, known: Known | None,
                timeout: float) -> list[Decoded]:
    """What a worker runs: the decode-stage task, each file under its own deadline."""
    return decode_and_hash(entries, plan, known, timeout)


def _worker_init(parent: int) -> None:
    """Start-up of a decode worker: its own signal dispositions, die with the main
    process, one BLAS thread, glibc's freed buffers kept for reuse."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    mark_disposable()
    _die_with(parent)
    _keep_freed_buffers()
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)   # N workers on N cores, no spinning BLAS threads
    except ImportError:  # pragma: no cover - a declared dependency
        pass


def _die_with(parent: int) -> None:
    """Ask the kernel to SIGKILL this worker when its parent dies (Linux).

    The parent is the main process (every start method used makes workers its
    direct children). A parent that died before the request was made is caught by
    looking for the main process once the request is in place.
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
    unmapped and the next file faults the same pages back in (RESULTS.md). Blocks up
    to 32 MiB now stay in the heap, and at most 64 MiB of free heap is kept, so memory
    stays bounded.
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


START_METHODS = ("fork", "loky", "spawn")


def start_method() -> str:
    """fork while this process is small and single-threaded, else loky's fork + exec.

    Workers forked before torch or ONNX Runtime is imported (both keep native thread
    pools that ``threading`` does not count) or any pipeline thread runs start in
    milliseconds and inherit no thread state. Otherwise (a restart during a run, a
    second run in one Python process, a notebook that imported torch) each worker is
    a fresh interpreter, a
    direct child of this process so that it still dies with it; a fork server would
    be their parent instead, and it outlives a ``kill -9`` of this process (every
    child it forks holds its keep-alive pipe). ``ALICE_GPU_START_METHOD`` overrides
    the choice with one of ``START_METHODS``.
    """
    method = os.environ.get("ALICE_GPU_START_METHOD")
    if method is not None:
        if method not in START_METHODS:
            raise ConfigError(f"ALICE_GPU_START_METHOD must be one of {', '.join(START_METHODS)}, "
                              f"not {method!r}")
        return method
    if "fork" not in multiprocessing.get_all_start_methods():
        return "loky"
    if {"torch", "onnxruntime"} & set(sys.modules) or threading.active_count() > 1:
        return "loky"
    return "fork"


class DecodePool:
    """The decode worker processes; ``submit`` runs :func:`decode_task` on one of them."""

    def __init__(self, workers: int, timeout: float):
        self.workers, self.timeout = workers, timeout
        self.restarts = 0
        self.executor = self._start()

    def _start(self) -> "ProcessPoolExecutor":
        # imported here: small jobs decode in-process and never pay for it
        from loky import ProcessPoolExecutor
        from loky.backend.context import get_context as loky_context

        method = start_method()
        if method == "fork":
            # garbage is finalised here: in a forked worker (whose first act is loky's
            # gc.collect) a finaliser that joins a native thread pool would wait forever
            gc.collect()
        ctx = loky_context(method) if method == "loky" else multiprocessing.get_context(method)
        executor = ProcessPoolExecutor(max_workers=self.workers, context=ctx,
                                       initializer=_worker_init, initargs=(os.getpid(),))
        executor.submit(_noop)   # the workers start now, not on the first real task
        return executor

    def submit(self, entries: Sequence[FileEntry], plan: DecodePlan, known: Known | None
               ) -> Future:
        return self.executor.submit(decode_task, entries, plan, known, self.timeout)

    def restart(self) -> None:
        """A new pool after a worker died (the old one fails everything in flight)."""
        self.close()
        self.restarts += 1
        self.executor = self._start()

    def close(self) -> None:
        """Stop the workers now; what they were doing is no longer wanted."""
        self.executor.shutdown(wait=True, kill_workers=True)
