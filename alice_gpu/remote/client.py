"""Remote, the client: ask the process that holds an index, and get what a direct run gets.

:func:`call` sends one request and returns the decoded answer (progress frames go
to ``progress``); :func:`stream` yields an answer's chunks as they come. The
holder's errors are raised as the same alice-gpu errors a direct run raises. A
holder that goes away mid-answer (killed) is seen at once, its socket closing,
and is one line: :class:`HolderGone`.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import StoreError
from . import codec, wire


class NoHolder(Exception):
    """Nobody answers on the index's socket (none there, or its holder is gone)."""


class HolderGone(StoreError):
    """The holder went away while answering (exit 2: run the command again)."""


def _connect(folder: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with wire.short_path(folder) as path:
            sock.connect(path)
    except OSError:
        sock.close()
        raise NoHolder(str(folder)) from None
    return sock


def _frames(folder: Path, op: str, args: dict[str, Any]) -> Iterator[dict[str, Any]]:
    holder = wire.describe(wire.read_holder(folder))
    sock = _connect(folder)
    with sock:
        try:
            wire.send(sock, wire.request(op, codec.encode(args)), wire.MAX_REQUEST)
            while True:
                frame = wire.receive(sock)
                yield frame
                if frame.get("type") in ("result", "error"):
                    return
        except (wire.WireError, OSError) as exc:
            raise HolderGone(f"{holder}, which holds the index, stopped answering "
                             f"({exc}); run the command again") from None


def call(folder: str | os.PathLike[str], op: str, args: dict[str, Any],
         progress: Callable[[dict[str, Any]], None] | None = None) -> Any:
    """The answer to one request (NoHolder when nobody answers)."""
    for frame in _frames(Path(folder), op, args):
        kind = frame.get("type")
        if kind == "log":
            _log(frame)
        elif kind == "progress" and progress is not None:
            progress(frame)
        elif kind == "result":
            return codec.decode(frame.get("v"))
        elif kind == "error":
            raise codec.decode_error(frame)
    return None


def stream(folder: str | os.PathLike[str], op: str, args: dict[str, Any]) -> Iterator[Any]:
    """The chunks of an answer that streams, as they arrive."""
    frames = _frames(Path(folder), op, args)
    first = next(frames)               # connects now: NoHolder is raised to the caller here
    for frame in _chain(first, frames):
        kind = frame.get("type")
        if kind == "log":
            _log(frame)
        elif kind == "chunk":
            yield codec.decode(frame.get("v"))
        elif kind == "error":
            raise codec.decode_error(frame)
        elif kind == "result":
            return


def _log(frame: dict[str, Any]) -> None:
    """What the holder logged while answering, logged here as a direct run would."""
    logging.getLogger(str(frame.get("name", "alice_gpu"))).log(
        int(frame.get("level", logging.WARNING)), "%s", frame.get("message", ""))


def _chain(first: dict[str, Any], rest: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    yield first
    yield from rest
