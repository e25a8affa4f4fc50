"""API, ``watch``: the index kept current while files come, change, move and go.

Filesystem events (watchdog: inotify on Linux) are hints, never facts: each one
marks a folder to look at, and a *pass* is an ordinary index run walking only
those folders (``index(..., within=...)``), so what counts is what the disk
says when the pass runs. A file changed less than ``settle`` seconds ago (by
mtime or ctime) is left for a later pass, so a slow copy is indexed once,
complete. A full pass over the roots (a reconcile) runs at the start, every
``reconcile`` seconds, and every ``poll`` seconds where events cannot be had:
a network or FUSE filesystem, or an inotify watch limit the folders exceed; one
line says so. Removals go through the run's mass-disappearance guard (an
unmounted drive removes nothing); renames keep ids (:mod:`alice_gpu.pipeline.renames`).

The watcher holds the index (:meth:`AliceIndex.hold`): other processes' queries
are answered by it, and their ``index`` runs are carried out by it, one at a time.
Every pass commits as it goes, so a kill -9 loses nothing committed and the
next start's reconcile finds the rest.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import signal
import threading
import time
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Any, Callable, Iterator

from ..discover import normalize_path

if TYPE_CHECKING:
    from .index import AliceIndex

log = logging.getLogger(__name__)

SETTLE = 3.0              # seconds a file's size and times must rest before it is read
QUIET = 0.5               # seconds without events before a pass starts (a burst is one pass)
RECONCILE = 600.0         # seconds between full passes while events work
POLL = 5.0                # seconds between full passes while polling (no --poll given)
MAX_SCOPES = 32           # more changed folders than this: the pass walks the roots
LIMIT_ENV = "ALICE_GPU_WATCH_LIMIT"    # inotify watches we may use (default: the kernel's)
_NETWORK_FS = ("nfs", "nfs4", "cifs", "smb", "smb3", "smbfs", "ncpfs", "afs", "9p", "ceph",
               "glusterfs", "davfs", "vboxsf", "lustre", "gpfs")


def _mounts() -> list[tuple[str, str]]:
    """(mount point, filesystem type) of every mount this process sees."""
    out = []
    try:
        with open("/proc/self/mounts", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                fields = line.split()
                if len(fields) >= 3:
                    point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[1])
                    out.append((point, fields[2]))
    except OSError:
        pass
    return out


def mount_type(path: str) -> str:
    """The filesystem type of the mount holding ``path``, or ''."""
    best, kind = "", ""
    for point, fs in _mounts():
        if (path == point or path.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
            best, kind = point, fs
    return kind


def mounts_at_or_under(roots: list[str]) -> set[str]:
    """The mount points that are a root or lie under one: when one goes (a drive
    unplugged, a share dropped), its files look deleted, and must not be."""
    return {p for p, _ in _mounts()
            if any(p == r or p.startswith(r.rstrip("/") + "/") for r in roots)}


def watch_limit() -> int:
    """How many inotify watches this process may use."""
    forced = os.environ.get(LIMIT_ENV)
    if forced and forced.isdigit():
        return int(forced)
    try:
        with open("/proc/sys/fs/inotify/max_user_watches") as fh:
            return int(fh.read().strip())
    except (OSError, ValueError):
        return 8192


def _folders(root: str, limit: int) -> int:
    """Folders under ``root`` (itself included), counting stops past ``limit``."""
    n = 0
    for _, dirs, _ in os.walk(root):
        n += 1
        if n > limit:
            break
    return n


def why_poll(roots: list[str]) -> str | None:
    """Why events cannot serve these roots (so they are polled), or None."""
    for root in roots:
        kind = mount_type(root)
        if kind in _NETWORK_FS or kind.startswith("fuse"):
            return f"{root} is on a {kind} filesystem, which sends no change events"
    limit = watch_limit()
    total = sum(_folders(r, limit) for r in roots if os.path.isdir(r))
    if total > limit:
        return (f"{total if total <= limit else 'more than ' + str(limit)} folders exceed the "
                f"inotify watch limit ({limit})")
    return None


class _WatchLimitSeen(logging.Handler):
    """Notes watchdog saying it could not watch a folder (the inotify limit reached)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen = False

    def emit(self, record: logging.LogRecord) -> None:
        if str(record.msg).startswith("Unable to watch"):
            self.seen = True


