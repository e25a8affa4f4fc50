"""Writes to the store: bulk upserts in transactions, removals, and the runs table.

A batch is written with bulk Arrow inserts in one transaction; a batch that
fails is rolled back and retried row by row, so one bad row cannot sink its
neighbours. A full disk or an I/O error is not retried: it rolls back and
raises :class:`~alice_gpu.errors.StorageError` (exit 4), earlier data intact.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import time
from datetime import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import duckdb
import numpy as np

from ..config import HASH_NAMES as HASHES
from ..errors import StorageError, is_storage_failure
from ..records import ORIENT_KEYS, STATUS_OK, AssetRecord
from . import codec
from .paths import registered, to_db
from .schema import ASSET_COLUMNS, META_COLUMNS

if TYPE_CHECKING:
    import pyarrow as pa

    from .filters import Filters

log = logging.getLogger(__name__)


def _gated(method):
    """A write runs alone: in the process that holds the index, a client's queued write
    (a tag) and the run's own batches take turns through ``Store.gate``."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with self.gate:
            return method(self, *args, **kwargs)
    return run

# the vector index is derived: a change to the vectors makes the saved one stale
_BUMP_VECTORS = ("UPDATE meta SET value = CAST(CAST(value AS BIGINT) + 1 AS VARCHAR) "
                 "WHERE key = 'vectors_version'")


def _bump(key: str) -> str:
    return (f"INSERT INTO meta VALUES ('{key}', '1') ON CONFLICT (key) DO UPDATE "
            f"SET value = CAST(CAST(meta.value AS BIGINT) + 1 AS VARCHAR)")


# a write that can change which files are duplicates (rows, features, vectors) moves
# 'revision'; one that changes only where files are or what a person decided moves
# 'layout', so stored groups are brought up to date without being computed again
_BUMP_REVISION = _bump("revision")
_BUMP_LAYOUT = _bump("layout")


@dataclass(frozen=True)
class WriteResult:
    written: int
    failed_rows: list[tuple[str, str]]     # (path, reason) rows the DB refused
    embedded_ids: np.ndarray               # ids whose embedding was (re)written
    embeddings: np.ndarray                 # (n, dim) float32, aligned with embedded_ids
    touched_ids: np.ndarray                # every id whose old vector is now stale


