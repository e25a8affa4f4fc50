"""API, routing: a call made while another process holds the index goes to that process.

Every public :class:`~.index.AliceIndex` call is tried directly first. When the
index is locked by another process, the call is sent to it over the index's
socket (:mod:`alice_gpu.remote.client`) with this process's configuration, its
paths made absolute (the holder's working folder is not ours), and answered as
a direct call would be, errors and progress events included. A query image that
is not in the index is featurised here, as the index made its rows, and its
features sent: the holder never loads a model for a client. When the lock is
held by a process that does not answer (a short write: a tag, an undo), the
call waits up to ``HOLDER_WAIT`` seconds for the lock or for a holder to
answer, then says who holds the index (exit 3).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator

from ..errors import StoreLockedError

if TYPE_CHECKING:
    from ..remote.codec import NeedsFeature
    from .index import AliceIndex

# the remote modules are imported when an index is found held, not by every command

HOLDER_WAIT = 10.0        # seconds to wait for a lock held by a process that does not answer
_GENERATOR = 0x20         # CO_GENERATOR
_PATHS = ("image", "path", "paths", "move_to", "journal", "ground_truth")


def routed(method: Callable[..., Any]) -> Callable[..., Any]:
    """``method`` of AliceIndex, answered by the index's holder when it is held."""
    op = method.__name__

    if method.__code__.co_flags & _GENERATOR:     # without importing inspect (~10 ms)
        @functools.wraps(method)
        def stream(self: "AliceIndex", *args: Any, **kwargs: Any) -> Iterator[Any]:
            if self._held is not None:
                yield from method(self, *args, **kwargs)
                return
            yield from _first_of(self, lambda: method(self, *args, **kwargs),
                                 lambda: _client().stream(self.folder, op, _request(
                                     self, method, args, kwargs)[0]))
        return stream

    @functools.wraps(method)
    def call(self: "AliceIndex", *args: Any, **kwargs: Any) -> Any:
        if self._held is not None:
            return method(self, *args, **kwargs)
        wait = _Wait(self.folder)
        while True:
            try:
                return method(self, *args, **kwargs)
            except StoreLockedError:
                try:
                    return _remote(self, op, method, args, kwargs)
                except _client().NoHolder:
                    wait.tick()
    return call


def _first_of(api: "AliceIndex", direct: Callable[[], Iterator[Any]],
              remote: Callable[[], Iterator[Any]]) -> Iterator[Any]:
    """A streamed answer: directly, or from the holder (its first chunk decides)."""
    wait = _Wait(api.folder)
    while True:
        chunks = direct()
        try:
            first = next(chunks, _END)
        except StoreLockedError:
            chunks = remote()
            try:
                first = next(chunks, _END)
            except _client().NoHolder:
                wait.tick()
                continue
        if first is not _END:
            yield first
            yield from chunks
        return


_END = object()


def _client() -> Any:
    from ..remote import client

    return client


class _Wait:
    """Polls for a lock held by a process that does not answer, then names it."""

    def __init__(self, folder: Any):
        self.folder, self.end = folder, None

    def tick(self) -> None:
        now = time.monotonic()
        self.end = self.end or now + HOLDER_WAIT
        if now > self.end:
            from ..remote import wire

            raise StoreLockedError(
                f"the index at {self.folder} is in use by "
                f"{wire.describe(wire.read_holder(self.folder))}; try again when it has "
                f"finished")
        time.sleep(0.05)


def _request(api: "AliceIndex", method: Callable[..., Any], args: tuple, kwargs: dict
             ) -> tuple[dict[str, Any], Callable[..., Any] | None]:
    """The request for a call: its arguments by name, paths absolute, this process's
    configuration; and the call's progress callback, which stays here."""
    import inspect

    bound = inspect.signature(method).bind(api, *args, **kwargs)
    params = {k: v for k, v in bound.arguments.items() if k != "self"}
    progress = params.pop("progress", None)
    if params.pop("ray_engine", None) is not None:
        raise StoreLockedError(f"the index at {api.folder} is held by another process; "
                               f"a run on Ray waits for it to finish")
    for name in _PATHS:
        if name in params and params[name] is not None:
            params[name] = _absolute(params[name])
    filters = params.get("filters")
    if filters is not None and filters.folder:
        params["filters"] = dataclasses.replace(filters, folder=_absolute(filters.folder))
    return ({"folder": os.path.abspath(api.folder), "config": dataclasses.asdict(api.config),
             "args": params}, progress)


def _absolute(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_absolute(v) for v in value]
    return os.path.abspath(os.path.expanduser(os.fspath(value)))


def _remote(api: "AliceIndex", op: str, method: Callable[..., Any], args: tuple,
            kwargs: dict) -> Any:
    request, progress = _request(api, method, args, kwargs)
    forward = None
    if progress is not None:
        from ..pipeline import ProgressEvent

        fields = {f.name for f in dataclasses.fields(ProgressEvent)}

        def forward(frame: dict) -> None:
            progress(ProgressEvent(**{k: v for k, v in frame.items() if k in fields}))
    from ..remote.codec import NeedsFeature

    client = _client()
    try:
        answer = client.call(api.folder, op, request, progress=forward)
    except NeedsFeature as need:                 # similar of an image outside the index
        request["outside"] = _outside(api, request["args"], need)
        answer = client.call(api.folder, op, request, progress=forward)
    if op == "stats":
        answer["db"] = str(api.folder)           # as this process names the index
    return answer


def _outside(api: "AliceIndex", params: dict, need: "NeedsFeature") -> dict[str, Any]:
    """The query image's row, made here the way the index made its rows."""
    from ..discover import normalize_path
    from ..pipeline.stages import featurise_outside

    cfg = api.config.with_overrides(device=params.get("device"))
    by = params.get("by", "embedding")
    row = featurise_outside(cfg, need.model, need.embedded, by == "embedding",
                            bool(params.get("isolated")), need.space)(
        normalize_path(params["image"]))
    return {"status": row.status, "error": row.error, "hashes": row.hashes,
            "embedding": row.embedding}
