from __future__ import annotations

import json

import numpy as np
import pytest

from alice_gpu.errors import StoreError
from alice_gpu.records import ORIENT_KEYS, AssetRecord
from alice_gpu.search.hamming import hamming_pairs, hamming_topk
from alice_gpu.search.vectors import INDEX_FILE, SIDECAR_FILE, VectorIndex
from alice_gpu.store import Store

DIM = 8


def _rec(i: int, path: str | None = None, vec: bool = True, status: str = "ok") -> AssetRecord:
    rng = np.random.default_rng(i)
    v = rng.normal(size=DIM).astype(np.float32)
    return AssetRecord(path=path or f"/p/{i}.jpg", size=100 + i, mtime_ns=1000 + i, status=status,
                       width=10, height=10, format="JPEG",
                       hashes={"ahash": 2**63 + i, "dhash": i, "phash": i * 3, "whash": i * 5,
                               **{k: 2**63 + i * 11 + n for n, k in enumerate(ORIENT_KEYS)}},
                       embedding=(v / np.linalg.norm(v)) if vec else None, id=i)


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "idx", model="test", dim=DIM)
    yield s
    s.close()


def test_bulk_write_roundtrip_keeps_uint64_hashes(store):
    res = store.write_batch([_rec(i) for i in range(1, 6)])
    assert res.written == 5 and res.failed_rows == []
    ids, hashes = store.hashes("ahash")
    assert ids.tolist() == [1, 2, 3, 4, 5] and hashes[0] == np.uint64(2**63 + 1)
    eids, mat = store.embeddings()
    assert eids.tolist() == [1, 2, 3, 4, 5] and mat.shape == (5, DIM)
    assert store.stats()["assets"] == 5


def test_upsert_keeps_id_and_replaces_embedding(store):
    store.write_batch([_rec(1)])
    v0 = store.vectors_version()
    changed = _rec(1)
    changed.size, changed.embedding = 999, None          # re-done without embedding
    store.write_batch([changed])
    assert store.asset("/p/1.jpg")["size"] == 999
    assert store.embedding_of(1) is None                 # the stale vector is gone
    assert store.vectors_version() > v0
    assert store.known_state(require_embedding=True) == {}
    assert store.known_state(require_embedding=False) == {"/p/1.jpg": (999, 1001)}


def test_bad_row_is_isolated_from_its_batch(store):
    # two rows claiming the same path: the batch fails, the retry keeps the good rows
    batch = [_rec(1), _rec(2), _rec(3, path="/p/1.jpg"), _rec(4)]
    res = store.write_batch(batch)
    assert res.written == 3
    assert [p for p, _ in res.failed_rows] == ["/p/1.jpg"]
    assert sorted(store.path_ids().values()) == [1, 2, 4]


def test_failed_files_are_stored_and_counted(store):
    bad = AssetRecord(path="/p/bad.jpg", size=0, mtime_ns=1, status="failed", error="empty", id=9)
    store.write_batch([_rec(1), bad])
    st = store.stats()
    assert (st["assets"], st["failed"]) == (1, 1)
    assert st["failed_files"] == [{"path": "/p/bad.jpg", "error": "empty"}]
    assert "/p/bad.jpg" in store.known_state(True)
    assert "/p/bad.jpg" not in store.known_state(True, retry_failed=True)


def test_remove_paths_drops_rows_and_vectors(store):
    store.write_batch([_rec(i) for i in range(1, 4)])
    assert store.remove_paths(["/p/2.jpg"]).tolist() == [2]
    assert sorted(store.path_ids()) == ["/p/1.jpg", "/p/3.jpg"]
    assert store.embeddings()[0].tolist() == [1, 3]


def test_newer_schema_and_foreign_model_are_refused(tmp_path):
    folder = tmp_path / "idx"
    Store(folder, model="test", dim=DIM).close()
    manifest = json.loads((folder / "manifest.json").read_text())
    with pytest.raises(StoreError, match="holds test embeddings"):
        Store(folder, model="other", dim=4)
    (folder / "manifest.json").write_text(json.dumps({**manifest, "schema_version": 99}))
    with pytest.raises(StoreError, match="newer alice-gpu"):
        Store(folder, model="test", dim=DIM)
    (folder / "manifest.json").write_text("[1, 2]")           # JSON, but not a manifest
    with pytest.raises(StoreError, match="not an alice-gpu manifest"):
        Store(folder, model="test", dim=DIM)
    assert (folder / "manifest.json").read_text() == "[1, 2]"


def test_a_new_index_records_the_fp32_space_and_keeps_it(tmp_path):
    folder = tmp_path / "idx"
    Store(folder, model="test", dim=DIM).close()
    assert json.loads((folder / "manifest.json").read_text())["space"] == "fp32"
    with Store(folder, model="test", dim=DIM) as store:
        store.claim_space("int8")                              # no vectors yet: taken
    with Store(folder, model="test", dim=DIM) as store:
        assert store.space == "int8"                           # and kept on reopening