class Writes:
    """The write side of :class:`~alice_gpu.store.Store` (a mixin over its connection)."""

    con: duckdb.DuckDBPyConnection
    folder: Path
    model: str
    dim: int

    @_gated
    def write_batch(self, records: Sequence[AssetRecord], run_id: int | None = None, *,
                    insert_size: int = 1000, bulk: bool = True) -> WriteResult:
        """Upsert records in one transaction; on failure retry row by row, isolating bad rows.

        ``bulk`` inserts Arrow slices of ``insert_size`` rows per statement; without it
        every row is its own INSERT (the seed's non-batched mode, kept for comparison).
        """
        try:
            return self._write(records, run_id, insert_size, bulk)
        except duckdb.Error as exc:
            self._rollback()
            if is_storage_failure(exc):
                raise StorageError(f"could not write the index at {self.folder} "
                                   f"({str(exc).splitlines()[0][:200]}); the open transaction was "
                                   f"rolled back and earlier data is intact: free some space and "
                                   f"run the same command again") from None
            if len(records) == 1:
                rec = records[0]
                log.warning("database refused %s: %s", rec.path, exc)
                return WriteResult(0, [(rec.path, f"store: {str(exc).splitlines()[0][:200]}")],
                                   np.zeros(0, np.int64), np.zeros((0, self.dim), np.float32),
                                   np.zeros(0, np.int64))
            log.warning("batch write failed (%s); retrying %d rows one by one", exc, len(records))
        parts = [self.write_batch([r], run_id, insert_size=1, bulk=bulk) for r in records]
        return WriteResult(
            written=sum(p.written for p in parts),
            failed_rows=[f for p in parts for f in p.failed_rows],
            embedded_ids=np.concatenate([p.embedded_ids for p in parts]),
            embeddings=np.concatenate([p.embeddings for p in parts]),
            touched_ids=np.concatenate([p.touched_ids for p in parts]),
        )

    def _rollback(self) -> None:
        try:
            self.con.execute("ROLLBACK")
        except duckdb.Error:
            pass

    def _insert(self, table: str, columns: Sequence[str], data: pa.Table, insert_size: int,
                bulk: bool) -> None:
        cols = ", ".join(columns)
        if not bulk:
            marks = ", ".join("?" * len(columns))
            for row in data.to_pylist():
                self.con.execute(f"INSERT INTO {table} ({cols}) VALUES ({marks})",
                                 [row[c] for c in columns])
            return
        for start in range(0, data.num_rows, insert_size):
            self.con.register("_chunk", data.slice(start, insert_size))
            try:
                self.con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM _chunk")
            finally:
                self.con.unregister("_chunk")

    def _write(self, records: Sequence[AssetRecord], run_id: int | None, insert_size: int,
               bulk: bool) -> WriteResult:
        import pyarrow as pa   # on first use: not on the path to the first decode
        ids = np.array([r.id for r in records], dtype=np.int64)
        now = time.time()
        assets = pa.table({
            "id": pa.array(ids, pa.int64()),
            "path": pa.array([to_db(r.path) for r in records], pa.string()),
            "size": pa.array([r.size for r in records], pa.int64()),
            "mtime_ns": pa.array([r.mtime_ns for r in records], pa.int64()),
            "width": pa.array([r.width for r in records], pa.int32()),
            "height": pa.array([r.height for r in records], pa.int32()),
            "format": pa.array([r.format for r in records], pa.string()),
            "status": pa.array([r.status for r in records], pa.string()),
            "error": pa.array([r.error for r in records], pa.string()),
            **{h: pa.array([r.hashes.get(h) for r in records], pa.uint64()) for h in HASHES},
            "indexed_at": pa.array([int(now * 1e6)] * len(records), pa.timestamp("us")),
            "run_id": pa.array([run_id] * len(records), pa.int64()),
            "content_hash": pa.array([r.content_hash for r in records], pa.string()),
            "phash_orient": pa.array([_oriented(r.hashes) for r in records],
                                     pa.list_(pa.uint64(), len(ORIENT_KEYS))),
            **_meta_columns(records),
        })
        emb_rows = [r for r in records if r.embedding is not None and r.status == STATUS_OK]
        emb_ids = np.array([r.id for r in emb_rows], dtype=np.int64)
        emb_mat = (np.stack([r.embedding for r in emb_rows]).astype(np.float32)
                   if emb_rows else np.zeros((0, self.dim), np.float32))
        if emb_mat.shape[1] != self.dim:
            raise ValueError(f"embedding has {emb_mat.shape[1]} dims, index expects {self.dim}")
        codes, scales = codec.encode(emb_mat)
        scale, vector = codec.to_arrow(codes, scales, self.dim)
        embs = pa.table({"asset_id": pa.array(emb_ids, pa.int64()),
                         "model": pa.array([self.model] * len(emb_rows), pa.string()),
                         "scale": scale, "vector": vector})
        id_tbl = pa.table({"id": pa.array(ids, pa.int64())})
        con = self.con
        con.execute("BEGIN TRANSACTION")
        con.register("_ids", id_tbl)   # within the caller's rollback (write_batch)
        try:
            had_vec = con.execute("SELECT count(*) FROM embeddings WHERE asset_id IN "
                                  "(SELECT id FROM _ids)").fetchall()[0][0]
            con.execute("DELETE FROM embeddings WHERE asset_id IN (SELECT id FROM _ids)")
            con.execute("DELETE FROM assets WHERE id IN (SELECT id FROM _ids)")
            self._insert("assets", ASSET_COLUMNS + META_COLUMNS, assets, insert_size, bulk)
            if len(emb_rows):
                self._insert("embeddings", ("asset_id", "model", "scale", "vector"), embs, insert_size, bulk)
            self._write_frames(records)
            if len(emb_rows) or had_vec:
                con.execute(_BUMP_VECTORS)
            con.execute(_BUMP_REVISION)
            con.execute("COMMIT")
        finally:
            con.unregister("_ids")
        # the vector index only cares when a vector was added or dropped
        touched = ids if (len(emb_rows) or had_vec) else np.zeros(0, np.int64)
        # the vector index gets the vectors as stored, so an update equals a rebuild
        return WriteResult(len(records), [], emb_ids, codec.decode(codes, scales),
                           touched)

    @_gated
    def remove_paths(self, paths: Sequence[str]) -> np.ndarray:
        """Delete vanished files (and their embeddings); returns their ids."""
        if not paths:
            return np.zeros(0, np.int64)
        con = self.con
        with registered(con, "_gone", path=([to_db(p) for p in paths], "string")):
            try:
                con.execute("BEGIN TRANSACTION")
                ids = np.asarray(con.execute("SELECT id FROM assets JOIN _gone USING (path)")
                                 .fetchnumpy()["id"], dtype=np.int64)
                gone = "SELECT id FROM assets JOIN _gone USING (path)"
                for table in ("embeddings", "tags", "frames"):
                    con.execute(f"DELETE FROM {table} WHERE asset_id IN ({gone})")
                con.execute("DELETE FROM assets WHERE path IN (SELECT path FROM _gone)")
                con.execute(_BUMP_VECTORS)
                con.execute(_BUMP_REVISION)
                con.execute("COMMIT")
            except duckdb.Error:
                self._rollback()
                raise
        return ids

    @_gated
    def move_paths(self, pairs: Sequence[tuple[str, str]]) -> None:
        """Files that moved (src, dst): their rows take the new paths, keeping id, features
        and vector. A stale row already at a destination (a file gone since) is dropped,
        but only for a move still to apply: a pair applied before (the row is at dst and
        none at src) is left as it is, so replaying a journal never loses a row."""
        if not pairs:
            return
        con = self.con
        pending = "SELECT dst FROM _mv WHERE src IN (SELECT path FROM assets)"
        stale = f"SELECT id FROM assets WHERE path IN ({pending})"
        with registered(con, "_mv", src=([to_db(s) for s, _ in pairs], "string"),
                        dst=([to_db(d) for _, d in pairs], "string")):
            try:
                con.execute("BEGIN TRANSACTION")
                if con.execute(f"SELECT count(*) FROM ({stale})").fetchall()[0][0]:
                    for table in ("embeddings", "tags", "frames"):
                        con.execute(f"DELETE FROM {table} WHERE asset_id IN ({stale})")
                    con.execute(f"DELETE FROM assets WHERE path IN ({pending})")
                    con.execute(_BUMP_VECTORS)
                con.execute("UPDATE assets SET path = _mv.dst FROM _mv "
                            "WHERE assets.path = _mv.src")
                con.execute(_BUMP_LAYOUT)
                con.execute("COMMIT")
            except duckdb.Error:
                self._rollback()
                raise

    @_gated
    def update_tags(self, tag: str, add: bool, filters: "Filters",
                    paths: Sequence[str] = (), folders: Sequence[str] = ()) -> int:
        """Add (or remove) ``tag`` on every file matching ``filters`` that is one of
        ``paths`` or under one of ``folders`` (all matching files when both are empty),
        in one statement (the seed's ``batch_update_tags``). Returns the files changed."""
        from .filters import folder_condition, where

        cond, params = where(filters)
        scope = ["a.path IN (SELECT path FROM _tp)"] if paths else []
        for folder in folders:
            part, values = folder_condition(folder, "a")
            scope.append(part)
            params += values
        if scope:
            cond += " AND (" + " OR ".join(scope) + ")"
        con = self.con
        listed = registered(con, "_tp", path=([to_db(p) for p in paths], "string")) \
            if paths else contextlib.nullcontext()          # no pyarrow import without paths
        with listed:
            try:
                con.execute("BEGIN TRANSACTION")
                if add:
                    n = con.execute(f"INSERT INTO tags SELECT a.id, ? FROM assets a WHERE {cond} "
                                    f"ON CONFLICT DO NOTHING", [tag, *params]).fetchall()[0][0]
                else:
                    n = con.execute(f"DELETE FROM tags WHERE tag = ? AND asset_id IN "
                                    f"(SELECT a.id FROM assets a WHERE {cond})",
                                    [tag, *params]).fetchall()[0][0]
                con.execute("COMMIT")
            except duckdb.Error:
                self._rollback()
                raise
        return int(n)

    @_gated
    def add_decisions(self, kind: str, groups: Sequence[tuple[Sequence[int], int | None]]
                      ) -> list[int]:
        """Record decisions about groups of files (their ids, and a keeper or None), in one
        transaction, each file with its content hash as it is now (a file that changes
        later drops out of it). Returns the decisions' ids."""
        groups = [(sorted({int(i) for i in ids}), keeper) for ids, keeper in groups]
        if not groups:
            return []
        con = self.con
        try:
            con.execute("BEGIN TRANSACTION")
            first_id = con.execute("SELECT coalesce(max(id), 0) + 1 FROM decisions"
                                   ).fetchall()[0][0]
            new = list(range(int(first_id), int(first_id) + len(groups)))
            con.executemany("INSERT INTO decisions VALUES (?, ?, ?, now())",
                            [[d, kind, None if k is None else int(k)]
                             for d, (_, k) in zip(new, groups)])
            dec = [d for d, (ids, _) in zip(new, groups) for _ in ids]
            asset = [i for ids, _ in groups for i in ids]
            with registered(con, "_dm", decision=(dec, "int64"), id=(asset, "int64")):
                found = con.execute("INSERT INTO decision_members SELECT _dm.decision, a.id, "
                                    "a.content_hash FROM assets a JOIN _dm USING (id)"
                                    ).fetchall()[0][0]
            con.execute(_BUMP_LAYOUT)
            con.execute("COMMIT")
        except duckdb.Error:
            self._rollback()
            raise
        if found != len(asset):
            log.warning("a decision named %d files the index does not hold", len(asset) - found)
        return new

    @_gated
    def remove_decision(self, decision_id: int) -> bool:
        con = self.con
        try:
            con.execute("BEGIN TRANSACTION")
            gone = con.execute("DELETE FROM decisions WHERE id = ?", [int(decision_id)]
                               ).fetchall()[0][0]
            con.execute("DELETE FROM decision_members WHERE decision_id = ?", [int(decision_id)])
            con.execute(_BUMP_LAYOUT)
            con.execute("COMMIT")
        except duckdb.Error:
            self._rollback()
            raise
        return bool(gone)

    @_gated
    def auto_tags(self) -> int:
        """Tags from metadata: source:<generator>, model:<name>, camera:<model>."""
        sql = """INSERT INTO tags
                 SELECT id, 'source:' || ai_source FROM assets
                   WHERE ai_source IS NOT NULL AND ai_source <> 'none'
                 UNION SELECT id, 'model:' || ai_model FROM assets WHERE ai_model IS NOT NULL
                 UNION SELECT id, 'camera:' || camera_model FROM assets
                   WHERE camera_model IS NOT NULL
                 ON CONFLICT DO NOTHING"""
        return int(self.con.execute(sql).fetchall()[0][0])

    @_gated
    def start_run(self, roots: Sequence[str], device: str, embed: bool) -> int:
        run_id = int(self.con.execute("SELECT coalesce(max(id), 0) + 1 FROM runs").fetchall()[0][0])
        self.con.execute("INSERT INTO runs (id, started_at, roots, device, embed) "
                         "VALUES (?, now(), ?, ?, ?)", [run_id, json.dumps(list(roots)), device, embed])
        return run_id

    @_gated
    def finish_run(self, run_id: int, summary: dict[str, Any], status: str) -> None:
        self.con.execute(
            "UPDATE runs SET finished_at = now(), files_seen = ?, decoded = ?, unchanged = ?, "
            "failed = ?, removed = ?, seconds = ?, status = ?, device = ?, metrics = ?, "
            "skipped = ? WHERE id = ?",
            [summary["files_seen"], summary["decoded"], summary["unchanged"], summary["failed"],
             summary["removed"], summary["seconds"], status, summary["device"],
             json.dumps(summary.get("metrics")), json.dumps(summary.get("skipped") or {}),
             run_id])


