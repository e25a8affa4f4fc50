"""The store's schema, its manifest and its migrations, apart from reads and writes.

An index folder holds ``alice.duckdb`` and ``manifest.json`` (schema version,
model, dimensions). A newer schema, another model or a file that is not an
alice-gpu index is refused untouched; an older schema is migrated in one
transaction after a backup copy.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import duckdb

from ..config import HASH_NAMES as HASHES
from ..errors import StorageError, StoreError, command_line, is_storage_failure

log = logging.getLogger(__name__)

SCHEMA_VERSION = 9
DB_FILE = "alice.duckdb"
MANIFEST_FILE = "manifest.json"

ASSET_COLUMNS = ("id", "path", "size", "mtime_ns", "width", "height", "format", "status",
                 "error", *HASHES, "indexed_at", "run_id", "content_hash",
                 "phash_orient")
# what a file says about itself (decode.metadata), with their SQL types; ai_meta is the
# raw generation blocks as JSON (kept out of ASSET_COLUMNS: it can be 100 KB a row)
META_TYPES = {"mode": "VARCHAR", "frames": "INTEGER", "taken_at": "TIMESTAMP",
              "camera_make": "VARCHAR", "camera_model": "VARCHAR", "lens": "VARCHAR",
              "software": "VARCHAR", "gps_lat": "DOUBLE", "gps_lon": "DOUBLE",
              "ai_source": "VARCHAR", "prompt": "VARCHAR", "negative_prompt": "VARCHAR",
              "ai_model": "VARCHAR", "seed": "BIGINT", "steps": "INTEGER", "sampler": "VARCHAR",
              "cfg": "DOUBLE", "ai_meta": "VARCHAR", "meta_version": "SMALLINT",
              # videos (schema 8): kind 'video' (NULL: an image), what the container states
              "kind": "VARCHAR", "duration": "DOUBLE", "fps": "DOUBLE", "codec": "VARCHAR",
              "rotation": "SMALLINT", "audio": "BOOLEAN", "sampled": "SMALLINT",
              # schema 9: which fact taken_at came from (decode/dates.py)
              "taken_from": "VARCHAR"}
_VIDEO_META = ("kind", "duration", "fps", "codec", "rotation", "audio", "sampled")
META_COLUMNS = tuple(META_TYPES)

# a person's decisions about duplicate groups ("not duplicates", a keeper chosen by
# hand), each member with the content hash it had: a changed file drops out
_DECISIONS = ("CREATE TABLE IF NOT EXISTS decisions (id BIGINT PRIMARY KEY, kind VARCHAR "
              "NOT NULL, keeper BIGINT, made_at TIMESTAMP)",
              "CREATE TABLE IF NOT EXISTS decision_members (decision_id BIGINT NOT NULL, "
              "asset_id BIGINT NOT NULL, content_hash VARCHAR, PRIMARY KEY (decision_id, "
              "asset_id))")


# a video's sampled frames (schema 8): time, pHashes, int8 embedding (store/codec.py)
_FRAMES = ("CREATE TABLE IF NOT EXISTS frames (asset_id BIGINT NOT NULL, idx SMALLINT NOT NULL, "
           "t DOUBLE NOT NULL, phash UBIGINT, phash_orient UBIGINT[7], scale FLOAT, "
           "vector TINYINT[{dim}])")


def _schema_sql(dim: int) -> str:
    hash_cols = ",\n  ".join(f"{h} UBIGINT" for h in HASHES)
    meta_cols = ",\n  ".join(f"{k} {t}" for k, t in META_TYPES.items())
    decisions = ";\n".join(_DECISIONS)
    frames = _FRAMES.replace("{dim}", str(int(dim)))
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
  content_hash VARCHAR,
  phash_orient UBIGINT[7],
  {meta_cols}
);
CREATE TABLE IF NOT EXISTS tags (
  asset_id BIGINT NOT NULL,
  tag VARCHAR NOT NULL,
  PRIMARY KEY (asset_id, tag)
);
CREATE TABLE IF NOT EXISTS embeddings (
  asset_id BIGINT PRIMARY KEY,
  model VARCHAR NOT NULL,
  scale FLOAT NOT NULL,
  vector TINYINT[{dim}] NOT NULL
);
{decisions};
{frames};
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
  metrics VARCHAR,
  skipped VARCHAR
);
"""

