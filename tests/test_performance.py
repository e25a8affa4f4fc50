"""The seed's performance architecture: every config key changes real behaviour."""

from __future__ import annotations

import shutil

import duckdb
import numpy as np
import pytest
import torch
import yaml

import alice_gpu
from alice_gpu.config import load_config
from alice_gpu.decode import DecodePlan
from alice_gpu.discover import walk
from alice_gpu.features.extractor import FeatureExtractor
from alice_gpu.pipeline.dispatch import decode_stream
from alice_gpu.pipeline.pool import DecodePool
from alice_gpu.records import STATUS_OK, AssetRecord
from alice_gpu.store import DB_FILE, SCHEMA_VERSION, Store, stored_version


@pytest.fixture
def small(tmp_path, photos, near_dups):
    root = tmp_path / "media"
    root.mkdir()
    for src in sorted((photos / "images").iterdir())[:20]:
        shutil.copy2(src, root / src.name)
    for n in range(4):
        shutil.copy2(near_dups / "ukbench" / f"ukbench{n:05d}.jpg", root)
    return root


def _cfg(tmp_path, **sections):
    path = tmp_path / f"cfg{len(list(tmp_path.glob('cfg*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(sections))
    return load_config(path)


def _hashes(folder) -> dict[str, tuple]:
    con = duckdb.connect(str(folder / DB_FILE), read_only=True)
    try:
        rows = con.execute("SELECT path, ahash, dhash, phash, whash FROM assets").fetchall()
    finally:
        con.close()
    return {r[0].rsplit("/", 1)[1]: r[1:] for r in rows}


@pytest.mark.parametrize("embed", [False, True])
def test_worker_and_device_hashing_store_the_same_hashes(tmp_path, small, embed):
    """parallel_hash_computation moves the hashes into the decode workers; bits stay equal."""
    a = alice_gpu.open_index(tmp_path / "a", config=_cfg(
        tmp_path, performance={"parallel_hash_computation": True}))
    b = alice_gpu.open_index(tmp_path / "b", config=_cfg(
        tmp_path, performance={"parallel_hash_computation": False}))
    a.index([small], embed=embed, device="cpu")
    b.index([small], embed=embed, device="cpu")
    ha, hb = _hashes(tmp_path / "a"), _hashes(tmp_path / "b")
    assert len(ha) == 24
    same = sum(ha[k] == hb[k] for k in ha)
    assert same >= 23, (same, len(ha))


def test_row_by_row_and_tiny_transactions_store_the_same_rows(tmp_path, small):
    bulk = alice_gpu.open_index(tmp_path / "bulk")
    rows = alice_gpu.open_index(tmp_path / "rows", config=_cfg(tmp_path, performance={
        "enable_batch_operations": False, "transaction_size": 3, "batch_insert_size": 2,
        "batch_size": 5}))
    s1 = bulk.index([small], embed=False)
    s2 = rows.index([small], embed=False)
    assert (s1.decoded, s2.decoded) == (24, 24)
    assert _hashes(tmp_path / "bulk") == _hashes(tmp_path / "rows")


@pytest.mark.parametrize("profile, workers, batch", [("memory", 4, 50), ("fast", 16, 200)])
def test_profiles_change_workers_and_batch_size(tmp_path, small, profile, workers, batch):
    import os

    idx = alice_gpu.open_index(tmp_path / profile, config=load_config(profile=profile))
    summary = idx.index([small], embed=False)
    assert summary.batch_size == batch
    assert summary.workers == min(workers, os.cpu_count())     # capped at the cores present


def test_metrics_are_reported_and_stored(tmp_path, small):
    idx = alice_gpu.open_index(tmp_path / "m")
    summary = idx.index([small], device="cpu")
    m = summary.metrics
    assert m["files_processed"] == 24 and m["processing_time"] > 0
    assert m["average_file_time"] == pytest.approx(m["processing_time"] / 24, rel=0.01)
    assert m["memory_usage_mb"] > 50
    assert 0 < m["batch_efficiency"] <= 1
    assert set(m["stage_seconds"]) == {"discover", "decode", "transfer", "compute", "write"}
    assert m["stage_seconds"]["compute"] > 0
    with Store(tmp_path / "m", model="efficientnet_lite0", dim=1280, read_only=True) as store:
        assert store.run_metrics(summary.run_id) == m


