"""Reads of the store for a person: find, show, stats, tags and decisions about duplicates.

What the commands that need no model ask (``find``, ``show``, ``stats``, ``tag``),
shaped in DuckDB so that 100,000 rows stay well under a second, and the decisions
a person made about duplicate groups as they still hold.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Iterator

import duckdb

from ..config import HASH_NAMES as HASHES
from .paths import from_db, to_db
from .schema import ASSET_COLUMNS, META_COLUMNS, first

if TYPE_CHECKING:
    from .filters import Filters

# each tagged file's tags, sorted: joined once rather than looked up per row
_TAG_LISTS = "SELECT asset_id, list(tag ORDER BY tag) AS tags FROM tags GROUP BY asset_id"


class Catalog:
    """The person-facing read side of :class:`~alice_gpu.store.Store` (a mixin)."""

    con: duckdb.DuckDBPyConnection

    FIND_COLUMNS = ("id", "path", "status", "format", "width", "height", "size", "taken_at",
                    "camera_make", "camera_model", "ai_source", "prompt", "ai_model", "seed",
                    *HASHES)

    def find(self, filters: "Filters", limit: int | None = None) -> list[dict[str, Any]]:
        """The files matching ``filters`` (all files when empty), by path, with their tags.

        One query; the tags are aggregated in DuckDB, not looked up per row."""
        from .filters import where

        cond, params = where(filters)
        cols = ", ".join(f"a.{c}" for c in self.FIND_COLUMNS)
        sql = (f"SELECT {cols}, g.tags FROM assets a LEFT JOIN ({_TAG_LISTS}) g "
               f"ON g.asset_id = a.id WHERE {cond} ORDER BY a.path")
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        rows = self.con.execute(sql, params).fetchall()
        names = (*self.FIND_COLUMNS, "tags")
        out = []
        for row in rows:
            d = dict(zip(names, row))
            d["path"] = from_db(d["path"])
            d["tags"] = d["tags"] or []
            out.append(d)
        return out

    def find_json(self, filters: "Filters", limit: int | None = None, chunk: int = 8192
                  ) -> Iterator[list[str]]:
        """``find``'s results as JSON objects, one string per file, made by DuckDB (hashes
        in imagehash's hex; Python objects for 100,000 rows take seconds), in chunks."""
        from .filters import where

        cond, params = where(filters)
        hexes = ", ".join(f"'{h}': printf('%016x', a.{h})" for h in HASHES)
        sql = f"""SELECT to_json({{'path': a.path, 'ai_source': a.ai_source, 'prompt': a.prompt,
              'tags': coalesce(g.tags, []),
              'taken_at': strftime(a.taken_at, '%Y-%m-%dT%H:%M:%S'),
              'camera': nullif(concat_ws(' ', a.camera_make, a.camera_model), ''), {hexes},
              'id': a.id, 'status': a.status, 'format': a.format, 'width': a.width,
              'height': a.height, 'size': a.size, 'ai_model': a.ai_model,
              'seed': a.seed}})::VARCHAR
              FROM assets a LEFT JOIN ({_TAG_LISTS}) g ON g.asset_id = a.id
              WHERE {cond} ORDER BY a.path"""
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        cur = self.con.cursor()
        try:
            cur.execute(sql, params)
            while True:
                rows = cur.fetchmany(chunk)
                if not rows:
                    return
                out = [row[0] for row in rows]
                for k, text in enumerate(out):
                    if text.startswith('{"path":"raw:'):      # a non-UTF-8 name: its bytes
                        doc = json.loads(text)
                        doc["path"] = from_db(doc["path"])
                        out[k] = json.dumps(doc, ensure_ascii=True)
                yield out
        finally:
            cur.close()

    def find_lines(self, filters: "Filters", limit: int | None = None
                   ) -> list[tuple[str, str, str | None, str | None]]:
        """``find``'s terminal lines as (path, generator or camera, prompt head, tags),
        shaped in DuckDB so that listing 100,000 files stays well under a second."""
        from .filters import where

        cond, params = where(filters)
        sql = f"""SELECT a.path,
              CASE WHEN coalesce(a.ai_source, 'none') <> 'none' THEN a.ai_source
                   ELSE coalesce(nullif(concat_ws(' ', a.camera_make, a.camera_model), ''), '-')
              END,
              replace(replace(left(a.prompt, 80), chr(10), ' '), chr(13), ' '),
              array_to_string(g.tags, ', ')
              FROM assets a LEFT JOIN ({_TAG_LISTS}) g ON g.asset_id = a.id
              WHERE {cond} ORDER BY a.path"""
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [(from_db(p), w, pr, tg) for p, w, pr, tg in self.con.execute(sql, params).fetchall()]

    ORGANIZE_COLUMNS = ("id", "path", "size", "mtime_ns", "status", "format", "content_hash",
                        "kind", "taken_at", "taken_from", "camera_make", "camera_model",
                        "ai_source", "ai_model")

    def organize_page(self, folder: str, after: str = "", limit: int = 4096
                      ) -> tuple[list[dict[str, Any]], str]:
        """What ``organize`` files by, for up to ``limit`` rows under ``folder`` after the
        stored path ``after`` (in stored order), and the key of the next page."""
        from .filters import folder_condition

        cond, params = folder_condition(folder, "a")
        cols = self.ORGANIZE_COLUMNS
        rows = self.con.execute(
            f"SELECT {', '.join('a.' + c for c in cols)}, (SELECT list(t.tag ORDER BY t.tag) "
            f"FROM tags t WHERE t.asset_id = a.id) FROM assets a WHERE {cond} AND a.path > ? "
            f"ORDER BY a.path LIMIT {int(limit)}", [*params, after]).fetchall()
        out = []
        for row in rows:
            item = dict(zip(cols, row[:len(cols)]))
            item["path"], item["tags"] = from_db(item["path"]), row[len(cols)] or []
            out.append(item)
        return out, (rows[-1][1] if rows else after)

    def record(self, path: str) -> dict[str, Any] | None:
        """One file's whole row: what the index knows, its metadata, tags and whether it has
        an embedding (``ai_meta`` parsed back from JSON)."""
        return self._record("a.path = ?", to_db(path))

    def record_by_id(self, asset_id: int) -> dict[str, Any] | None:
        return self._record("a.id = ?", int(asset_id))

    def _record(self, condition: str, value: Any) -> dict[str, Any] | None:
        cols = (*ASSET_COLUMNS, *META_COLUMNS)
        row = first(self.con.execute(
            f"SELECT {', '.join('a.' + c for c in cols)}, "
            f"(SELECT list(t.tag ORDER BY t.tag) FROM tags t WHERE t.asset_id = a.id), "
            f"EXISTS (SELECT 1 FROM embeddings e WHERE e.asset_id = a.id) "
            f"FROM assets a WHERE {condition}", [value]).fetchall())
        if row is None:
            return None
        out = dict(zip(cols, row[:len(cols)]))
        out["path"] = from_db(out["path"])
        out["tags"], out["embedded"] = row[len(cols)] or [], bool(row[len(cols) + 1])
        if out.get("ai_meta"):
            try:
                out["ai_meta"] = json.loads(out["ai_meta"])
            except ValueError:
                pass
        return out

    BROWSE_COLUMNS = ("id", "path", "width", "height", "size", "format", "taken_at",
                      "ai_source", "ai_model", "camera_make", "camera_model", "status", "error",
                      "prompt")
    SORTS = {"taken": "coalesce(a.taken_at, make_timestamp(a.mtime_ns // 1000))",
             "path": "a.path", "size": "a.size"}

    def browse(self, filters: "Filters", sort: str = "taken", descending: bool = True,
               offset: int = 0, limit: int = 100, failed: bool = False) -> dict[str, Any]:
        """A page of files for a grid: ``total`` matching, and ``items`` sorted (the id
        breaks ties, so pages never overlap); ``failed``: the failed files instead."""
        from .filters import where

        cond, params = where(filters)
        cond += " AND a.status " + ("<> 'ok'" if failed else "= 'ok'")
        order = f"{self.SORTS[sort]} {'DESC' if descending else 'ASC'}, a.id"
        total = self.con.execute(f"SELECT count(*) FROM assets a WHERE {cond}",
                                 params).fetchall()[0][0]
        rows = self.con.execute(
            f"SELECT {', '.join('a.' + c for c in self.BROWSE_COLUMNS)}, "
            f"left(a.prompt, 200) FROM assets a WHERE {cond} ORDER BY {order} "
            f"LIMIT {int(limit)} OFFSET {int(offset)}", params).fetchall()
        items = []
        for row in rows:
            item = dict(zip(self.BROWSE_COLUMNS, row[:-1]))
            item["path"], item["prompt"] = from_db(item["path"]), row[-1]
            items.append(item)
        return {"total": int(total), "offset": int(offset), "items": items}

    def decision_constraints(self) -> tuple[dict[int, frozenset[int]], set[int]]:
        """What a person decided about duplicate groups, as it still holds: for "not
        duplicates", each file's decisions (two files sharing one are not a pair); the
        keepers chosen by hand. A file changed since (another content hash) drops out."""
        rows = self.con.execute(
            "SELECT d.id, d.kind, d.keeper, m.asset_id FROM decisions d "
            "JOIN decision_members m ON m.decision_id = d.id "
            "JOIN assets a ON a.id = m.asset_id "
            "WHERE a.status = 'ok' AND a.content_hash IS NOT DISTINCT FROM m.content_hash"
        ).fetchall()
        apart: dict[int, set[int]] = {}
        members: dict[int, set[int]] = {}
        keepers: dict[int, int] = {}
        for decision, kind, keeper, asset in rows:
            members.setdefault(decision, set()).add(int(asset))
            if kind == "not-duplicates":
                apart.setdefault(int(asset), set()).add(int(decision))
            elif kind == "keeper" and keeper is not None:
                keepers[decision] = int(keeper)
        chosen = {k for d, k in keepers.items() if k in members[d] and len(members[d]) > 1}
        return {a: frozenset(ds) for a, ds in apart.items()}, chosen

    def decisions(self) -> list[dict[str, Any]]:
        """Every decision with its files (``path``; ``changed`` when the file's content is
        no longer what it was, or it is gone), newest first."""
        rows = self.con.execute(
            "SELECT d.id, d.kind, d.keeper, d.made_at, m.asset_id, a.path, "
            "a.content_hash IS NOT DISTINCT FROM m.content_hash AND a.status = 'ok' "
            "FROM decisions d JOIN decision_members m ON m.decision_id = d.id "
            "LEFT JOIN assets a ON a.id = m.asset_id ORDER BY d.id DESC, m.asset_id"
        ).fetchall()
        out: dict[int, dict[str, Any]] = {}
        for decision, kind, keeper, made_at, asset, path, same in rows:
            doc = out.setdefault(decision, {"id": int(decision), "kind": kind,
                                            "keeper": keeper, "made_at": made_at, "files": []})
            doc["files"].append({"id": int(asset), "path": None if path is None
                                 else from_db(path), "changed": not same})
        return list(out.values())

    def tag_counts(self) -> list[tuple[str, int]]:
        return [(t, int(n)) for t, n in self.con.execute(
            "SELECT tag, count(*) FROM tags GROUP BY tag ORDER BY tag").fetchall()]

    def index_roots(self) -> list[str]:
        """Every folder (or file) an index run was given, as stored."""
        out: set[str] = set()
        for (text,) in self.con.execute("SELECT DISTINCT roots FROM runs WHERE roots IS NOT NULL"
                                        ).fetchall():
            try:
                out.update(str(r) for r in json.loads(text))
            except ValueError:
                continue
        return sorted(out)

    def stats(self) -> dict[str, Any]:
        q = self.con.execute
        assets = q("SELECT count(*) FROM assets WHERE status = 'ok'").fetchall()[0][0]
        failed = q("SELECT count(*) FROM assets WHERE status <> 'ok'").fetchall()[0][0]
        embedded = q("SELECT count(*) FROM embeddings").fetchall()[0][0]
        total_bytes = q("SELECT coalesce(sum(size), 0) FROM assets WHERE status = 'ok'").fetchall()[0][0]
        formats = dict(q("SELECT format, count(*) FROM assets WHERE status = 'ok' "
                         "GROUP BY format ORDER BY 2 DESC").fetchall())
        last = first(q("SELECT id, finished_at, files_seen, decoded, unchanged, failed, removed, "
                       "seconds, skipped FROM runs WHERE status IS NOT NULL ORDER BY id DESC "
                       "LIMIT 1").fetchall())
        errors = q("SELECT path, error FROM assets WHERE status <> 'ok' ORDER BY path LIMIT 20"
                   ).fetchall()
        return {
            "assets": int(assets), "failed": int(failed), "embedded": int(embedded),
            "model": self.model, "space": self.space,
            "bytes": int(total_bytes), "formats": {str(k): int(v) for k, v in formats.items()},
            "last_run": None if last is None else dict(zip(
                ("id", "finished_at", "files_seen", "decoded", "unchanged", "failed",
                 "removed", "seconds"), (*last[:1], str(last[1]), *last[2:8]))),
            # files under the roots the last run did not index, by kind (videos without
            # the [video] extra are counted as such)
            "skipped": json.loads(last[8]) if last and last[8] else {},
            "videos": int(q("SELECT count(*) FROM assets WHERE kind = 'video' AND status = 'ok'"
                            ).fetchall()[0][0]),
            "failed_files": [{"path": from_db(p), "error": e} for p, e in errors],
            **self._breakdowns(),
        }

    def _breakdowns(self) -> dict[str, Any]:
        """Counts by source and by year (taken, or modified), and failures by reason (the
        reason's words before any detail in parentheses or after a colon)."""
        q = self.con.execute
        sources = q("SELECT coalesce(ai_source, 'none'), count(*) FROM assets "
                    "WHERE status = 'ok' GROUP BY 1 ORDER BY 2 DESC").fetchall()
        years = q("SELECT year(coalesce(taken_at, make_timestamp(mtime_ns // 1000))), count(*) "
                  "FROM assets WHERE status = 'ok' GROUP BY 1 ORDER BY 1").fetchall()
        reasons = q("SELECT trim(regexp_extract(coalesce(error, 'unknown'), '^[^(:]*')), "
                    "count(*) FROM assets WHERE status <> 'ok' GROUP BY 1 "
                    "ORDER BY 2 DESC, 1 LIMIT 20").fetchall()
        return {"by_source": {str(k): int(v) for k, v in sources},
                "by_year": {str(k): int(v) for k, v in years if k is not None},
                "failures_by_reason": {str(k) or "unknown": int(v) for k, v in reasons}}

    def revision(self) -> tuple[int, int]:
        """(revision, layout): the first goes up with every write that can change which
        files are duplicates (rows, features, vectors); the second with every move and
        decision. Groups stored with them are stale, or out of date, once they move."""
        rows = dict(self.con.execute("SELECT key, value FROM meta WHERE key IN "
                                     "('revision', 'layout')").fetchall())
        return int(rows.get("revision", 0)), int(rows.get("layout", 0))
