"""Decode stage, a deadline per file: a decoder that hangs costs its file, never the run.

Every engine calls the same decode callable, so the deadline lives here, not in
an engine. Each file is decoded on a helper thread and waited for at most
``timeout`` seconds; a file past it becomes a failure record and its thread is
left behind (stuck in C with the GIL released, or sleeping), a fresh one taking
over. The helper is a daemon thread of our own, not a ``ThreadPoolExecutor``:
the standard pool joins its threads at exit, so one hung decode would keep the
process from ending.

A decoder that hangs while *holding* the GIL stops the waiting thread too. In a
process that may be thrown away (a local decode worker, a Ray task's worker),
``ITIMER_REAL`` is armed as a backstop with ``SIGALRM``'s default action: the
kernel ends the process, and its engine retries the files it held.
"""

from __future__ import annotations

import os
import queue
import signal
import threading
from typing import Callable, TypeVar

T = TypeVar("T")

KILL_GRACE = 5.0     # seconds past the deadline before the backstop ends a worker
_local = threading.local()
_disposable = False


def _forget_helpers() -> None:
    """A forked child has none of its parent's threads: its helpers start afresh."""
    global _local
    _local = threading.local()


os.register_at_fork(after_in_child=_forget_helpers)


class DecodeTimeout(Exception):
    """The file was not decoded within the deadline."""


def mark_disposable() -> None:
    """This process may be ended by the backstop alarm (call it in a worker process,
    on its main thread: SIGALRM then takes its default action, ending the process)."""
    global _disposable
    if threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    _disposable = True


class _Helper:
    """One daemon thread that runs calls handed to it, one at a time."""

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._loop, name="alice-decode", daemon=True).start()

    def _loop(self) -> None:
        while True:
            fn, box, done = self.jobs.get()
            try:
                box.append((True, fn()))
            except BaseException as exc:  # noqa: BLE001 - handed back to the caller
                box.append((False, exc))
            done.set()


def within(timeout: float | None, fn: Callable[[], T]) -> T:
    """``fn()`` if it returns within ``timeout`` seconds (None: no deadline), else
    DecodeTimeout; an exception it raises is raised here."""
    if timeout is None:
        return fn()
    helper = getattr(_local, "helper", None)
    if helper is None:
        helper = _local.helper = _Helper()
    box: list = []
    done = threading.Event()
    armed = _disposable and threading.current_thread() is threading.main_thread()
    if armed:
        signal.setitimer(signal.ITIMER_REAL, timeout + max(KILL_GRACE, timeout))
    try:
        helper.jobs.put((fn, box, done))
        if not done.wait(timeout):
            _local.helper = None          # left behind with its file; a new one next time
            raise DecodeTimeout(f"decode timeout: more than {timeout:g} s")
    finally:
        if armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
    ok, value = box[0]
    if not ok:
        raise value
    return value