def test_identical_file_elsewhere_is_not_decoded_again(tmp_path, small):
    idx = alice_gpu.open_index(tmp_path / "c")
    idx.index([small], device="cpu")
    other = tmp_path / "other"
    other.mkdir()
    src = sorted(small.iterdir())[0]
    shutil.copy2(src, other / "twin.jpg")
    shutil.copy2(src, other / "twin2.jpg")
    summary = idx.index([small, other], device="cpu")
    assert (summary.decoded, summary.reused, summary.unchanged) == (0, 2, 24)
    assert summary.metrics["cache_hit_rate"] == 1.0
    top = idx.similar(other / "twin.jpg", k=3).results
    assert {m.path for m in top if m.score > 0.9999} >= {str(src), str(other / "twin.jpg")}


def test_query_cache_hits_and_is_invalidated_by_writes(tmp_path, small):
    idx = alice_gpu.open_index(tmp_path / "q")
    idx.index([small], device="cpu")
    q = sorted(small.iterdir())[3]
    first = idx.similar(q, k=3)
    assert idx.similar(q, k=3) is first and idx.cache.hits == 1
    (small / "new.jpg").write_bytes((small / sorted(p.name for p in small.iterdir())[0]).read_bytes() + b"x")
    idx.index([small], device="cpu")
    assert idx.similar(q, k=3) is not first
    nocache = alice_gpu.open_index(tmp_path / "q", config=_cfg(
        tmp_path, performance={"search_cache_size": 0}))
    nocache.similar(q, k=3)
    assert nocache.similar(q, k=3) is not nocache.similar(q, k=3)
    stale = alice_gpu.open_index(tmp_path / "q", config=_cfg(
        tmp_path, performance={"cache_ttl_seconds": 0}))
    r = stale.similar(q, k=3)
    assert stale.similar(q, k=3) is not r


def test_small_jobs_decode_in_process_and_large_ones_in_a_pool(small):
    entries = list(walk([small]))
    plan = DecodePlan(64, "L", hash_in_worker=True, keep_pixels=False)
    pool = DecodePool(2, timeout=60)
    try:
        calls = []
        real_submit = pool.submit
        pool.submit = lambda *a, **k: calls.append(1) or real_submit(*a, **k)
        small_run = list(decode_stream(entries, plan, pool, max_in_flight=8,
                                       parallel_threshold=len(entries) + 1))
        assert calls == []                         # below the threshold: in-process
        big_run = list(decode_stream(entries, plan, pool, max_in_flight=8,
                                     parallel_threshold=len(entries)))
        assert len(calls) >= 3                     # chunks of at most 2 files went to the pool
    finally:
        pool.close()
    assert [d.path for d in small_run] == [d.path for d in big_run] == [e.path for e in entries]
    assert [d.hashes for d in small_run] == [d.hashes for d in big_run]


def test_a_batch_that_fails_on_the_device_is_retried_item_by_item(monkeypatch):
    ext = FeatureExtractor(torch.device("cpu"), None)
    real = ext._launch

    def fragile(batch, *a, **k):
        if (batch == 13).all(dim=(1, 2, 3)).any():   # the poisoned image
            raise RuntimeError("kernel fault")
        return real(batch, *a, **k)

    monkeypatch.setattr(ext, "_launch", fragile)
    imgs = [np.full((64, 64, 3), v, np.uint8) for v in (10, 13, 200)]
    out = ext.extract(imgs, embed=False)
    assert out[0].error is None and out[2].error is None
    assert out[1].error and "kernel fault" in out[1].error