def _existing(folder: str) -> str:
    """``folder``, or its nearest ancestor still there (a folder deleted since its event:
    its parent is walked, so what it held is found gone)."""
    while folder and not os.path.isdir(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    return folder


class Watcher:
    """One ``watch``: its roots, what events marked, and the passes."""

    def __init__(self, api: "AliceIndex", roots: list[str], *, poll: float | None = None,
                 settle: float | None = None, reconcile: float | None = None,
                 on_pass: Callable[[dict[str, Any]], None] | None = None,
                 stop: threading.Event | None = None):
        self.api = api
        self.roots = [normalize_path(os.path.abspath(os.path.expanduser(r))) for r in roots]
        self.poll, self.polling, self.forced = poll, poll is not None, poll
        self.settle = SETTLE if settle is None else settle
        self.reconcile = RECONCILE if reconcile is None else reconcile
        self.on_pass = on_pass or (lambda doc: log.info("watch: %s", doc))
        self.stop = stop or threading.Event()
        self.wake = threading.Event()
        self.lock = threading.Lock()
        self.marked: set[str] = set()
        self.retry: set[str] = set()             # scopes with files still being written
        self.retry_at = 0.0
        self.last_event = 0.0
        self.db = os.path.realpath(api.folder)
        self.observer: Any = None
        self.limit_seen = _WatchLimitSeen()
        self.mounts: set[str] = set()
        self.paused = False

    # ------------------------------------------------------------ events
    def mark(self, path: str) -> None:
        """An event about ``path``: its folder is looked at in the next pass."""
        path = os.path.abspath(path)
        if path == self.db or path.startswith(self.db + os.sep):
            return                               # the index's own writes
        # a file: its folder; a folder made, gone or renamed: its parent (which holds both
        # the old and the new name)
        with self.lock:
            self.marked.add(os.path.dirname(path))
            self.last_event = time.monotonic()
        self.wake.set()

    def _clamp(self, folder: str) -> str:
        """``folder`` if it is under a root, else the root it is above (or the first)."""
        for root in self.roots:
            if folder == root or folder.startswith(root.rstrip(os.sep) + os.sep):
                return folder
        for root in self.roots:
            if root.startswith(folder.rstrip(os.sep) + os.sep):
                return root
        return self.roots[0]

    def _observe(self) -> Any:
        """An event observer on the roots, or None (then every pass is a full one)."""
        if self.polling:
            return None
        reason = why_poll(self.roots)
        if reason is None:
            try:
                return self._start_observer()
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EMFILE, errno.ENOMEM):
                    raise
                reason = f"the inotify watch limit is reached ({exc.strerror})"
        self.polling, self.poll = True, self.poll or POLL
        log.warning("watching by polling every %g s: %s", self.poll, reason)
        return None

    def _start_observer(self) -> Any:
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer

        watcher = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event) -> None:
                if event.event_type in ("opened", "closed_no_write"):
                    return
                watcher.mark(os.fsdecode(event.src_path))
                dest = getattr(event, "dest_path", "")
                if dest:
                    watcher.mark(os.fsdecode(dest))

        self.limit_seen.seen = False
        logging.getLogger("watchdog").addHandler(self.limit_seen)
        observer = Observer()
        for root in self.roots:
            if os.path.isdir(root):
                observer.schedule(Handler(), root, recursive=True)
        observer.start()
        return observer

    # ------------------------------------------------------------ passes
    def _scopes(self) -> list[str] | None:
        """The folders marked since the last pass, the smallest set covering them (None: all
        the roots)."""
        with self.lock:
            marked, self.marked = self.marked, set()
        marked = {self._clamp(_existing(m)) for m in marked}
        if not marked:
            return []
        if len(marked) > MAX_SCOPES or any(m in self.roots for m in marked):
            return None
        out: list[str] = []
        for folder in sorted(marked, key=len):
            if not any(folder == o or folder.startswith(o.rstrip(os.sep) + os.sep) for o in out):
                out.append(folder)
        return out

    def run_pass(self, scopes: list[str] | None, why: str) -> dict[str, Any]:
        """One index run over ``scopes`` (None: the roots); returns its line for the log."""
        t0 = time.monotonic()
        held = self.api._held
        with held.moving if held is not None else nullcontext():   # no move under way
            summary = self.api.index(self.roots, settle=self.settle, within=scopes)
        doc = {"event": "pass", "why": why, "at": time.time(),
               "scope": scopes if scopes is not None else self.roots,
               "indexed": summary.decoded + summary.reused, "decoded": summary.decoded,
               "failed": summary.failed, "removed": summary.removed,
               "renamed": summary.renamed, "deferred": summary.deferred,
               "removals_held": summary.removals_held, "unchanged": summary.unchanged,
               "seconds": round(time.monotonic() - t0, 3)}
        if summary.deferred:                     # still being written: look again later
            with self.lock:
                self.retry |= set(scopes if scopes is not None else self.roots)
                self.retry_at = time.monotonic() + max(0.2, self.settle / 2)
        self.on_pass(doc)
        return doc

    def _due(self, last_full: float) -> tuple[list[str] | None, str] | None:
        """What the next pass walks and why, or None when none is due yet."""
        now = time.monotonic()
        every = self.poll if self.polling else self.reconcile
        if now - last_full >= every:
            self._scopes()                          # a full pass covers what was marked
            return None, "poll" if self.polling else "reconcile"
        with self.lock:
            if self.retry and now >= self.retry_at:
                self.marked |= self.retry
                self.retry = set()
                self.last_event = min(self.last_event, now - QUIET)
            quiet = now - self.last_event >= min(QUIET, self.settle)
            waiting = bool(self.marked)
        if waiting and quiet:
            scopes = self._scopes()
            return (scopes, "events") if scopes != [] else None
        return None

    def _mounted(self) -> bool:
        """False while a mount that was at or under a root at the start is gone: passes
        wait (its files are not deleted, they are away); when it is back, events restart
        and a full pass follows."""
        now = mounts_at_or_under(self.roots)
        gone = sorted(self.mounts - now)
        self.mounts |= now                          # a drive mounted meanwhile counts too
        if gone and not self.paused:
            self.paused = True
            log.warning("%s was unmounted: the watch waits until it is back; nothing is "
                        "removed from the index", ", ".join(gone))
            self.on_pass({"event": "paused", "at": time.time(), "unmounted": gone})
        elif not gone and self.paused:
            self.paused = False
            log.warning("everything watched is mounted again; scanning it")
            self._stop_observer()
            self.polling, self.poll = self.forced is not None, self.forced
            self.observer = self._observe()
            with self.lock:
                self.marked |= set(self.roots)
            self.on_pass({"event": "resumed", "at": time.time()})
        return not self.paused

    def _events_lost(self) -> None:
        """An event thread that died (the watch limit reached for a new folder, say):
        polling from now on, said once, and a full pass at once."""
        if self.observer is None:
            return
        # watchdog 7 logs "Unable to watch" for a folder past the limit and goes on without
        # it (_WatchLimitSeen); watchdog 6 reads through a buffer thread, which ends when
        # adding a watch fails or the watched folder goes, its emitter thread staying alive
        threads = [t for e in self.observer.emitters for t in (e, getattr(e, "_inotify", None))
                   if isinstance(t, threading.Thread)]
        if not self.limit_seen.seen and all(t.is_alive() for t in threads):
            return
        self._stop_observer()
        self.polling, self.poll = True, self.poll or POLL
        log.warning("watching by polling every %g s: change events stopped (the inotify "
                    "watch limit reached?)", self.poll)
        with self.lock:
            self.marked |= set(self.roots)

    def _stop_observer(self) -> None:
        logging.getLogger("watchdog").removeHandler(self.limit_seen)
        if self.observer is not None:
            self.observer.stop()
            self.observer.join(timeout=5)
            self.observer = None

    def run(self, hold: bool = True) -> None:
        """Hold the index (unless the caller does: ``serve --watch``) and keep it current
        until stopped."""
        from ..pipeline import Interrupted

        with _stopped_by_signals(self.stop, self.wake), \
                (self.api.hold() if hold else nullcontext()):
            self.mounts, self.paused = mounts_at_or_under(self.roots), False
            self.observer = self._observe()
            self.on_pass({"event": "watching", "roots": self.roots, "polling": self.polling,
                          "poll": self.poll, "settle": self.settle, "held": str(self.db)})
            try:
                self.run_pass(None, "start")
                last_full = time.monotonic()
                while not self.stop.is_set():
                    mounted = self._mounted()
                    if mounted:
                        self._events_lost()
                    due = self._due(last_full) if mounted else None
                    if due is None:
                        self.wake.wait(0.25 if self.marked or self.retry else 1.0)
                        self.wake.clear()
                        continue
                    scopes, why = due
                    self.run_pass(scopes, why)
                    if scopes is None:
                        last_full = time.monotonic()
            except Interrupted:
                pass                                 # committed: a clean stop
            finally:
                self._stop_observer()
        self.on_pass({"event": "stopped", "at": time.time()})


@contextmanager
def _stopped_by_signals(stop: threading.Event, wake: threading.Event) -> Iterator[None]:
    """SIGINT/SIGTERM stop the watch (a pass under way commits what it did first)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame) -> None:
        stop.set()
        wake.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