# schema version → the statements that bring a store from it to the next version
_MIGRATIONS = {
    1: ["ALTER TABLE assets ADD COLUMN content_hash VARCHAR",
        "ALTER TABLE runs ADD COLUMN metrics VARCHAR"],
    # content hashes were blake2b-128 up to schema 2 and are SHA-256 since: an old value
    # can never match a new one, so it is dropped (a file re-read later gets a new one)
    2: ["UPDATE assets SET content_hash = NULL"],
    # embeddings were FLOAT[dim] (5 KB at 1280-d) up to schema 3; since 4 they are int8
    # codes with one scale per vector (store/codec.py: the same formula, in SQL)
    3: ["""CREATE TABLE embeddings_v4 AS
           SELECT asset_id, model, CAST(s AS FLOAT) AS scale,
                  CAST(list_transform(vector, lambda x: CASE WHEN s > 0
                       THEN greatest(-127, least(127, round(x / s))) ELSE 0 END)
                       AS TINYINT[{dim}]) AS vector
           FROM (SELECT *, CAST(list_max(list_transform(vector, lambda x: abs(x))) AS FLOAT) / 127.0
                        AS s FROM embeddings)""",
        "DROP TABLE embeddings",
        """CREATE TABLE embeddings (asset_id BIGINT PRIMARY KEY, model VARCHAR NOT NULL,
           scale FLOAT NOT NULL, vector TINYINT[{dim}] NOT NULL)""",
        "INSERT INTO embeddings SELECT * FROM embeddings_v4",
        "DROP TABLE embeddings_v4",
        "UPDATE meta SET value = CAST(CAST(value AS BIGINT) + 1 AS VARCHAR) "
        "WHERE key = 'vectors_version'"],
    # since 5 the pHashes of the 7 other orientations (records.ORIENTATIONS) are stored;
    # older rows have none, and the next index run re-hashes them (reads.known_state)
    4: ["ALTER TABLE assets ADD COLUMN IF NOT EXISTS phash_orient UBIGINT[7]"],
    # since 6 each file's own metadata (EXIF, generation data) and tags; older rows have
    # none, and the next index run reads them again (reads.known_state, meta_version)
    5: [f"ALTER TABLE assets ADD COLUMN IF NOT EXISTS {k} {t}" for k, t in META_TYPES.items()]
       + ["CREATE TABLE IF NOT EXISTS tags (asset_id BIGINT NOT NULL, tag VARCHAR NOT NULL, "
          "PRIMARY KEY (asset_id, tag))"],
    # since 7 the decisions about duplicate groups
    6: list(_DECISIONS),
    # since 8 videos: their container facts, and their sampled frames
    7: [f"ALTER TABLE assets ADD COLUMN IF NOT EXISTS {k} {META_TYPES[k]}" for k in _VIDEO_META]
       + [_FRAMES, "ALTER TABLE runs ADD COLUMN IF NOT EXISTS skipped VARCHAR"],
    # since 9 where each date taken came from; older dates are EXIF's or a container's
    8: ["ALTER TABLE assets ADD COLUMN IF NOT EXISTS taken_from VARCHAR",
        "UPDATE assets SET taken_from = CASE WHEN kind = 'video' THEN 'container' "
        "ELSE 'exif' END WHERE taken_at IS NOT NULL"],
}


def first(rows: list[tuple]) -> tuple | None:
    """First row or None (results are always fetched whole: DuckDB keeps partial ones open)."""
    return rows[0] if rows else None


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def check_manifest(folder: Path, model: str, dim: int) -> dict:
    """Refuse, untouched, an index written by a newer alice-gpu or for another model;
    the manifest otherwise ({} for a new index)."""
    path = folder / MANIFEST_FILE
    if not path.exists():
        return {}
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path} is unreadable ({exc}); not touching this index") from None
    if not isinstance(manifest, dict):
        raise StoreError(f"{path} is not an alice-gpu manifest; not touching this index")
    version = manifest.get("schema_version")
    if isinstance(version, int) and version > SCHEMA_VERSION:
        raise StoreError(f"the index at {folder} was written by a newer alice-gpu "
                         f"(schema {version} > {SCHEMA_VERSION}); upgrade alice-gpu")
    if manifest.get("model") not in (None, model) or manifest.get("dim") not in (None, dim):
        raise StoreError(f"the index at {folder} holds {manifest.get('model')} embeddings "
                         f"({manifest.get('dim')}-d), not {model}; use another --db")
    return manifest


def stored_version(con: duckdb.DuckDBPyConnection) -> int | None:
    """The schema version recorded in the database, or None for an empty one."""
    try:
        row = first(con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchall())
    except duckdb.Error:
        return None
    return int(row[0]) if row else None