def test_garbage_db_file_is_refused_not_overwritten(tmp_path):
    folder = tmp_path / "idx"
    folder.mkdir()
    (folder / "alice.duckdb").write_bytes(b"garbage" * 100)
    with pytest.raises(StoreError):
        Store(folder, model="test", dim=DIM)
    assert (folder / "alice.duckdb").read_bytes() == b"garbage" * 100


def test_read_only_open_of_missing_index_says_what_to_do(tmp_path):
    with pytest.raises(StoreError, match="alice-gpu index"):
        Store(tmp_path / "nothing", model="test", dim=DIM, read_only=True)


# ------------------------------------------------------------------ vectors

def test_vector_index_search_and_incremental_update(store):
    store.write_batch([_rec(i) for i in range(1, 11)])
    vi = VectorIndex(store)
    vi.update(np.zeros(0, np.int64), *store.embeddings())
    q = store.embedding_of(4)
    scores, ids = vi.search(q, 3)
    assert ids[0] == 4 and scores[0] == pytest.approx(1.0, abs=1e-5)
    store.remove_paths(["/p/4.jpg"])
    vi.update(np.array([4]), np.zeros(0, np.int64), np.zeros((0, DIM), np.float32))
    fresh = VectorIndex(store)
    assert 4 not in fresh.search(q, 10)[1]
    assert not fresh.rebuilt and fresh.load().ntotal == 9     # the saved file, in step


@pytest.mark.parametrize("damage", ["missing", "garbage", "truncated", "stale"])
def test_damaged_vector_file_is_rebuilt_from_duckdb(store, damage):
    store.write_batch([_rec(i) for i in range(1, 6)])
    VectorIndex(store).rebuild()
    path, sidecar = store.folder / INDEX_FILE, store.folder / SIDECAR_FILE
    if damage == "missing":
        path.unlink()
    elif damage == "garbage":
        path.write_bytes(b"\x00garbage" * 50)
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    else:
        store.write_batch([_rec(6)])                  # store moved on, file did not
    vi = VectorIndex(store)
    ids = sorted(vi.search(store.embedding_of(1), 10)[1].tolist())
    assert vi.rebuilt
    assert ids == sorted(store.embeddings()[0].tolist())
    assert json.loads(sidecar.read_text())["version"] == store.vectors_version()


def test_saved_index_is_reused_when_in_step(store):
    store.write_batch([_rec(i) for i in range(1, 4)])
    VectorIndex(store).rebuild()
    vi = VectorIndex(store)
    vi.load()
    assert not vi.rebuilt


def _brute_pairs(h: np.ndarray, t: int):
    out = []
    for i in range(len(h)):
        for j in range(i + 1, len(h)):
            d = (int(h[i]) ^ int(h[j])).bit_count()
            if d <= t:
                out.append((i, j, d))
    return out


@pytest.mark.parametrize("threshold", [0, 3, 12, 64])
def test_hamming_pairs_matches_brute_force(threshold):
    rng = np.random.default_rng(threshold)
    base = rng.integers(0, 2**63, 20, dtype=np.uint64) * np.uint64(2)
    flips = np.uint64(1) << rng.integers(0, 64, 20).astype(np.uint64)
    h = np.concatenate([base, base ^ flips, base[:3]])       # near pairs and exact duplicates
    i, j, d = hamming_pairs(h, threshold)
    assert list(zip(i.tolist(), j.tolist(), d.tolist())) == _brute_pairs(h, threshold)


def test_hamming_topk_orders_by_distance_then_row():
    h = np.array([0b1111, 0b0000, 0b0001, 0b0011, 0b0001], dtype=np.uint64)
    dist, rows = hamming_topk(0, h, 4)
    assert dist.tolist() == [0, 1, 1, 2] and rows.tolist() == [1, 2, 4, 3]
    assert hamming_topk(0, np.zeros(0, np.uint64), 3)[1].tolist() == []


def test_small_duplicate_pairs_are_the_flat_range_search_without_faiss(store):
    """Below DENSE_PAIRS_MAX duplicates' pairs come from one numpy product over the stored
    vectors; they must equal FAISS's exact range search over the same vectors."""
    rng = np.random.default_rng(5)
    base = rng.normal(size=(40, DIM)).astype(np.float32)
    recs = []
    for i in range(1, 301):
        v = base[i % 40] + rng.normal(scale=0.5, size=DIM).astype(np.float32)
        recs.append(AssetRecord(path=f"/p/{i}.jpg", size=1, mtime_ns=1, status="ok", width=1,
                                height=1, format="JPEG", embedding=v / np.linalg.norm(v), id=i))
    store.write_batch(recs)
    idx = VectorIndex(store)
    dense = idx.range_pairs(0.8)
    assert idx.index is None                        # FAISS was not needed
    idx.load()
    flat = idx.range_pairs(0.8)                     # the loaded flat index: FAISS
    assert len(dense[0]) > 100
    got = dict(zip(zip(dense[0].tolist(), dense[1].tolist()), dense[2].tolist()))
    ref = dict(zip(zip(flat[0].tolist(), flat[1].tolist()), flat[2].tolist()))
    assert got.keys() == ref.keys()
    assert max(abs(got[k] - ref[k]) for k in got) < 1e-5
    assert all(a < b for a, b in got)