def _oriented(hashes: dict[str, int]) -> list[int] | None:
    """The row's ``phash_orient`` value: the 7 other orientations' pHashes, or NULL."""
    values = [hashes.get(k) for k in ORIENT_KEYS]
    return None if any(v is None for v in values) else values


_META_ARROW = {"VARCHAR": "string", "INTEGER": "int32", "BIGINT": "int64", "DOUBLE": "float64",
               "SMALLINT": "int16", "BOOLEAN": "bool_"}


def _taken(value: Any) -> "datetime | None":
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value)[:19])
    except ValueError:
        return None


def _meta_columns(records: Sequence[AssetRecord]) -> dict[str, Any]:
    """The metadata columns of a batch (NULL where a file has none; meta_version 0 when
    nothing was read, so a later run with extraction on reads it)."""
    import pyarrow as pa

    from .schema import META_TYPES

    metas = [r.meta or {} for r in records]
    out: dict[str, Any] = {}
    for name, sql in META_TYPES.items():
        values = [m.get(name) for m in metas]
        if name == "taken_at":
            out[name] = pa.array([_taken(v) for v in values], pa.timestamp("us"))
        elif name == "meta_version":
            out[name] = pa.array([int(v or 0) for v in values], pa.int16())
        else:
            out[name] = pa.array(values, getattr(pa, _META_ARROW[sql])())
    return out
