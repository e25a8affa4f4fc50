"""Remote, the codec: the API's typed answers as JSON and back, exactly.

A dataclass travels as ``{"$t": NAME, "v": {field: value}}`` and comes back as
the same class, by a fixed list of names (nothing else is ever constructed); a
datetime, a date, a tuple and a numpy array travel tagged the same way, numpy
scalars as plain numbers. A file name that is not UTF-8 keeps its surrogate
escapes (JSON's ``\\udcXX``). Errors travel by class name and come back as the
same alice-gpu error, so a client exits with the code a direct run would.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import importlib
from typing import Any

import numpy as np

from .. import errors

# the classes an answer (or an argument) may hold, imported on first use
CLASSES = {
    "SimilarResult": "alice_gpu.search.queries", "Match": "alice_gpu.search.queries",
    "DuplicatesResult": "alice_gpu.search.queries",
    "DuplicateGroup": "alice_gpu.search.queries", "GroupMember": "alice_gpu.search.queries",
    "WeakestPair": "alice_gpu.search.queries",
    "MoveReport": "alice_gpu.actions.moves", "PlannedMove": "alice_gpu.actions.moves",
    "IndexSummary": "alice_gpu.pipeline.run", "FailedFile": "alice_gpu.pipeline.run",
    "Filters": "alice_gpu.store.filters", "OrganizeReport": "alice_gpu.actions.organize",
}
ERRORS = {name: getattr(errors, name) for name in
          ("ConfigError", "DeviceError", "ModelError", "QueryError", "QueryMemoryError",
           "StoreError", "StoreLockedError", "StorageError")}


def encode(value: Any) -> Any:
    """``value`` as JSON-ready data (see the module's docstring)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return {"$t": "bytes", "v": base64.b64encode(value).decode("ascii")}
    if isinstance(value, (list, np.ndarray)) and not (
            isinstance(value, np.ndarray) and value.dtype != object):
        return [encode(v) for v in value]
    if isinstance(value, np.ndarray):
        return {"$t": "ndarray", "dtype": value.dtype.str, "shape": list(value.shape),
                "v": base64.b64encode(np.ascontiguousarray(value).tobytes()).decode("ascii")}
    if isinstance(value, tuple):
        return {"$t": "tuple", "v": [encode(v) for v in value]}
    if isinstance(value, dict):
        return {"$t": "dict", "v": [[encode(k), encode(v)] for k, v in value.items()]} \
            if any(not isinstance(k, str) for k in value) else \
            {k: encode(v) for k, v in value.items()}
    if isinstance(value, dt.datetime):
        return {"$t": "datetime", "v": value.isoformat()}
    if isinstance(value, dt.date):
        return {"$t": "date", "v": value.isoformat()}
    name = type(value).__name__
    if dataclasses.is_dataclass(value) and name in CLASSES:
        return {"$t": name, "v": {f.name: encode(getattr(value, f.name))
                                  for f in dataclasses.fields(value)}}
    raise TypeError(f"cannot send a {name} to another process")


def decode(value: Any) -> Any:
    """The inverse of :func:`encode`."""
    if isinstance(value, list):
        return [decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    tag = value.get("$t")
    if tag is None:
        return {k: decode(v) for k, v in value.items()}
    body = value.get("v")
    if tag == "tuple":
        return tuple(decode(v) for v in body)
    if tag == "dict":
        return {decode(k): decode(v) for k, v in body}
    if tag == "bytes":
        return base64.b64decode(body)
    if tag == "datetime":
        return dt.datetime.fromisoformat(body)
    if tag == "date":
        return dt.date.fromisoformat(body)
    if tag == "ndarray":
        return np.frombuffer(base64.b64decode(body), np.dtype(value["dtype"])).reshape(
            value["shape"]).copy()
    if tag in CLASSES:
        cls = getattr(importlib.import_module(CLASSES[tag]), tag)
        return cls(**{k: decode(v) for k, v in body.items()})
    raise ValueError(f"unknown type {tag!r} in an answer")


class NeedsFeature(errors.QueryError):
    """The query image is not in the index: the client makes its features (as the
    index made its rows: ``model``, and whether the index has embeddings) and asks again."""

    def __init__(self, model: str, embedded: bool, space: str = "fp32"):
        super().__init__(f"features of the query image are needed ({model})")
        self.model, self.embedded, self.space = model, embedded, space


def encode_error(exc: BaseException) -> dict[str, Any]:
    kind = type(exc).__name__
    if kind not in ERRORS:                 # a subclass (TemplateError) travels as its base
        kind = next((n for n, c in ERRORS.items() if isinstance(exc, c)), "unexpected")
    doc = {"type": "error", "kind": kind, "class": type(exc).__name__, "message": str(exc)}
    if isinstance(exc, NeedsFeature):
        doc.update(kind="NeedsFeature", model=exc.model, embedded=exc.embedded, space=exc.space)
    return doc


def decode_error(doc: dict[str, Any]) -> BaseException:
    """The error the holder met, as the class a direct run would have raised."""
    if doc.get("kind") == "NeedsFeature":
        return NeedsFeature(str(doc.get("model")), bool(doc.get("embedded")),
                            str(doc.get("space") or "fp32"))
    cls = ERRORS.get(doc.get("kind", ""))
    message = str(doc.get("message", ""))
    if cls is not None:
        return cls(message)
    return RuntimeError(f"{doc.get('class', 'error')} in the process holding the index: "
                        f"{message}")