def test_schema_1_is_migrated_with_a_backup(tmp_path):
    folder = tmp_path / "old"
    Store(folder, model="test", dim=4).close()
    con = duckdb.connect(str(folder / DB_FILE))
    con.execute("ALTER TABLE assets DROP COLUMN content_hash")
    con.execute("ALTER TABLE runs DROP COLUMN metrics")
    con.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    con.close()
    # the hint is a command that works as printed: an index run on the index's folders
    with pytest.raises(Exception, match=r"migrate it once with alice-gpu index \S+ --db "):
        Store(folder, model="test", dim=4, read_only=True)
    with Store(folder, model="test", dim=4) as store:
        assert stored_version(store.con) == SCHEMA_VERSION
        cols = {r[0] for r in store.con.execute("DESCRIBE assets").fetchall()}
        assert "content_hash" in cols
    assert (folder / f"{DB_FILE}.v1.bak").exists()


def test_schema_2_blake2b_content_hashes_are_dropped_with_a_backup(tmp_path):
    """Schema 2 stored blake2b-128 content hashes; SHA-256 values could never match them."""
    folder = tmp_path / "v2"
    with Store(folder, model="test", dim=4) as store:
        store.write_batch([AssetRecord("/x/a.jpg", 10, 1, STATUS_OK, width=8, height=8,
                                       format="JPEG", id=1, content_hash="ab" * 16)])
    con = duckdb.connect(str(folder / DB_FILE))
    con.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    con.close()
    with Store(folder, model="test", dim=4) as store:
        assert stored_version(store.con) == SCHEMA_VERSION
        assert store.con.execute("SELECT path, content_hash FROM assets").fetchall() == [
            ("/x/a.jpg", None)]
    assert (folder / f"{DB_FILE}.v2.bak").exists()


def test_schema_3_float_vectors_become_int8_codes_with_a_backup(tmp_path):
    """Schema 3 stored FLOAT[dim] vectors (5 KB at 1280-d); 4 stores int8 codes + a scale."""
    folder = tmp_path / "v3"
    rng = np.random.default_rng(3)
    vecs = rng.standard_normal((5, 4)).astype(np.float32)
    vecs[2] = 0.0                                         # a zero vector stays zero
    Store(folder, model="test", dim=4).close()
    con = duckdb.connect(str(folder / DB_FILE))
    con.execute("DROP TABLE embeddings")
    con.execute("CREATE TABLE embeddings (asset_id BIGINT PRIMARY KEY, model VARCHAR NOT NULL, "
                "vector FLOAT[4] NOT NULL)")
    for i, v in enumerate(vecs):
        con.execute("INSERT INTO embeddings VALUES (?, 'test', ?)", [i + 1, v.tolist()])
    con.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    con.close()
    with Store(folder, model="test", dim=4) as store:
        assert stored_version(store.con) == SCHEMA_VERSION
        ids, got = store.embeddings()
        version = store.vectors_version()
    assert ids.tolist() == [1, 2, 3, 4, 5]
    unit = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-30)
    assert np.all(got[2] == 0)
    keep = [0, 1, 3, 4]
    assert np.min(np.sum(got[keep] * unit[keep], axis=1)) > 0.999
    assert version >= 1                                   # the old FAISS file is now stale
    assert (folder / f"{DB_FILE}.v3.bak").exists()


def test_schema_4_gains_orientation_hashes_filled_by_the_next_index_run(tmp_path, photos):
    """Schema 4 had no orientation pHashes: the migration adds the column, and the next
    index run re-hashes those files (and only them) so rotated copies are found."""
    from alice_gpu import open_index

    media = tmp_path / "m"
    media.mkdir()
    for src in sorted((photos / "images").iterdir())[:3]:
        (media / src.name).write_bytes(src.read_bytes())
    api = open_index(tmp_path / "db")
    api.index([media], embed=False)
    con = duckdb.connect(str(tmp_path / "db" / DB_FILE))
    con.execute("ALTER TABLE assets DROP COLUMN phash_orient")
    con.execute("UPDATE meta SET value = '4' WHERE key = 'schema_version'")
    con.close()
    with Store(tmp_path / "db", model="efficientnet_lite0", dim=1280) as store:
        assert stored_version(store.con) == SCHEMA_VERSION
        assert store.oriented_phashes()[0].tolist() == []
        assert store.known_state(require_embedding=False) == {}
    assert (tmp_path / "db" / f"{DB_FILE}.v4.bak").exists()
    summary = api.index([media], embed=False)
    assert summary.decoded == 3
    with Store(tmp_path / "db", model="efficientnet_lite0", dim=1280, read_only=True) as store:
        assert len(store.oriented_phashes()[0]) == 3
    assert api.index([media], embed=False).decoded == 0


