"""Reads of the store: what discovery, reuse, queries and ``stats`` need to know.

Results come back as numpy columns or small dicts; queries that take ids or
paths from Python join against a registered Arrow table, never a long ``IN`` list.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import duckdb
import numpy as np

from ..config import HASH_NAMES as HASHES
from ..records import ORIENT_KEYS
from . import codec
from .paths import from_db, registered, to_db
from .schema import ASSET_COLUMNS, META_COLUMNS, first

# a row as queries see it: the asset, and what makes a video one
READ_COLUMNS = (*ASSET_COLUMNS, "kind", "duration")

if TYPE_CHECKING:
    from .filters import Filters


SMALL_ID_LIST = 2048    # ids looked up as a list parameter; more go through an Arrow table


class Reads:
    """The read side of :class:`~alice_gpu.store.Store` (a mixin over its connection)."""

    con: duckdb.DuckDBPyConnection
    folder: Path
    model: str
    dim: int

    def known_state(self, require_embedding: bool, retry_failed: bool = False,
                    need_meta: int = 0) -> dict[str, tuple[int, int]]:
        """(size, mtime_ns) of every stored path whose work is complete for this run.

        Failed files count as complete (they would fail again) unless ``retry_failed``.
        ``need_meta``: rows whose metadata was read by an older extractor are not complete.
        """
        sql = "SELECT a.path, a.size, a.mtime_ns FROM assets a"
        ok = "a.status = 'ok' AND a.phash_orient IS NOT NULL"   # schema < 5 rows: re-hash
        if need_meta:
            ok += f" AND coalesce(a.meta_version, 0) >= {int(need_meta)}"
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

    def contents_by_size(self, sizes: set[int], require_embedding: bool, need_meta: int = 0
                         ) -> dict[int, frozenset[str]]:
        """Content hashes of complete assets whose size is in ``sizes``, by size."""
        if not sizes:
            return {}
        sql = "SELECT DISTINCT a.size, a.content_hash FROM assets a JOIN _sz USING (size)"
        if require_embedding:
            sql += " JOIN embeddings e ON e.asset_id = a.id"
        sql += (" WHERE a.status = 'ok' AND a.content_hash IS NOT NULL"
                " AND a.phash_orient IS NOT NULL"
                f" AND coalesce(a.meta_version, 0) >= {int(need_meta)}")
        with registered(self.con, "_sz", size=(sorted(sizes), "int64")):
            rows = self.con.execute(sql).fetchall()
        out: dict[int, set[str]] = {}
        for size, digest in rows:
            out.setdefault(int(size), set()).add(digest)
        return {k: frozenset(v) for k, v in out.items()}

    def features_by_content(self, content_hashes: Iterable[str], require_embedding: bool,
                            need_meta: int = 0) -> dict[str, dict[str, Any]]:
        """Complete features of assets with these content hashes (one asset per hash)."""
        keys = sorted(set(content_hashes))
        if not keys:
            return {}
        join = "JOIN" if require_embedding else "LEFT JOIN"
        with registered(self.con, "_ch", content_hash=(keys, "string")):
            rows = self.con.execute(
                f"SELECT a.content_hash, a.width, a.height, a.format, "
                f"{', '.join('a.' + h for h in HASHES)}, a.phash_orient, "
                f"{', '.join('a.' + m for m in META_COLUMNS)}, e.scale, e.vector "
                f"FROM assets a JOIN _ch USING (content_hash) "
                f"{join} embeddings e ON e.asset_id = a.id "
                f"WHERE a.status = 'ok' AND a.phash_orient IS NOT NULL "
                f"AND coalesce(a.meta_version, 0) >= {int(need_meta)} ORDER BY a.id").fetchall()
        out: dict[str, dict[str, Any]] = {}
        for row in rows:
            ch, w, h, fmt, *rest, scale, vec = row
            hashes, oriented = rest[:len(HASHES)], rest[len(HASHES)]
            meta = dict(zip(META_COLUMNS, rest[len(HASHES) + 1:]))
            if meta.get("taken_at") is not None:
                meta["taken_at"] = meta["taken_at"].isoformat()
            emb = None if vec is None else codec.decode(np.asarray([vec], np.int8),
                                                          np.asarray([scale], np.float32))[0]
            out.setdefault(ch, {"width": w, "height": h, "format": fmt,
                                "hashes": {**dict(zip(HASHES, (int(x) for x in hashes))),
                                           **dict(zip(ORIENT_KEYS, map(int, oriented)))},
                                "embedding": emb, "meta": meta})
        return out

    def max_id(self) -> int:
        return int(self.con.execute("SELECT coalesce(max(id), 0) FROM assets").fetchall()[0][0])

    def asset(self, path: str) -> dict[str, Any] | None:
        cur = self.con.execute(f"SELECT {', '.join(READ_COLUMNS)} FROM assets WHERE path = ?",
                               [to_db(path)])
        row = first(cur.fetchall())
        return _row(row) if row else None

    def assets_by_ids(self, ids: Iterable[int]) -> dict[int, dict[str, Any]]:
        ids = [int(i) for i in ids]
        if not ids:
            return {}
        if len(ids) <= SMALL_ID_LIST:      # a query's k results: no pyarrow import for them
            cur = self.con.execute(f"SELECT {', '.join(READ_COLUMNS)} FROM assets WHERE id IN "
                                   f"(SELECT unnest(?::BIGINT[]))", [ids])
            return {row[0]: _row(row) for row in cur.fetchall()}
        with registered(self.con, "_q", id=(ids, "int64")):
            cur = self.con.execute(f"SELECT {', '.join('a.' + c for c in READ_COLUMNS)} "
                                   f"FROM assets a JOIN _q USING (id)")
            return {row[0]: _row(row) for row in cur.fetchall()}

    def contents_of(self, paths: Iterable[str]) -> dict[str, tuple[int, int, str]]:
        """(size, mtime_ns, content hash) of those of ``paths`` stored with a hash."""
        keys = [to_db(p) for p in paths]
        if not keys:
            return {}
        with registered(self.con, "_q", path=(keys, "string")):
            rows = self.con.execute("SELECT a.path, a.size, a.mtime_ns, a.content_hash FROM "
                                    "assets a JOIN _q USING (path) "
                                    "WHERE a.content_hash IS NOT NULL").fetchall()
        return {from_db(p): (int(s), int(m), h) for p, s, m, h in rows}

    def paths_by_ids(self, ids: np.ndarray) -> dict[int, str]:
        """id -> path of the given ids (only the paths: a million ids stay light)."""
        ids = np.asarray(ids, np.int64)
        if not len(ids):
            return {}
        with registered(self.con, "_q", id=(ids, "int64")):
            rows = self.con.execute("SELECT a.id, a.path FROM assets a JOIN _q USING (id)"
                                    ).fetchall()
        return {int(i): from_db(p) for i, p in rows}

    def hashes(self, kind: str) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64, hashes uint64) of every OK asset."""
        if kind not in HASHES:
            raise ValueError(f"unknown hash {kind!r}")
        cols = self.con.execute(f"SELECT id, {kind} FROM assets WHERE status = 'ok' "
                                f"AND {kind} IS NOT NULL ORDER BY id").fetchnumpy()
        return (np.asarray(cols["id"], dtype=np.int64),
                np.asarray(cols[kind], dtype=np.uint64))

    def ids_matching(self, filters: "Filters") -> np.ndarray:
        """Ids of the OK files matching ``filters`` (sorted)."""
        from .filters import where

        cond, params = where(filters)
        cols = self.con.execute(f"SELECT a.id FROM assets a WHERE a.status = 'ok' AND {cond} "
                                f"ORDER BY a.id", params).fetchnumpy()
        return np.asarray(cols["id"], np.int64)

    def same_content_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """(id_a, id_b) with a < b of every two OK assets with the same bytes (a hash join)."""
        cols = self.con.execute(
            "SELECT x.id AS a, y.id AS b FROM assets x JOIN assets y "
            "ON x.content_hash = y.content_hash AND x.id < y.id "
            "WHERE x.status = 'ok' AND y.status = 'ok' ORDER BY a, b").fetchnumpy()
        return (np.asarray(cols["a"], np.int64), np.asarray(cols["b"], np.int64))

    def oriented_phashes(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64, (n, 7) uint64): the pHashes of the other orientations of every OK
        asset that has them (``records.ORIENTATIONS[1:]``), in id order."""
        # one column per orientation: numpy straight from DuckDB (no pyarrow import)
        picks = ", ".join(f"phash_orient[{k}] AS o{k}" for k in range(1, len(ORIENT_KEYS) + 1))
        cols = self.con.execute(f"SELECT id, {picks} FROM assets WHERE status = 'ok' "
                                f"AND phash_orient IS NOT NULL ORDER BY id").fetchnumpy()
        ids = np.asarray(cols["id"], np.int64)
        mat = np.stack([np.asarray(cols[f"o{k}"], np.uint64)
                        for k in range(1, len(ORIENT_KEYS) + 1)], axis=1)
        return ids, mat.reshape(len(ids), len(ORIENT_KEYS))

    def embedding_count(self) -> int:
        return int(self.con.execute("SELECT count(*) FROM embeddings").fetchall()[0][0])

    def iter_embeddings(self, rows: int = 16384, ids: np.ndarray | None = None
                        ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids int64, vectors (n, dim) float32) in slices of ``rows``, in storage order;
        only the vectors of ``ids`` when given.

        Streams: memory is one slice, whatever the size of the index. The reader is
        its own cursor, so the caller may query the store between slices.
        """
        cur = self.con.cursor()
        want = np.zeros(0, np.int64) if ids is None else np.asarray(ids, np.int64)
        sql = "SELECT asset_id, scale, vector FROM embeddings"
        if ids is not None:
            sql += " WHERE asset_id IN (SELECT id FROM _want)"
        try:
            with registered(cur, "_want", id=(want, "int64")):
                # no ORDER BY: sorting would materialise the table inside DuckDB's memory limit
                for batch in cur.sql(sql).to_arrow_reader(rows):
                    out = batch.column(0).to_numpy().astype(np.int64)
                    yield out, codec.from_arrow(batch.column(2), batch.column(1), self.dim)
        finally:
            cur.close()

    def sample_embeddings(self, n: int, seed: int = 0) -> np.ndarray:
        """``n`` stored vectors drawn at random without replacement, (n, dim) float32.

        The ids are drawn here and the vectors streamed: a reservoir sample inside
        DuckDB would have to fit its memory limit.
        """
        all_ids = np.asarray(self.con.execute("SELECT asset_id FROM embeddings").fetchnumpy()
                             ["asset_id"], np.int64)
        pick = np.random.default_rng(seed).choice(all_ids, min(n, len(all_ids)), replace=False)
        del all_ids
        parts = [mat for _, mat in self.iter_embeddings(ids=pick)]
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32)

    def embedding_matrix(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, (n, dim) float32) of every stored vector, read without pyarrow: for a
        few thousand vectors at most, where importing pyarrow costs more than the read."""
        cols = self.con.execute("SELECT asset_id, scale, vector FROM embeddings").fetchnumpy()
        ids = np.asarray(cols["asset_id"], np.int64)
        if len(ids) == 0:
            return ids, np.zeros((0, self.dim), np.float32)
        codes = np.stack(cols["vector"]).astype(np.int8, copy=False)
        return ids, codec.decode(codes, np.asarray(cols["scale"], np.float32))

    def embeddings(self) -> tuple[np.ndarray, np.ndarray]:
        """Every stored vector at once: for tests and small stores only (queries stream)."""
        parts = list(self.iter_embeddings())
        if not parts:
            return np.zeros(0, np.int64), np.zeros((0, self.dim), np.float32)
        ids, mat = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        order = np.argsort(ids, kind="stable")
        return ids[order], mat[order]

    def embedding_of(self, asset_id: int) -> np.ndarray | None:
        row = first(self.con.execute("SELECT scale, vector FROM embeddings WHERE asset_id = ?",
                                      [int(asset_id)]).fetchall())
        if row is None:
            return None
        return codec.decode(np.asarray([row[1]], np.int8), np.asarray([row[0]], np.float32))[0]

    def failed_in_run(self, run_id: int) -> list[tuple[str, str]]:
        return [(from_db(p), e) for p, e in self.con.execute(
            "SELECT path, coalesce(error, '') FROM assets WHERE run_id = ? AND status <> 'ok' "
            "ORDER BY path", [run_id]).fetchall()]

    def vectors_version(self) -> int:
        row = first(self.con.execute(
            "SELECT value FROM meta WHERE key = 'vectors_version'").fetchall())
        return int(row[0]) if row else 0

    def run_metrics(self, run_id: int) -> dict[str, Any] | None:
        row = first(self.con.execute("SELECT metrics FROM runs WHERE id = ?", [run_id]).fetchall())
        return json.loads(row[0]) if row and row[0] else None




def _row(row: tuple) -> dict[str, Any]:
    out = dict(zip(READ_COLUMNS, row))
    out["path"] = from_db(out["path"])
    return out
