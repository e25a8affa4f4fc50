"""The frames table: each video's sampled frames (time, pHashes, int8 embedding).

Written in the same transaction as the video's row, removed with it; read in
chunks (searching frames) or as arrays of hashes (aligning videos), never as
Python rows per frame.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

from ..records import ORIENT_KEYS, STATUS_OK, AssetRecord
from . import codec

if TYPE_CHECKING:
    import duckdb

FRAME_COLUMNS = ("asset_id", "idx", "t", "phash", "phash_orient", "scale", "vector")


class Frames:
    """Mixed into :class:`~alice_gpu.store.Store` (``con``, ``dim``)."""

    con: "duckdb.DuckDBPyConnection"
    dim: int

    def _write_frames(self, records: Sequence[AssetRecord]) -> None:
        """Replace the frames of the batch's rows (``_ids`` is registered by the caller,
        inside its transaction)."""
        import pyarrow as pa

        self.con.execute("DELETE FROM frames WHERE asset_id IN (SELECT id FROM _ids)")
        videos = [r for r in records if r.frames is not None and r.status == STATUS_OK
                  and r.frames.hashes]
        if not videos:
            return
        ids, idx, t, ph, orient, embs = [], [], [], [], [], []
        for r in videos:
            f = r.frames
            n = len(f.times)
            ids += [r.id] * n
            idx += list(range(n))
            t += [float(x) for x in f.times]
            ph += [h.get("phash") for h in f.hashes]
            orient += [[h.get(k) for k in ORIENT_KEYS] if all(k in h for k in ORIENT_KEYS)
                       else None for h in f.hashes]
            embs.append(f.embeddings if f.embeddings is not None
                        else np.full((n, self.dim), np.nan, np.float32))
        mat = np.concatenate(embs).astype(np.float32)
        missing = np.isnan(mat).any(axis=1)
        codes, scales = codec.encode(np.nan_to_num(mat))
        scale, vector = codec.to_arrow(codes, scales, self.dim)
        if missing.any():
            scale = pa.array(np.where(missing, None, scales).tolist(), pa.float32())
            vector = pa.array([None if m else v for m, v in zip(missing, vector.to_pylist())],
                              vector.type)
        table = pa.table({
            "asset_id": pa.array(ids, pa.int64()), "idx": pa.array(idx, pa.int16()),
            "t": pa.array(t, pa.float64()), "phash": pa.array(ph, pa.uint64()),
            "phash_orient": pa.array(orient, pa.list_(pa.uint64(), len(ORIENT_KEYS))),
            "scale": scale, "vector": vector})
        self.con.register("_frames", table)
        try:
            self.con.execute(f"INSERT INTO frames ({', '.join(FRAME_COLUMNS)}) "
                             f"SELECT {', '.join(FRAME_COLUMNS)} FROM _frames")
        finally:
            self.con.unregister("_frames")

    def frame_hashes(self) -> dict[str, np.ndarray]:
        """Every frame's asset id, time and pHashes, ordered by video then time:
        ``orient`` is (N, 7), zero where a row has none (8 numbers a frame in memory)."""
        rows = self.con.execute(
            "SELECT asset_id, t, coalesce(phash, 0::UBIGINT) AS phash, "
            "coalesce(phash_orient, [0,0,0,0,0,0,0]::UBIGINT[7]) AS o "
            "FROM frames ORDER BY asset_id, t").fetchnumpy()
        orient = rows["o"]
        return {"id": np.asarray(rows["asset_id"], np.int64),
                "t": np.asarray(rows["t"], np.float64),
                "phash": np.asarray(rows["phash"], np.uint64),
                "orient": (np.stack([np.asarray(o, np.uint64) for o in orient])
                           if len(orient) else np.zeros((0, 7), np.uint64))}

    def iter_frame_embeddings(self, rows: int = 8192
                              ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Frames' (asset ids, times, unit vectors) in slices of ``rows``: memory is one
        slice, whatever the number of frames (its own cursor, as ``iter_embeddings``)."""
        cur = self.con.cursor()
        try:
            sql = "SELECT asset_id, t, scale, vector FROM frames WHERE vector IS NOT NULL"
            for batch in cur.sql(sql).to_arrow_reader(rows):
                yield (batch.column(0).to_numpy().astype(np.int64),
                       batch.column(1).to_numpy().astype(np.float64),
                       codec.from_arrow(batch.column(3), batch.column(2), self.dim))
        finally:
            cur.close()

    def frame_embeddings(self, asset_id: int) -> tuple[np.ndarray, np.ndarray]:
        """One video's (times, (F, dim) unit vectors), by time."""
        cols = self.con.execute("SELECT t, scale, vector FROM frames WHERE asset_id = ? AND "
                                "vector IS NOT NULL ORDER BY t", [int(asset_id)]).fetchnumpy()
        t = np.asarray(cols["t"], np.float64)
        if not len(t):
            return t, np.zeros((0, self.dim), np.float32)
        codes = np.stack(cols["vector"]).astype(np.int8, copy=False)
        return t, codec.decode(codes, np.asarray(cols["scale"], np.float32))

    def video_durations(self, ids: np.ndarray) -> dict[int, float | None]:
        """Each video's duration in seconds (None where the container states none)."""
        rows = self.con.execute("SELECT id, duration FROM assets WHERE kind = 'video' AND "
                                "id IN (SELECT unnest(?::BIGINT[]))",
                                [np.asarray(ids, np.int64).tolist()]).fetchall()
        return {int(i): d for i, d in rows}

    def video_ids(self) -> np.ndarray:
        """The ids of the indexed videos, sorted."""
        return np.asarray(self.con.execute(
            "SELECT id FROM assets WHERE kind = 'video' ORDER BY id").fetchnumpy()["id"],
            np.int64)

    def frame_count(self) -> int:
        return int(self.con.execute("SELECT count(*) FROM frames").fetchall()[0][0])
