"""The query side at scale, scaled down: the IVF index, its rebuild within a memory limit,
incremental updates, duplicates from the k-NN graph, blocked brute force, the budget."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from alice_gpu import open_index
from alice_gpu.config import load_config
from alice_gpu.errors import QueryMemoryError
from alice_gpu.records import ORIENT_KEYS, AssetRecord
from alice_gpu.search import vectors as V
from alice_gpu.store import Store

from conftest import run_cli

DIM = 64


def _vectors(n: int, seed: int, clusters: int = 50) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, DIM)).astype(np.float32)
    x = centers[rng.integers(0, clusters, n)] + 0.6 * rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _records(ids: np.ndarray, vecs: np.ndarray) -> list[AssetRecord]:
    return [AssetRecord(f"/s/{i}.jpg", 100, 1, "ok", width=8, height=8, format="JPEG",
                        hashes={"ahash": i, "dhash": i, "phash": i, "whash": i,
                                **{k: i for k in ORIENT_KEYS}},
                        embedding=v, id=int(i)) for i, v in zip(ids.tolist(), vecs)]


@pytest.fixture
def small_flat_max(monkeypatch):
    monkeypatch.setattr(V, "FLAT_MAX", 2000)


def _fill(folder, n: int, seed: int = 0) -> np.ndarray:
    vecs = _vectors(n, seed)
    # planted near copies: row 2k+1 is row 2k plus a little noise, for the first 100 pairs
    rng = np.random.default_rng(seed + 1)
    for k in range(0, 200, 2):
        v = vecs[k] + 0.02 * rng.standard_normal(DIM).astype(np.float32)
        vecs[k + 1] = v / np.linalg.norm(v)
    with Store(folder, model="test", dim=DIM) as store:
        for s in range(0, n, 4000):
            ids = np.arange(s + 1, min(n, s + 4000) + 1)
            store.write_batch(_records(ids, vecs[ids - 1]))
    return vecs


def _exact_top(vecs: np.ndarray, q: np.ndarray, k: int) -> set[int]:
    return set((np.argsort(-(vecs @ q), kind="stable")[:k] + 1).tolist())


def test_ivf_rebuild_streams_within_a_duckdb_limit_below_the_vectors(tmp_path, small_flat_max):
    """The old rebuild loaded every vector through DuckDB at once and died above its
    memory limit; here the fp32 vectors (12 MB) exceed a 8 MB limit and it works."""
    n = 48_000
    vecs = _fill(tmp_path / "idx", n)
    assert n * DIM * 4 > 8 * 2**20
    with Store(tmp_path / "idx", model="test", dim=DIM, read_only=True,
               memory_limit_mb=8) as store:
        vi = V.VectorIndex(store, mmap=True)
        index = vi.load()
        assert vi.rebuilt and vi.kind == "ivf" and index.ntotal == n
        recall = [len(set(vi.search(vecs[i], 10)[1].tolist()) & _exact_top(vecs, vecs[i], 10))
                  / 10 for i in range(0, n, 997)]
        assert np.mean(recall) >= 0.95
        # saved, and memory-mapped by the next query instead of rebuilt
        again = V.VectorIndex(store, mmap=True)
        again.load()
        assert not again.rebuilt and again.kind == "ivf"


def test_ivf_updates_incrementally_and_outgrowing_flat_switches_kind(tmp_path, small_flat_max):
    vecs = _fill(tmp_path / "idx", 1500)
    with Store(tmp_path / "idx", model="test", dim=DIM) as store:
        vi = V.VectorIndex(store)
        assert vi.load().ntotal == 1500 and vi.kind == "flat"
        more = _vectors(1000, seed=9)
        ids = np.arange(1501, 2501)
        res = store.write_batch(_records(ids, more))
        vi.apply(np.zeros(0, np.int64), res.embedded_ids, res.embeddings)
        assert vi.kind == "ivf" and vi.index.ntotal == 2500       # crossed FLAT_MAX
        vi.save()
        trained = vi.meta["trained_on"]
        # a later add and a removal: applied in place, no retraining
        gone = store.remove_paths(["/s/3.jpg"])
        res = store.write_batch(_records(np.array([2501]), _vectors(2501, seed=0)[2500:]))
        vi.apply(gone, res.embedded_ids, res.embeddings)
        assert not vi._outgrown() and vi.meta["trained_on"] == trained
        assert vi.index.ntotal == 2500
        scores, found = vi.search(res.embeddings[0], 1)
        assert found.tolist() == [2501] and scores[0] > 0.99
        assert 3 not in vi.search(vecs[2], 5)[1].tolist()
        vi.save()
    with Store(tmp_path / "idx", model="test", dim=DIM, read_only=True) as store:
        fresh = V.VectorIndex(store, mmap=True)
        assert fresh.load().ntotal == 2500 and not fresh.rebuilt


@pytest.mark.parametrize("flat_max", [100_000, 2000])
def test_embedding_duplicates_find_the_planted_pairs_exact_or_by_graph(tmp_path, monkeypatch,
                                                                       flat_max):
    monkeypatch.setattr(V, "FLAT_MAX", flat_max)
    vecs = _fill(tmp_path / "idx", 6000)
    with Store(tmp_path / "idx", model="test", dim=DIM, read_only=True) as store:
        vi = V.VectorIndex(store, mmap=True)
        a, b, score = vi.range_pairs(0.95)
        assert vi.kind == ("flat" if flat_max > 6000 else "ivf")
    found = set(zip(a.tolist(), b.tolist()))
    planted = {(k + 1, k + 2) for k in range(0, 200, 2)
               if float(vecs[k] @ vecs[k + 1]) >= 0.95}
    assert len(planted) >= 90
    assert len(planted & found) / len(planted) >= (1.0 if flat_max > 6000 else 0.98)
    assert np.all(a < b) and len(found) == len(a)                 # each pair once
    cos = np.sum(vecs[a - 1] * vecs[b - 1], axis=1)
    assert np.all(cos >= 0.95 - 0.01) and np.allclose(cos, score, atol=0.01)


def test_blocked_brute_force_equals_the_exact_range_search(tmp_path):
    from alice_gpu.gpu.blocked import cosine_pairs

    _fill(tmp_path / "idx", 3000)
    with Store(tmp_path / "idx", model="test", dim=DIM, read_only=True) as store:
        a, b, s = V.VectorIndex(store).range_pairs(0.9)         # flat: exact
        a2, b2, s2 = cosine_pairs(store.iter_embeddings(700), 0.9, torch.device("cpu"), block=512)
    order = np.lexsort((b2, a2))
    assert a.tolist() == a2[order].tolist() and b.tolist() == b2[order].tolist()
    assert np.allclose(s, s2[order], atol=1e-5)
    assert len(a) >= 100


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_duplicates_equal_the_cpu_ones(tmp_path):
    from alice_gpu.gpu.blocked import cosine_pairs

    vecs = _fill(tmp_path / "idx", 3000)
    cfg = tmp_path / "test-model.yaml"
    cfg.write_text("features:\n  model: test\n")
    idx = open_index(tmp_path / "idx", config=load_config(cfg))
    cpu = idx.duplicates(by="phash", device="cpu").to_dict()
    assert cpu == idx.duplicates(by="phash", device="cuda").to_dict()
    tiered = idx.duplicates(device="cpu").to_dict()          # embedding pairs on the GPU too
    assert tiered["groups"] and tiered == idx.duplicates(device="cuda").to_dict()
    with Store(tmp_path / "idx", model="test", dim=DIM, read_only=True) as store:
        a, b, s = V.VectorIndex(store).range_pairs(0.9)           # CPU, exact
        a2, b2, s2 = cosine_pairs(store.iter_embeddings(700), 0.9, torch.device("cuda"),
                                  block=1024)
    near = {p for p, sc in zip(zip(a.tolist(), b.tolist()), s) if abs(sc - 0.9) < 1e-5}
    near |= {p for p, sc in zip(zip(a2.tolist(), b2.tolist()), s2) if abs(sc - 0.9) < 1e-5}
    assert set(zip(a.tolist(), b.tolist())) - near == set(zip(a2.tolist(), b2.tolist())) - near
    assert len(a) >= 100 and vecs.shape == (3000, DIM)


def test_a_rebuild_over_the_query_budget_is_a_one_line_error(tmp_path, small_flat_max):
    _fill(tmp_path / "idx", 5000)
    with Store(tmp_path / "idx", model="test", dim=DIM, read_only=True) as store:
        vi = V.VectorIndex(store, memory_mb=256)
        assert vi.needs_mb(5000) < 10
        big = V.VectorIndex(store, memory_mb=256)
        big.dim = 1280
        with pytest.raises(QueryMemoryError, match="query.memory_mb"):
            big._check_budget(200_000)


def test_cli_exit_code_5_when_the_query_budget_is_too_small(tmp_path, small_flat_max,
                                                            monkeypatch):
    """Through the CLI: a config whose query budget cannot hold the index's rebuild."""
    _fill(tmp_path / "idx", 5000)
    cfg = tmp_path / "budget.yaml"
    cfg.write_text("features:\n  model: test\nquery:\n  memory_mb: 256\n")
    code, out, err = run_cli("duplicates", "--by", "embedding", "--db", tmp_path / "idx",
                             "--config", cfg, "--json")
    assert code == 0, err                          # 5000 x 64-d fits: the answer comes
    assert json.loads(out)["groups"]
    (tmp_path / "idx" / V.INDEX_FILE).unlink()     # the next query must rebuild...
    monkeypatch.setattr(V.VectorIndex, "needs_mb", lambda self, n: 10_000.0)  # ...and can't
    code, out, err = run_cli("duplicates", "--by", "embedding", "--db", tmp_path / "idx",
                             "--config", cfg, "--json")
    assert code == 5 and out == ""
    assert err.count("\n") == 1 and "query.memory_mb" in err and "Traceback" not in err


