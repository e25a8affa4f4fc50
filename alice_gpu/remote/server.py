"""Remote, the server: the process that holds an index answers for it on its socket.

:class:`Holder` listens while the index is held (an ``index`` run now; ``serve``
and ``watch`` later) and hands each request to the API's handler on a thread of
its own, at most ``parallel`` at a time, so a burst of clients cannot starve the
writer. A peer of another uid is refused before it can send anything; a client
that breaks the protocol, or dies mid-request, costs only its own connection.
The socket and ``holder.json`` left by a killed holder are simply replaced: the
DuckDB write lock, taken before a holder starts, says that nobody else holds
the index.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

from . import codec, wire

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 30.0     # seconds a connected client has to send its request

# handle(op, args, emit) -> an answer, or an iterator of chunks (an answer that streams);
# emit(frame) sends a progress frame while the answer is being made
Handler = Callable[[str, dict, Callable[[dict], None]], Any]


REQUEST_THREAD = "alice-holder-request"


class _RequestLogs(logging.Handler):
    """What a request logs goes to its client (a direct run would have printed it there),
    not to the holder's own output."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.clients: dict[int, socket.socket] = {}

    def emit(self, record: logging.LogRecord) -> None:
        conn = self.clients.get(record.thread or 0)
        if conn is None:
            return
        try:
            wire.send(conn, {"type": "log", "name": record.name, "level": record.levelno,
                             "message": record.getMessage()})
        except (wire.WireError, OSError):
            pass

    @staticmethod
    def not_a_request(record: logging.LogRecord) -> bool:
        return not (record.threadName or "").startswith(REQUEST_THREAD)


class Stream:
    """An answer that goes out in chunks (``find --json``), then ``result``."""

    def __init__(self, chunks: Iterator[Any]):
        self.chunks = chunks


class Holder:
    """Serves the requests of other processes for the index in ``folder``."""

    def __init__(self, folder: str | os.PathLike[str], command: str, handle: Handler,
                 ops: frozenset[str], parallel: int = 2):
        self.folder, self.command = Path(folder), command
        self.handle, self.ops = handle, ops
        self.slots = threading.Semaphore(parallel)
        self.active = 0
        self.idle = threading.Condition()
        self.logs = _RequestLogs()
        self.fallback: logging.Handler | None = None
        self.sock: socket.socket | None = None
        self.thread: threading.Thread | None = None
        self.info: dict[str, Any] = {}

    def start(self) -> "Holder":
        """Listen, or (a folder that takes no socket, a full disk) say why not and go on
        holding the index without answering: the run matters more."""
        try:
            self._listen()
        except OSError as exc:
            log.warning("other alice-gpu commands cannot ask this process while it holds "
                        "the index (%s); they wait for it to finish", exc.strerror or exc)
            if self.sock is not None:
                self.sock.close()
                self.sock = None
            self._remove_files()
            return self
        self._quiet_request_threads()
        self.thread = threading.Thread(target=self._accept, name="alice-holder", daemon=True)
        self.thread.start()
        return self

    def _listen(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with wire.short_path(self.folder) as path:
            try:
                os.unlink(path)                 # a killed holder's: we hold the lock now
            except FileNotFoundError:
                pass
            sock.bind(path)
            os.chmod(path, 0o600)               # before listen(): nobody else connects
        sock.listen(16)
        self.sock = sock
        self.info = wire.write_holder(self.folder, self.command)

    def _quiet_request_threads(self) -> None:
        """Requests' log records go to their clients only. Where nothing was configured
        (Python's last-resort handler), an equivalent one prints this process's own."""
        root = logging.getLogger()
        if not root.handlers:
            self.fallback = logging.StreamHandler()
            self.fallback.setLevel(logging.WARNING)
            root.addHandler(self.fallback)
        for handler in root.handlers:
            handler.addFilter(_RequestLogs.not_a_request)
        root.addHandler(self.logs)

    def close(self, wait: float = 30.0) -> None:
        """Stop listening; answers in flight get ``wait`` seconds to finish (they read
        through the store, which closes next)."""
        sock, self.sock = self.sock, None
        if sock is None:
            return
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()
        self._remove_files()
        if self.thread is not None:
            self.thread.join(timeout=5)
        with self.idle:
            self.idle.wait_for(lambda: self.active == 0, timeout=wait)
        root = logging.getLogger()
        root.removeHandler(self.logs)
        if self.fallback is not None:
            root.removeHandler(self.fallback)
        for handler in root.handlers:
            handler.removeFilter(_RequestLogs.not_a_request)

    def _remove_files(self) -> None:
        for name in (wire.SOCKET_FILE, wire.HOLDER_FILE):
            try:
                os.unlink(self.folder / name)
            except OSError:
                pass

    def __enter__(self) -> "Holder":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while self.sock is not None:
            try:
                conn, _ = self.sock.accept()
            except OSError:                     # closed: the holder is done
                return
            threading.Thread(target=self._serve, args=(conn,), name=REQUEST_THREAD,
                             daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with self.idle:
            self.active += 1
        try:
            self._serve_one(conn)
        finally:
            with self.idle:
                self.active -= 1
                self.idle.notify_all()

    def _serve_one(self, conn: socket.socket) -> None:
        with conn:
            try:
                if wire.peer_uid(conn) != os.getuid():
                    # its request is read (and dropped) first: closing on a client still
                    # sending would break its pipe before it reads why it was refused
                    conn.settimeout(REQUEST_TIMEOUT)
                    try:
                        wire.receive(conn, wire.MAX_REQUEST)
                    except (wire.WireError, OSError):
                        pass
                    wire.send(conn, {"type": "error", "kind": "StoreError", "message":
                                     "refused: the index belongs to another user"})
                    return
                conn.settimeout(REQUEST_TIMEOUT)
                op, args = wire.check_request(wire.receive(conn, wire.MAX_REQUEST), self.ops)
                args = codec.decode(args)
                conn.settimeout(None)
                with self.slots:
                    self.logs.clients[threading.get_ident()] = conn
                    try:
                        self._answer(conn, op, args)
                    finally:
                        self.logs.clients.pop(threading.get_ident(), None)
            except (wire.WireError, OSError) as exc:   # a broken or vanished client
                log.debug("a client's request ended: %s", exc)

    def _answer(self, conn: socket.socket, op: str, args: dict) -> None:
        """The handler's answer, streamed or whole; its error as an error frame. A failure
        to send (the client went away) ends the request, nothing more."""
        def emit(frame: dict) -> None:
            wire.send(conn, {"type": "progress", **frame})

        try:
            answer = self.handle(op, args, emit)
            if isinstance(answer, Stream):
                for chunk in answer.chunks:
                    wire.send(conn, {"type": "chunk", "v": codec.encode(chunk)})
                answer = None
            frame = {"type": "result", "v": codec.encode(answer)}
        except wire.WireError:
            raise
        except Exception as exc:  # noqa: BLE001 - the client gets it; the holder goes on
            log.debug("request %s failed: %r", op, exc)
            frame = codec.encode_error(exc)
        wire.send(conn, frame)