def migrate(con: duckdb.DuckDBPyConnection, folder: Path, dim: int
            ) -> duckdb.DuckDBPyConnection:
    """Bring an older schema up to date in one transaction, after a backup copy.

    Returns the connection to use from now on (the file is closed for the copy).
    """
    version = stored_version(con)
    if version is None or version >= SCHEMA_VERSION:
        return con
    if version not in _MIGRATIONS:
        raise StoreError(f"index schema {version} is too old to migrate; re-index into a new --db")
    db_path = folder / DB_FILE
    backup = db_path.with_name(f"{DB_FILE}.v{version}.bak")
    con.execute("CHECKPOINT")
    con.close()
    shutil.copy2(db_path, backup)
    con = duckdb.connect(str(db_path))
    log.warning("migrating the index at %s from schema %d to %d (backup: %s)",
                folder, version, SCHEMA_VERSION, backup.name)
    con.execute("BEGIN TRANSACTION")
    try:
        for v in range(version, SCHEMA_VERSION):
            for stmt in _MIGRATIONS[v]:
                con.execute(stmt.replace("{dim}", str(int(dim))))
        con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'",
                    [str(SCHEMA_VERSION)])
        con.execute("COMMIT")
    except duckdb.Error as exc:
        try:
            con.execute("ROLLBACK")
        except duckdb.Error:
            pass
        raise StoreError(f"migration failed and was rolled back ({exc}); "
                         f"the backup is {backup}") from None
    return con


def init_schema(con: duckdb.DuckDBPyConnection, folder: Path, model: str, dim: int,
                space: str) -> None:
    """Create the tables of a new index and (re)write its manifest."""
    try:
        if stored_version(con) is None:
            con.execute(_schema_sql(dim))
            con.execute("INSERT INTO meta VALUES ('schema_version', ?) ON CONFLICT DO NOTHING",
                        [str(SCHEMA_VERSION)])
            con.execute("INSERT INTO meta VALUES ('model', ?) ON CONFLICT DO NOTHING", [model])
            con.execute("INSERT INTO meta VALUES ('vectors_version', '0') ON CONFLICT DO NOTHING")
        write_manifest(folder, model, dim, space)
    except (OSError, duckdb.Error) as exc:
        if is_storage_failure(exc):
            raise StorageError(f"could not write the index at {folder} "
                               f"({str(exc).splitlines()[0][:200]}); nothing was changed: "
                               f"free some space and run again") from None
        raise


def write_manifest(folder: Path, model: str, dim: int, space: str) -> None:
    """The manifest of an index, rewritten only when it changes."""
    manifest = json.dumps({"schema_version": SCHEMA_VERSION, "model": model, "dim": dim,
                           "space": space, "db": DB_FILE}, indent=2) + "\n"
    path = folder / MANIFEST_FILE
    if not path.exists() or path.read_text() != manifest:
        atomic_write_text(path, manifest)


def manifest_space(manifest: dict) -> str:
    """The embedding space an index's vectors live in (``fp32`` or ``int8``); indexes
    from before spaces were recorded hold fp32 vectors."""
    space = manifest.get("space")
    return space if isinstance(space, str) and space else "fp32"


def _roots(con: duckdb.DuckDBPyConnection) -> list[str]:
    """The folders an index was built from (for a command that re-runs them), or FOLDER."""
    try:
        rows = con.execute("SELECT DISTINCT roots FROM runs WHERE roots IS NOT NULL").fetchall()
        roots = sorted({str(r) for (text,) in rows for r in json.loads(text)})
    except (duckdb.Error, ValueError, TypeError):
        roots = []
    return roots or ["FOLDER"]


def check_schema(con: duckdb.DuckDBPyConnection, folder: Path, read_only: bool) -> None:
    """Refuse a DuckDB file that is not an alice-gpu index, or one of another schema."""
    try:
        row = first(con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchall())
    except duckdb.Error:
        raise StoreError(f"{folder / DB_FILE} is a DuckDB file but not an alice-gpu "
                         f"index; not touching it") from None
    version = int(row[0]) if row else None
    if version is not None and version < SCHEMA_VERSION and read_only:
        raise StoreError(f"index schema {version} is older than this alice-gpu's "
                         f"({SCHEMA_VERSION}); migrate it once with "
                         f"{command_line('index', *_roots(con), '--db', folder)}")
    if version != SCHEMA_VERSION:
        raise StoreError(f"index schema {version} is not supported by this alice-gpu "
                         f"(expects {SCHEMA_VERSION})")