@pytest.mark.parametrize("probes", [1, 3, 128])
def test_ivf_join_is_exact_up_to_sq8_within_the_probed_lists(tmp_path, small_flat_max, probes):
    """Probing every list finds every pair; fewer probes only ever lose pairs, never
    invent one, and each pair comes once with the score of its two vectors."""
    from alice_gpu.search.ivfjoin import ivf_pairs

    vecs = _fill(tmp_path / "idx", 5000)
    with Store(tmp_path / "idx", model="test", dim=DIM, read_only=True) as store:
        vi = V.VectorIndex(store)
        index = vi.load()
        assert vi.kind == "ivf" and vi.meta["nlist"] == 128          # every list: probes=128
        a, b, score = ivf_pairs(index, 0.9, probes)
    sim = vecs @ vecs.T
    i, j = np.nonzero(np.triu(sim >= 0.91, k=1))
    sure = set(zip((i + 1).tolist(), (j + 1).tolist()))
    found = set(zip(a.tolist(), b.tolist()))
    assert len(found) == len(a) and np.all(a < b)
    assert np.all(sim[a - 1, b - 1] >= 0.89)
    assert np.allclose(sim[a - 1, b - 1], score, atol=0.01)
    if probes == 128:
        assert sure <= found
    else:
        assert len(sure & found) >= (0.6 if probes == 1 else 0.9) * len(sure)
