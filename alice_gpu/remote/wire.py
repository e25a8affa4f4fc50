"""Remote, the wire: how the process that holds an index and its clients talk.

A Unix socket in the index folder (``alice.sock``, mode 0600; the peer's uid is
checked with ``SO_PEERCRED`` as well), and frames of JSON: a 4-byte big-endian
length, then UTF-8 JSON, never pickle. A request is ``{"alice-gpu": VERSION,
"op": NAME, "args": {...}}``; answers are ``progress`` frames, then one
``result`` or ``error`` frame (or ``chunk`` frames, then ``result``, for answers
that stream). Frames are size-capped both ways. ``holder.json`` beside the
socket says who holds the index (pid, command, since), for the one-line refusal.

AF_UNIX paths are limited to about 107 bytes; index folders can be deeper, so
both ends reach the socket through ``/proc/self/fd/N/alice.sock``, N an open
descriptor of the folder (Linux).
"""

from __future__ import annotations

import json
import os
import socket
import struct
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

VERSION = 1
SOCKET_FILE = "alice.sock"
HOLDER_FILE = "holder.json"
MAX_REQUEST = 1 << 20           # a request is a few hundred bytes; 1 MiB leaves room for ids
MAX_FRAME = 256 << 20           # an answer frame (find --json streams in smaller chunks)
_HEAD = struct.Struct(">I")


class WireError(Exception):
    """The other end broke the protocol, went away, or sent too much."""


@contextmanager
def short_path(folder: str | os.PathLike[str]) -> Iterator[str]:
    """The socket's path through a descriptor of its folder: short, whatever the folder."""
    fd = os.open(os.fspath(folder), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{SOCKET_FILE}"
    finally:
        os.close(fd)


def peer_uid(conn: socket.socket) -> int:
    """The uid of the process at the other end of a Unix socket (SO_PEERCRED)."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


def send(conn: socket.socket, doc: dict[str, Any], limit: int = MAX_FRAME) -> None:
    body = json.dumps(doc, ensure_ascii=True, separators=(",", ":")).encode("ascii")
    if len(body) > limit:
        raise WireError(f"an answer of {len(body):,} bytes is over the {limit:,}-byte limit")
    conn.sendall(_HEAD.pack(len(body)) + body)


def receive(conn: socket.socket, limit: int = MAX_FRAME) -> dict[str, Any]:
    """One frame; WireError when the peer closed the connection or broke the rules."""
    (size,) = _HEAD.unpack(_exactly(conn, _HEAD.size))
    if size > limit:
        raise WireError(f"a frame of {size:,} bytes is over the {limit:,}-byte limit")
    try:
        doc = json.loads(_exactly(conn, size))
    except ValueError:
        raise WireError("a frame that is not JSON") from None
    if not isinstance(doc, dict):
        raise WireError("a frame that is not a JSON object")
    return doc


def _exactly(conn: socket.socket, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        part = conn.recv(min(n - got, 1 << 20))
        if not part:
            raise WireError("the other end went away")
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def request(op: str, args: dict[str, Any]) -> dict[str, Any]:
    return {"alice-gpu": VERSION, "op": op, "args": args}


def check_request(doc: dict[str, Any], ops: frozenset[str]) -> tuple[str, dict[str, Any]]:
    """The operation and its arguments of a well-formed request, else WireError."""
    if doc.get("alice-gpu") != VERSION:
        raise WireError(f"protocol version {doc.get('alice-gpu')!r} is not {VERSION}")
    op, args = doc.get("op"), doc.get("args")
    if op not in ops or not isinstance(args, dict):
        raise WireError(f"unknown request {op!r}")
    return op, args


def write_holder(folder: Path, command: str) -> dict[str, Any]:
    """``holder.json``: who holds the index, written atomically."""
    info = {"pid": os.getpid(), "uid": os.getuid(), "command": command,
            "since": time.strftime("%Y-%m-%d %H:%M:%S"), "alice-gpu": VERSION}
    tmp = folder / f".{HOLDER_FILE}.{os.getpid()}"
    tmp.write_text(json.dumps(info))
    os.replace(tmp, folder / HOLDER_FILE)
    return info


def read_holder(folder: Path) -> dict[str, Any] | None:
    try:
        info = json.loads((folder / HOLDER_FILE).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def describe(info: dict[str, Any] | None) -> str:
    """The holder in words: ``alice-gpu index ~/media (pid 1234) since 2026-12-06 10:00``."""
    if not info:
        return "another alice-gpu process"
    return f"{info.get('command', 'alice-gpu')} (pid {info.get('pid')}) since {info.get('since')}"
