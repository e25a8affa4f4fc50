"""The store: one index folder, DuckDB the source of truth for assets, hashes, embeddings, runs.

Ids are stable per path: a changed file keeps its id, which is also its id in
the FAISS index. Reads and writes live in :mod:`.reads` and :mod:`.writes`,
the schema and its migrations in :mod:`.schema`.
"""

from __future__ import annotations

import copy
import os
import threading
from pathlib import Path
from typing import Any

import duckdb

from ..errors import StoreError, StoreLockedError, command_line
from .catalog import Catalog
from .frames import Frames
from .reads import Reads
from .schema import (DB_FILE, check_manifest, check_schema, init_schema, manifest_space,
                     migrate, write_manifest)
from .writes import Writes


class Store(Reads, Catalog, Writes, Frames):
    """One index folder: ``alice.duckdb`` + ``manifest.json`` (+ the FAISS files of vectors)."""

    def __init__(self, folder: str | os.PathLike[str], *, model: str, dim: int,
                 read_only: bool = False, memory_limit_mb: int | None = None):
        self.folder = Path(folder)
        self.model = model
        self.dim = dim
        self.read_only = read_only
        self.con: duckdb.DuckDBPyConnection | None = None
        self.gate = threading.RLock()      # writes take turns (Writes: @_gated)
        self._views: duckdb.DuckDBPyConnection | None = None
        self._views_lock = threading.Lock()
        db_path = self.folder / DB_FILE
        if read_only:
            if not db_path.exists():
                raise StoreError(f"no index at {self.folder}: build one with "
                                 f"{command_line('index', 'FOLDER', '--db', self.folder)}, "
                                 f"or point --db at an existing index")
        else:
            self.folder.mkdir(parents=True, exist_ok=True)
        self.space = manifest_space(check_manifest(self.folder, model, dim))
        self.con = _connect(db_path, read_only, self.folder)
        try:
            if memory_limit_mb:
                # DuckDB caches what it writes; bound it so memory does not grow with the index
                self.con.execute(f"SET memory_limit = '{int(memory_limit_mb)}MB'")
            if not read_only:
                self.con = migrate(self.con, self.folder, dim)
                init_schema(self.con, self.folder, model, dim, self.space)
            check_schema(self.con, self.folder, read_only)
        except BaseException:
            self.close()          # a refused index is not left open (and locked) behind
            raise

    def claim_space(self, space: str) -> None:
        """Vectors of ``space`` are about to be written: an index that holds vectors of
        another space refuses them (one line) rather than mix two spaces; an index
        without vectors takes the new space."""
        if space == self.space:
            return
        if self.embedding_count() > 0:
            keep = "features.precision: int8" if self.space == "int8" else \
                "features.precision: fp32 (or auto)"
            raise StoreError(
                f"the index at {self.folder} holds {self.space} embeddings and this run "
                f"would add {space} ones; spaces are never mixed: run with {keep}, or "
                f"index into another --db")
        write_manifest(self.folder, self.model, self.dim, space)
        self.space = space

    def serve_views(self) -> None:
        """Make :meth:`view` usable from other threads (call it on the thread that owns
        ``con``, before it is handed to another): views are cursors of this one."""
        self._views = self.con.cursor()

    def view(self) -> "Store":
        """Another connection to the same open index, for one request on another thread:
        it sees what is committed, and its writes take turns with ours (``gate``)."""
        if self._views is None:
            raise RuntimeError("Store.serve_views() comes before Store.view()")
        other = copy.copy(self)
        with self._views_lock:
            other.con = self._views.cursor()
        other._views = None
        return other

    def close(self) -> None:
        if self._views is not None:
            self._views.close()
            self._views = None
        if self.con is not None:
            self.con.close()
            self.con = None

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _connect(db_path: Path, read_only: bool, folder: Path) -> duckdb.DuckDBPyConnection:
    """Open the DuckDB file; a lock held by another process is StoreLockedError (exit 3)."""
    try:
        return duckdb.connect(str(db_path), read_only=read_only)
    except duckdb.IOException as exc:
        if "lock" in str(exc).lower():
            raise StoreLockedError(f"the index at {folder} is in use by another "
                                   f"alice-gpu process; try again when it has finished") from None
        raise StoreError(f"cannot open {db_path}: {str(exc).splitlines()[0]}") from None
    except duckdb.Error as exc:
        raise StoreError(f"{db_path} is not a usable alice-gpu index: "
                         f"{str(exc).splitlines()[0]}") from None