def test_schema_5_gains_metadata_and_tags_read_by_the_next_index_run(tmp_path):
    """Schema 5 had no metadata columns and no tags: the migration adds them, and the
    next index run reads the metadata of the files already indexed, once."""
    from alice_gpu import open_index
    from conftest import shared

    media = tmp_path / "m"
    media.mkdir()
    pug = shared("modern_formats") / "heic" / "pug.heic"
    (media / "pug.heic").write_bytes(pug.read_bytes())
    api = open_index(tmp_path / "db")
    api.index([media], embed=False)
    con = duckdb.connect(str(tmp_path / "db" / DB_FILE))
    from alice_gpu.store.schema import META_TYPES
    for col in META_TYPES:
        con.execute(f"ALTER TABLE assets DROP COLUMN {col}")
    con.execute("DROP TABLE tags")
    con.execute("UPDATE meta SET value = '5' WHERE key = 'schema_version'")
    con.close()
    with Store(tmp_path / "db", model="efficientnet_lite0", dim=1280) as store:
        assert stored_version(store.con) == SCHEMA_VERSION
        assert store.tag_counts() == []
        assert store.record(str(media / "pug.heic"))["camera_model"] is None
    assert (tmp_path / "db" / f"{DB_FILE}.v5.bak").exists()
    assert api.index([media], embed=False).decoded == 1           # read again, once
    assert api.show(media / "pug.heic")["camera_model"] == "iPhone 13 Pro"
    assert api.index([media], embed=False).decoded == 0


def test_int8_codec_keeps_cosine_and_sizes():
    from alice_gpu.store import codec

    rng = np.random.default_rng(0)
    mat = np.abs(rng.standard_normal((64, 1280))).astype(np.float32)
    mat /= np.linalg.norm(mat, axis=1, keepdims=True)
    codes, scale = codec.encode(mat)
    assert codes.dtype == np.int8 and codes.nbytes + scale.nbytes == 64 * 1284
    back = codec.decode(codes, scale)
    assert np.min(np.sum(back * mat, axis=1)) > 0.9998
    assert np.allclose(np.linalg.norm(back, axis=1), 1.0, atol=1e-5)


def test_content_hash_is_the_sha256_users_can_check(photos):
    import hashlib

    from alice_gpu.decode import decode_path

    src = sorted((photos / "images").iterdir())[0]
    assert decode_path(str(src), 64).content_hash == hashlib.sha256(src.read_bytes()).hexdigest()


def test_out_of_memory_halves_the_batch_and_never_fails_files(monkeypatch):
    ext = FeatureExtractor(torch.device("cpu"), None)
    real = ext._launch
    sizes = []

    def small_memory(batch, *a, **k):
        sizes.append(len(batch))
        if len(batch) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(batch, *a, **k)

    monkeypatch.setattr(ext, "_launch", small_memory)
    imgs = [np.full((64, 64, 3), v, np.uint8) for v in range(0, 240, 30)]   # 8 images
    out = ext.extract(imgs, embed=False)
    assert all(f.error is None for f in out) and len(out) == 8
    assert sizes[0] == 8 and max(sizes[1:]) <= 4 and 2 in sizes
    ref = FeatureExtractor(torch.device("cpu"), None).extract(imgs, embed=False)
    assert [f.hashes for f in out] == [f.hashes for f in ref]
