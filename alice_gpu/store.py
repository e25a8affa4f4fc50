"""Stage 5, store: DuckDB is the source of truth for assets, hashes, embeddings and runs.

Writes are bulk inserts from Arrow tables inside one transaction per batch;
a batch that fails is rolled back and retried row by row so that one bad row
cannot sink its neighbours. Ids are stable per path: a changed file keeps its
id, which is also its id in the FAISS index.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import duckdb
import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa

from .decoding import STATUS_FAILED, STATUS_OK
from .errors import StorageError, StoreError, StoreLockedError, is_storage_failure
from .config import HASH_NAMES as HASHES

log = logging.getLogger(__name__)

SCHEMA_VERSION = 3
DB_FILE = "alice.duckdb"
MANIFEST_FILE = "manifest.json"


@dataclass(slots=True)
class AssetRecord:
    """One row of ``assets``; hashes are uint64 ints or None for failed files."""

    path: str
    size: int
    mtime_ns: int
    status: str
    error: str | None = None
    width: int | None = None
    height: int | None = None
    format: str | None = None
    hashes: dict[str, int] = field(default_factory=dict)
    embedding: np.ndarray | None = None
    id: int | None = None
    content_hash: str | None = None


@dataclass(frozen=True)
class WriteResult:
    written: int
    failed_rows: list[tuple[str, str]]     # (path, reason) rows the DB refused
    embedded_ids: np.ndarray               # ids whose embedding was (re)written
    embeddings: np.ndarray                 # (n, dim) float32, aligned with embedded_ids
    touched_ids: np.ndarray                # every id whose old vector is now stale


_ASSET_COLUMNS = ("id", "path", "size", "mtime_ns", "width", "height", "format", "status",
                  "error", *HASHES, "indexed_at", "run_id", "content_hash")


def _schema_sql(dim: int) -> str:
    hash_cols = ",\n  ".join(f"{h} UBIGINT" for h in HASHES)
    return f"""
CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE IF NOT EXISTS assets (
  id BIGINT PRIMARY KEY,
  path VARCHAR NOT NULL UNIQUE,
  size BIGINT NOT NULL,
  mtime_ns BIGINT NOT NULL,
  width INTEGER,
  height INTEGER,
  format VARCHAR,
  status VARCHAR NOT NULL,
  error VARCHAR,
  {hash_cols},
  indexed_at TIMESTAMP,
  run_id BIGINT,
  content_hash VARCHAR
);
CREATE TABLE IF NOT EXISTS embeddings (
  asset_id BIGINT PRIMARY KEY,
  model VARCHAR NOT NULL,
  vector FLOAT[{dim}] NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
  id BIGINT PRIMARY KEY,
  started_at TIMESTAMP,
  finished_at TIMESTAMP,
  roots VARCHAR,
  device VARCHAR,
  embed BOOLEAN,
  files_seen BIGINT,
  decoded BIGINT,
  unchanged BIGINT,
  failed BIGINT,
  removed BIGINT,
  seconds DOUBLE,
  status VARCHAR,
  metrics VARCHAR
);
"""

# schema version → the statements that bring a store from it to the next version
_MIGRATIONS = {
    1: ["ALTER TABLE assets ADD COLUMN content_hash VARCHAR",
        "ALTER TABLE runs ADD COLUMN metrics VARCHAR"],
    # content hashes were blake2b-128 up to schema 2 and are SHA-256 since: an old value
    # can never match a new one, so it is dropped (a file re-read later gets a new one)
    2: ["UPDATE assets SET content_hash = NULL"],
}


class Store:
    """One index folder: ``alice.duckdb`` + ``manifest.json`` (+ the FAISS files of vectors)."""

    def __init__(self, folder: str | os.PathLike[str], *, model: str, dim: int,
                 read_only: bool = False, memory_limit_mb: int | None = None):
        self.folder = Path(folder)
        self.model = model
        self.dim = dim
        self.read_only = read_only
        db_path = self.folder / DB_FILE
        if read_only:
            if not db_path.exists():
                raise StoreError(f"no index at {self.folder} (run `alice-gpu index PATH` first, "
                                 f"or point --db at an existing index)")
        else:
            self.folder.mkdir(parents=True, exist_ok=True)
        self._check_manifest()
        try:
            self.con = duckdb.connect(str(db_path), read_only=read_only)
        except duckdb.IOException as exc:
            if "lock" in str(exc).lower():
                raise StoreLockedError(f"the index at {self.folder} is in use by another "
                                       f"alice-gpu process; try again when it has finished") from None
            raise StoreError(f"cannot open {db_path}: {str(exc).splitlines()[0]}") from None
        except duckdb.Error as exc:
            raise StoreError(f"{db_path} is not a usable alice-gpu index: "
                             f"{str(exc).splitlines()[0]}") from None
        if memory_limit_mb:
            # DuckDB caches what it writes; bound it so memory does not grow with the index
            self.con.execute(f"SET memory_limit = '{int(memory_limit_mb)}MB'")
        if not read_only:
            self._migrate()
            self._init_schema()
        self._check_schema()

    # ------------------------------------------------------------ lifecycle
    def _check_manifest(self) -> None:
        path = self.folder / MANIFEST_FILE
        if not path.exists():
            return
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise StoreError(f"{path} is unreadable ({exc}); not touching this index") from None
        version = manifest.get("schema_version")
        if isinstance(version, int) and version > SCHEMA_VERSION:
            raise StoreError(f"the index at {self.folder} was written by a newer alice-gpu "
                             f"(schema {version} > {SCHEMA_VERSION}); upgrade alice-gpu")
        if manifest.get("model") not in (None, self.model) or manifest.get("dim") not in (None, self.dim):
            raise StoreError(f"the index at {self.folder} holds {manifest.get('model')} embeddings "
                             f"({manifest.get('dim')}-d), not {self.model}; use another --db")

    def _stored_version(self) -> int | None:
        try:
            row = _first(self.con.execute(
                "SELECT value FROM meta WHERE key = 'schema_version'").fetchall())
        except duckdb.Error:
            return None
        return int(row[0]) if row else None

    def _migrate(self) -> None:
        """Bring an older schema up to date in one transaction, after a backup copy."""
        version = self._stored_version()
        if version is None or version >= SCHEMA_VERSION:
            return
        if version not in _MIGRATIONS:
            raise StoreError(f"index schema {version} is too old to migrate; re-index into a new --db")
        db_path = self.folder / DB_FILE
        backup = db_path.with_name(f"{DB_FILE}.v{version}.bak")
        self.con.execute("CHECKPOINT")
        self.con.close()
        shutil.copy2(db_path, backup)
        self.con = duckdb.connect(str(db_path))
        log.warning("migrating the index at %s from schema %d to %d (backup: %s)",
                    self.folder, version, SCHEMA_VERSION, backup.name)
        self.con.execute("BEGIN TRANSACTION")
        try:
            for v in range(version, SCHEMA_VERSION):
                for stmt in _MIGRATIONS[v]:
                    self.con.execute(stmt)
            self.con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'",
                             [str(SCHEMA_VERSION)])
            self.con.execute("COMMIT")
        except duckdb.Error as exc:
            self._rollback()
            raise StoreError(f"migration failed and was rolled back ({exc}); "
                             f"the backup is {backup}") from None

    def _init_schema(self) -> None:
        try:
            if self._stored_version() is None:
                self.con.execute(_schema_sql(self.dim))
                self.con.execute("INSERT INTO meta VALUES ('schema_version', ?) "
                                 "ON CONFLICT DO NOTHING", [str(SCHEMA_VERSION)])
                self.con.execute("INSERT INTO meta VALUES ('model', ?) ON CONFLICT DO NOTHING",
                                 [self.model])
                self.con.execute("INSERT INTO meta VALUES ('vectors_version', '0') "
                                 "ON CONFLICT DO NOTHING")
            manifest = json.dumps({"schema_version": SCHEMA_VERSION, "model": self.model,
                                   "dim": self.dim, "db": DB_FILE}, indent=2) + "\n"
            path = self.folder / MANIFEST_FILE
            if not path.exists() or path.read_text() != manifest:
                _atomic_write_text(path, manifest)
        except (OSError, duckdb.Error) as exc:
            if is_storage_failure(exc):
                self.close()
                raise StorageError(f"could not write the index at {self.folder} "
                                   f"({str(exc).splitlines()[0][:200]}); nothing was changed: "
                                   f"free some space and run again") from None
            raise

    def _check_schema(self) -> None:
        try:
            row = _first(self.con.execute(
                "SELECT value FROM meta WHERE key = 'schema_version'").fetchall())
        except duckdb.Error:
            raise StoreError(f"{self.folder / DB_FILE} is a DuckDB file but not an alice-gpu "
                             f"index; not touching it") from None
        version = int(row[0]) if row else None
        if version is not None and version < SCHEMA_VERSION and self.read_only:
            raise StoreError(f"index schema {version} is older than this alice-gpu's "
                             f"({SCHEMA_VERSION}); run `alice-gpu index` once to migrate it")
        if version != SCHEMA_VERSION:
            raise StoreError(f"index schema {version} is not supported by this alice-gpu "
                             f"(expects {SCHEMA_VERSION})")

    def close(self) -> None:
        con = getattr(self, "con", None)
        if con is not None:
            con.close()
            self.con = None

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------ reads
    def known_state(self, require_embedding: bool, retry_failed: bool = False
                    ) -> dict[str, tuple[int, int]]:
        """(size, mtime_ns) of every stored path whose work is complete for this run.

        Failed files count as complete (they would fail again) unless ``retry_failed``.
        """
        sql = "SELECT a.path, a.size, a.mtime_ns FROM assets a"
        ok = "a.status = 'ok'"
        if require_embedding:
            sql += " LEFT JOIN embeddings e ON e.asset_id = a.id"
            ok += " AND e.asset_id IS NOT NULL"
        sql += f" WHERE ({ok})" + ("" if retry_failed else " OR a.status <> 'ok'")
        cols = self.con.execute(sql).fetchnumpy()
        return {from_db(p): (int(s), int(m))
                for p, s, m in zip(cols["path"], cols["size"], cols["mtime_ns"])}

    def path_ids(self) -> dict[str, int]:
        """Every stored path with its id (ids are kept when a file changes)."""
        cols = self.con.execute("SELECT path, id FROM assets").fetchnumpy()
        return {from_db(p): i for p, i in zip(cols["path"].tolist(), cols["id"].tolist())}

    def has_assets(self) -> bool:
        return bool(self.con.execute("SELECT count(*) FROM (SELECT 1 FROM assets LIMIT 1)"
                                     ).fetchall()[0][0])

    def contents_by_size(self, sizes: set[int], require_embedding: bool
                         ) -> dict[int, frozenset[str]]:
        """Content hashes of complete assets whose size is in ``sizes``, by size."""
        if not sizes:
            return {}
        import pyarrow as pa   # on first use: not on the path to the first decode
        self.con.register("_sz", pa.table({"size": pa.array(sorted(sizes), pa.int64())}))
        try:
            sql = "SELECT DISTINCT a.size, a.content_hash FROM assets a JOIN _sz USING (size)"
            if require_embedding:
                sql += " JOIN embeddings e ON e.asset_id = a.id"
            sql += " WHERE a.status = 'ok' AND a.content_hash IS NOT NULL"
            rows = self.con.execute(sql).fetchall()
        finally:
            self.con.unregister("_sz")
        out: dict[int, set[str]] = {}
        for size, digest in rows:
            out.setdefault(int(size), set()).add(digest)
        return {k: frozenset(v) for k, v in out.items()}

    def features_by_content(self, content_hashes: Iterable[str], require_embedding: bool
                            ) -> dict[str, dict[str, Any]]:
        """Complete features of assets with these content hashes (one asset per hash)."""
        keys = sorted(set(content_hashes))
        if not keys:
            return {}
        import pyarrow as pa   # on first use: not on the path to the first decode
        self.con.register("_ch", pa.table({"content_hash": pa.array(keys, pa.string())}))
        try:
            join = "JOIN" if require_embedding else "LEFT JOIN"
            rows = self.con.execute(
                f"SELECT a.content_hash, a.width, a.height, a.format, "
                f"{', '.join('a.' + h for h in HASHES)}, e.vector "
                f"FROM assets a JOIN _ch USING (content_hash) "
                f"{join} embeddings e ON e.asset_id = a.id "
                f"WHERE a.status = 'ok' ORDER BY a.id").fetchall()
        finally:
            self.con.unregister("_ch")
        out: dict[str, dict[str, Any]] = {}
        for row in rows:
            ch, w, h, fmt, *hashes, vec = row
            out.setdefault(ch, {"width": w, "height": h, "format": fmt,
                                "hashes": dict(zip(HASHES, (int(x) for x in hashes))),
                                "embedding": None if vec is None else np.asarray(vec, np.float32)})
        return out

    def max_id(self) -> int:
        return int(self.con.execute("SELECT coalesce(max(id), 0) FROM assets").fetchall()[0][0])

    def asset(self, path: str) -> dict[str, Any] | None:
        cur = self.con.execute(f"SELECT {', '.join(_ASSET_COLUMNS)} FROM assets WHERE path = ?",
                               [to_db(path)])
        row = _first(cur.fetchall())
        return _row(row) if row else None

    def assets_by_ids(self, ids: Iterable[int]) -> dict[int, dict[str, Any]]:
        ids = [int(i) for i in ids]
        if not ids:
            return {}
        import pyarrow as pa   # on first use: not on the path to the first decode
        self.con.register("_q", pa.table({"id": pa.array(ids, pa.int64())}))
        try:
            cur = self.con.execute(f"SELECT {', '.join('a.' + c for c in _ASSET_COLUMNS)} "
                                   f"FROM assets a JOIN _q USING (id)")
            return {row[0]: _row(row) for row in cur.fetchall()}
        finally:
            self.con.unregister("_q")

    def hashes(self, kind: str) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64, hashes uint64) of every OK asset."""
        if kind not in HASHES:
            raise ValueError(f"unknown hash {kind!r}")
        cols = self.con.execute(f"SELECT id, {kind} FROM assets WHERE status = 'ok' "
                                f"AND {kind} IS NOT NULL ORDER BY id").fetchnumpy()
        return (np.asarray(cols["id"], dtype=np.int64),
                np.asarray(cols[kind], dtype=np.uint64))

    def embeddings(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64, vectors (n, dim) float32) of every stored embedding."""
        tbl = self.con.sql("SELECT asset_id, vector FROM embeddings ORDER BY asset_id"
                           ).to_arrow_table()
        ids = tbl.column("asset_id").to_numpy().astype(np.int64)
        if len(ids) == 0:
            return ids, np.zeros((0, self.dim), dtype=np.float32)
        vec = tbl.column("vector").combine_chunks()
        mat = vec.values.to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, self.dim)
        return ids, mat

    def embedding_of(self, asset_id: int) -> np.ndarray | None:
        row = _first(self.con.execute("SELECT vector FROM embeddings WHERE asset_id = ?",
                                      [int(asset_id)]).fetchall())
        return None if row is None else np.asarray(row[0], dtype=np.float32)

    def failed_in_run(self, run_id: int) -> list[tuple[str, str]]:
        return [(from_db(p), e) for p, e in self.con.execute(
            "SELECT path, coalesce(error, '') FROM assets WHERE run_id = ? AND status <> 'ok' "
            "ORDER BY path", [run_id]).fetchall()]

    def vectors_version(self) -> int:
        row = _first(self.con.execute(
            "SELECT value FROM meta WHERE key = 'vectors_version'").fetchall())
        return int(row[0]) if row else 0

    def stats(self) -> dict[str, Any]:
        q = self.con.execute
        assets = q("SELECT count(*) FROM assets WHERE status = 'ok'").fetchall()[0][0]
        failed = q("SELECT count(*) FROM assets WHERE status <> 'ok'").fetchall()[0][0]
        embedded = q("SELECT count(*) FROM embeddings").fetchall()[0][0]
        total_bytes = q("SELECT coalesce(sum(size), 0) FROM assets WHERE status = 'ok'").fetchall()[0][0]
        formats = dict(q("SELECT format, count(*) FROM assets WHERE status = 'ok' "
                         "GROUP BY format ORDER BY 2 DESC").fetchall())
        last = _first(q("SELECT id, finished_at, files_seen, decoded, unchanged, failed, removed, seconds "
                 "FROM runs WHERE status IS NOT NULL ORDER BY id DESC LIMIT 1").fetchall())
        errors = q("SELECT path, error FROM assets WHERE status <> 'ok' ORDER BY path LIMIT 20"
                   ).fetchall()
        return {
            "assets": int(assets), "failed": int(failed), "embedded": int(embedded),
            "bytes": int(total_bytes), "formats": {str(k): int(v) for k, v in formats.items()},
            "last_run": None if last is None else dict(zip(
                ("id", "finished_at", "files_seen", "decoded", "unchanged", "failed",
                 "removed", "seconds"), (*last[:1], str(last[1]), *last[2:]))),
            "failed_files": [{"path": from_db(p), "error": e} for p, e in errors],
        }

    # ------------------------------------------------------------ writes
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
        })
        emb_rows = [r for r in records if r.embedding is not None and r.status == STATUS_OK]
        emb_ids = np.array([r.id for r in emb_rows], dtype=np.int64)
        emb_mat = (np.stack([r.embedding for r in emb_rows]).astype(np.float32)
                   if emb_rows else np.zeros((0, self.dim), np.float32))
        if emb_mat.shape[1] != self.dim:
            raise ValueError(f"embedding has {emb_mat.shape[1]} dims, index expects {self.dim}")
        embs = pa.table({
            "asset_id": pa.array(emb_ids, pa.int64()),
            "model": pa.array([self.model] * len(emb_rows), pa.string()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(emb_mat.reshape(-1)), self.dim),
        })
        id_tbl = pa.table({"id": pa.array(ids, pa.int64())})
        con = self.con
        con.execute("BEGIN TRANSACTION")
        con.register("_ids", id_tbl)
        try:
            had_vec = con.execute("SELECT count(*) FROM embeddings WHERE asset_id IN "
                                  "(SELECT id FROM _ids)").fetchall()[0][0]
            con.execute("DELETE FROM embeddings WHERE asset_id IN (SELECT id FROM _ids)")
            con.execute("DELETE FROM assets WHERE id IN (SELECT id FROM _ids)")
            self._insert("assets", _ASSET_COLUMNS, assets, insert_size, bulk)
            if len(emb_rows):
                self._insert("embeddings", ("asset_id", "model", "vector"), embs, insert_size, bulk)
            if len(emb_rows) or had_vec:
                con.execute("UPDATE meta SET value = CAST(CAST(value AS BIGINT) + 1 AS VARCHAR) "
                            "WHERE key = 'vectors_version'")
            con.execute("COMMIT")
        finally:
            con.unregister("_ids")
        # the vector index only cares when a vector was added or dropped
        touched = ids if (len(emb_rows) or had_vec) else np.zeros(0, np.int64)
        return WriteResult(len(records), [], emb_ids, emb_mat, touched)

    def remove_paths(self, paths: Sequence[str]) -> np.ndarray:
        """Delete vanished files (and their embeddings); returns their ids."""
        if not paths:
            return np.zeros(0, np.int64)
        import pyarrow as pa   # on first use: not on the path to the first decode
        tbl = pa.table({"path": pa.array([to_db(p) for p in paths], pa.string())})
        con = self.con
        con.register("_gone", tbl)
        try:
            con.execute("BEGIN TRANSACTION")
            ids = np.asarray(con.execute("SELECT id FROM assets JOIN _gone USING (path)")
                             .fetchnumpy()["id"], dtype=np.int64)
            con.execute("DELETE FROM embeddings WHERE asset_id IN "
                        "(SELECT id FROM assets JOIN _gone USING (path))")
            con.execute("DELETE FROM assets WHERE path IN (SELECT path FROM _gone)")
            con.execute("UPDATE meta SET value = CAST(CAST(value AS BIGINT) + 1 AS VARCHAR) "
                        "WHERE key = 'vectors_version'")
            con.execute("COMMIT")
        except duckdb.Error:
            self._rollback()
            raise
        finally:
            con.unregister("_gone")
        return ids

    def start_run(self, roots: Sequence[str], device: str, embed: bool) -> int:
        run_id = int(self.con.execute("SELECT coalesce(max(id), 0) + 1 FROM runs").fetchall()[0][0])
        self.con.execute("INSERT INTO runs (id, started_at, roots, device, embed) "
                         "VALUES (?, now(), ?, ?, ?)", [run_id, json.dumps(list(roots)), device, embed])
        return run_id

    def finish_run(self, run_id: int, summary: dict[str, Any], status: str) -> None:
        self.con.execute(
            "UPDATE runs SET finished_at = now(), files_seen = ?, decoded = ?, unchanged = ?, "
            "failed = ?, removed = ?, seconds = ?, status = ?, device = ?, metrics = ? "
            "WHERE id = ?",
            [summary["files_seen"], summary["decoded"], summary["unchanged"], summary["failed"],
             summary["removed"], summary["seconds"], status, summary["device"],
             json.dumps(summary.get("metrics")), run_id])

    def run_metrics(self, run_id: int) -> dict[str, Any] | None:
        row = _first(self.con.execute("SELECT metrics FROM runs WHERE id = ?", [run_id]).fetchall())
        return json.loads(row[0]) if row and row[0] else None


_RAW = "raw:"   # stored paths that are not UTF-8: "raw:" + bytes, \xNN-escaped (never "/...")


def to_db(path: str) -> str:
    """The stored form of a path: itself, or a lossless escaped form for non-UTF-8 names."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        raw = os.fsencode(path).replace(b"\\", b"\\\\")
        return _RAW + raw.decode("utf-8", "backslashreplace")


def from_db(text: str) -> str:
    """Inverse of :func:`to_db`: the path as the OS gives it (surrogate-escaped bytes)."""
    if not text.startswith(_RAW):
        return text
    body = text[len(_RAW):].encode("utf-8")
    raw = re.sub(rb"\\(\\|x[0-9a-f]{2})",
                 lambda m: b"\\" if m.group(1) == b"\\" else bytes([int(m.group(1)[1:], 16)]),
                 body)
    return os.fsdecode(raw)


def _row(row: tuple) -> dict[str, Any]:
    out = dict(zip(_ASSET_COLUMNS, row))
    out["path"] = from_db(out["path"])
    return out


def _first(rows: list[tuple]) -> tuple | None:
    """First row or None (results are always fetched whole: DuckDB keeps partial ones open)."""
    return rows[0] if rows else None


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


__all__ = ["AssetRecord", "Store", "StoreError", "StoreLockedError", "WriteResult",
           "STATUS_OK", "STATUS_FAILED", "SCHEMA_VERSION"]
