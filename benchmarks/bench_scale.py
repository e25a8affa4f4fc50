"""similar and duplicates at scale: N assets, real query photos among synthetic rows.

    python benchmarks/bench_scale.py --n 1000000 [--keep DIR] [--json] [--write]

1. Indexes ``photo_collection`` (462 real photos, hashes and embeddings) into a new
   index folder with the CLI, leaving ``--new 20`` photos out.
2. Adds N - 462 synthetic assets through the store's own bulk API
   (``Store.write_batch``). Synthetic embeddings are clustered and shaped like the
   real ones (the real vectors' principal components, ReLU, L2-normalised); hashes
   are uniform 64-bit codes. Near-duplicate pairs are planted (hashes 1-8 bits apart,
   embeddings at cosine ~0.93-0.99) and their truth is kept in ``truth.npz``.
3. Times the CLI commands as whole processes with their peak RSS (``wait4``): the
   first ``similar`` (which builds the vector index), a warm ``similar``,
   ``duplicates --by phash`` and ``duplicates --by embedding``; then recall@10 of
   in-process ``similar`` against exact search, MIH against brute force on a 100k
   sample, and indexing ``--new`` real photos into the big index.

Synthetic data: RESULTS.md says so wherever these figures appear.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
PHOTOS = REPO.parent / "shared" / "data" / "photo_collection" / "images"
RESULTS = REPO / "benchmarks" / "RESULTS.md"
BEGIN, END = "<!-- scale:begin -->", "<!-- scale:end -->"
CLI = [sys.executable, "-m", "alice_gpu"]


def run(args: list[str]) -> dict:
    """One CLI command as its own process: wall seconds, exit code, stdout, stderr's tail."""
    t = time.perf_counter()
    proc = subprocess.Popen(CLI + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate()
    wall = time.perf_counter() - t
    return {"wall_s": round(wall, 3), "code": proc.returncode, "out": out.decode(),
            "err": err.decode()[-600:]}


def run_rss(args: list[str]) -> dict:
    """Like run(), with the command's own peak RSS (wait4's ru_maxrss, taken in a small
    wrapper process so that no earlier child counts)."""
    code = ("import os, subprocess, sys, time\n"
            "t = time.perf_counter(); p = subprocess.Popen(sys.argv[1:])\n"
            "_, status, ru = os.wait4(p.pid, 0)\n"
            "sys.stderr.write('\\nRSS=%d WALL=%f CODE=%d\\n' % (ru.ru_maxrss, "
            "time.perf_counter() - t, os.waitstatus_to_exitcode(status)))")
    proc = subprocess.run([sys.executable, "-c", code, *CLI, *args], capture_output=True,
                          text=True)
    tail = proc.stderr.rsplit("RSS=", 1)
    rss, wall, code = tail[1].split()
    return {"wall_s": round(float(wall.split("=")[1]), 3),
            "rss_mib": round(int(rss) / 1024, 1), "code": int(code.split("=")[1]),
            "out": proc.stdout, "err": tail[0][-600:]}


def synth_embeddings(real: np.ndarray, n: int, rng: np.random.Generator, centers: int,
                     spread: float = 0.8) -> np.ndarray:
    """Clustered vectors shaped like the real ones (their principal components)."""
    mu = real.mean(0)
    _, s, vt = np.linalg.svd(real - mu, full_matrices=False)
    basis = ((s / np.sqrt(len(real)))[:, None] * vt).astype(np.float32)
    cents = mu + rng.standard_normal((centers, len(basis))).astype(np.float32) @ basis
    lab = rng.integers(0, centers, n)
    x = cents[lab] + spread * (rng.standard_normal((n, len(basis))).astype(np.float32) @ basis)
    x = np.maximum(x, 0)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def flip_bits(codes: np.ndarray, bits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = codes.copy()
    for k in range(int(bits.max(initial=0))):
        pos = rng.integers(0, 64, len(codes)).astype(np.uint64)
        # distinct positions are not guaranteed: the distance is recorded, not assumed
        out = np.where(bits > k, out ^ (np.uint64(1) << pos), out)
    return out


def add_synthetic(db: Path, n_total: int, seed: int) -> dict:
    """Append synthetic rows (ids after the real ones) with planted pairs; return truth."""
    from alice_gpu.records import ORIENT_KEYS, STATUS_OK, AssetRecord
    from alice_gpu.store import Store

    rng = np.random.default_rng(seed)
    with Store(db, model="efficientnet_lite0", dim=1280) as store:
        real_ids, real = store.embeddings()
        start = store.max_id() + 1
        n = n_total - len(real_ids)
        planted = max(1, n // 200)          # 0.5% of the rows are the second of a pair
        t0 = time.perf_counter()
        truth_a, truth_b, hash_d, cos = [], [], [], []
        chunk = 20000
        for s in range(0, n, chunk):
            m = min(chunk, n - s)
            ids = np.arange(start + s, start + s + m, dtype=np.int64)
            emb = synth_embeddings(real, m, rng, centers=max(1, m // 20))
            # random codes: the other orientations' pHashes are as unrelated as real ones
            hashes = {h: rng.integers(0, 2**64 - 1, m, dtype=np.uint64, endpoint=True)
                      for h in ("ahash", "dhash", "phash", "whash", *ORIENT_KEYS)}
            k = min(planted * m // max(n, 1) + 1, m // 2)
            a, b = np.arange(k), np.arange(m - k, m)        # row b is a near copy of row a
            bits = rng.integers(1, 9, k)
            for h in hashes:
                hashes[h][b] = flip_bits(hashes[h][a], bits, rng)
            noise = rng.standard_normal((k, 1280)).astype(np.float32)
            noise /= np.linalg.norm(noise, axis=1, keepdims=True)
            eps = rng.uniform(0.1, 0.35, (k, 1))
            emb[b] = emb[a] + eps * noise
            emb[b] /= np.linalg.norm(emb[b], axis=1, keepdims=True)
            truth_a.append(ids[a]); truth_b.append(ids[b])
            hash_d.append(np.bitwise_count(hashes["phash"][a] ^ hashes["phash"][b]))
            cos.append(np.sum(emb[a] * emb[b], axis=1))
            recs = [AssetRecord(f"/synthetic/{i // 1000:04d}/{i:08d}.jpg", 100_000 + i % 977,
                                1_700_000_000_000_000_000 + i, STATUS_OK, width=4032,
                                height=3024, format="JPEG", id=int(i),
                                hashes={h: int(v[r]) for h, v in hashes.items()},
                                embedding=emb[r], content_hash=f"{i:064x}")
                    for r, i in enumerate(ids.tolist())]
            store.write_batch(recs, None, insert_size=chunk)
            if s // chunk % 10 == 0:
                print(f"  synthetic rows: {s + m:,}/{n:,} ({time.perf_counter() - t0:.0f} s)",
                      file=sys.stderr, flush=True)
        store.con.execute("CHECKPOINT")
    truth = {"a": np.concatenate(truth_a), "b": np.concatenate(truth_b),
             "phash_d": np.concatenate(hash_d), "cos": np.concatenate(cos)}
    np.savez(db / "truth.npz", **truth)
    return {"synthetic": n, "planted_pairs": len(truth["a"]),
            "write_s": round(time.perf_counter() - t0, 1)}


def pair_recall(doc: dict, truth: dict, mask: np.ndarray) -> float:
    """Share of planted pairs (under mask) whose two members share a group."""
    group_of = {f["id"]: g for g, grp in enumerate(doc["groups"]) for f in grp["files"]}
    a, b = truth["a"][mask], truth["b"][mask]
    hit = [group_of.get(int(x), -1) == group_of.get(int(y), -2) for x, y in zip(a, b)]
    return round(float(np.mean(hit)), 4) if hit else float("nan")


def in_process(db: Path, queries: int, seed: int) -> dict:
    """recall@10 and per-query time of similar by embedding; MIH exact on a 100k sample."""
    from alice_gpu.search.hamming import brute_hamming_pairs
    from alice_gpu.search.mih import mih_pairs
    from alice_gpu.search.vectors import VectorIndex
    from alice_gpu.store import Store

    rng = np.random.default_rng(seed)
    with Store(db, model="efficientnet_lite0", dim=1280, read_only=True) as store:
        vi = VectorIndex(store, mmap=True)
        vi.load()
        total = store.embedding_count()
        pick = np.sort(rng.choice(total, queries, replace=False))
        q_vecs = []
        # exact top-10 by streaming every vector once for all queries together
        best_s = np.full((queries, 10), -np.inf, np.float32)
        best_i = np.zeros((queries, 10), np.int64)
        row = 0
        for ids, mat in store.iter_embeddings(16384):
            sel = pick[(pick >= row) & (pick < row + len(ids))] - row
            q_vecs += [mat[r] for r in sel]
            row += len(ids)
        allq = np.stack(q_vecs)
        for ids, mat in store.iter_embeddings(16384):
            sc = allq @ mat.T
            cat_s = np.concatenate([best_s, sc], axis=1)
            cat_i = np.concatenate([best_i, np.broadcast_to(ids, sc.shape)], axis=1)
            top = np.argsort(-cat_s, axis=1, kind="stable")[:, :10]
            best_s = np.take_along_axis(cat_s, top, 1)
            best_i = np.take_along_axis(cat_i, top, 1)
        times, recalls = [], []
        for q, ex in zip(allq, best_i):
            t = time.perf_counter()
            _, got = vi.search(q, 10)
            times.append(time.perf_counter() - t)
            recalls.append(len(set(got.tolist()) & set(ex.tolist())) / 10)
        _, hashes = store.hashes("phash")
    sample = hashes[rng.choice(len(hashes), min(100_000, len(hashes)), replace=False)]
    t = time.perf_counter()
    got = mih_pairs(sample, 10)
    mih_s = time.perf_counter() - t
    t = time.perf_counter()
    ref = brute_hamming_pairs(sample, 10)
    brute_s = time.perf_counter() - t
    exact_ok = got is not None and all(np.array_equal(x, y) for x, y in zip(got, ref))
    return {"kind": vi.kind, "nlist": vi.meta.get("nlist"), "queries": queries,
            "recall_at_10": round(float(np.mean(recalls)), 4),
            "query_ms_median": round(1e3 * statistics.median(times), 2),
            "query_ms_p95": round(1e3 * float(np.quantile(times, 0.95)), 2),
            "mih_sample": len(sample), "mih_exact": exact_ok, "mih_pairs": len(ref[0]),
            "mih_s": round(mih_s, 2), "brute_s": round(brute_s, 2)}


def forget_earlier_runs(db: Path) -> None:
    """A reused index: drop the vector index (the first query rebuilds it again) and the
    photos an earlier run indexed late (so they are decoded again, not reused)."""
    from alice_gpu.store import Store

    for name in ("vectors.faiss", "vectors.json"):
        (db / name).unlink(missing_ok=True)
    with Store(db, model="efficientnet_lite0", dim=1280) as store:
        late = [p for (p,) in store.con.execute(
            "SELECT path FROM assets WHERE path LIKE '%bench-scale-%/new/%'").fetchall()]
        store.remove_paths(late)


def folder_bytes(db: Path) -> int:
    return sum(p.stat().st_size for p in db.iterdir() if p.is_file()
               and p.suffix not in (".npz", ".bak") and p.name != "bench.json")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, required=True, help="assets in the index, real ones included")
    ap.add_argument("--keep", type=Path, help="build the index folder here and leave it")
    ap.add_argument("--new", type=int, default=20, help="real photos indexed into the big index")
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reuse", action="store_true",
                    help="--keep DIR already holds an index built by this script: time it again")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--write", action="store_true", help="record the figures in RESULTS.md")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    db = args.keep or work / "db"
    reuse = args.reuse and args.keep and (db / "truth.npz").exists()
    if db.exists() and not reuse:
        shutil.rmtree(db)
    photos = sorted(PHOTOS.iterdir())
    held, newdir = photos[:args.new], work / "new"
    base = Path(json.loads((db / "bench.json").read_text())["base"]) if reuse else work / "base"
    newdir.mkdir()
    for p in held:
        shutil.copy2(p, newdir / p.name)
    out: dict = {"n": args.n, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                 "date": dt.date.today().isoformat(), "synthetic": True, "reused": bool(reuse)}
    if reuse:
        stored = json.loads((db / "bench.json").read_text())
        out.update({k: v for k, v in stored.items() if k not in ("base", "reused", "date")})
        forget_earlier_runs(db)
    else:
        base.mkdir()
        for p in photos[args.new:]:
            shutil.copy2(p, base / p.name)
        r = run(["index", str(base), "--db", str(db), "--json", "--progress", "none"])
        assert r["code"] == 0, r["err"]
        out["real_indexed"] = json.loads(r["out"])["decoded"]
        assert out["real_indexed"] > 100, r["out"]
        out.update(add_synthetic(db, args.n, args.seed))
        (db / "bench.json").write_text(json.dumps({"base": str(base), **out}))
    truth = dict(np.load(db / "truth.npz"))
    query = str(base / photos[-1].name)
    first = run_rss(["similar", query, "--db", str(db), "--json"])
    assert first["code"] == 0, first["err"]
    out["similar_first_cli"] = {k: first[k] for k in ("wall_s", "rss_mib")}
    warm = [run_rss(["similar", query, "--db", str(db), "--json"]) for _ in range(3)]
    out["similar_cli"] = {"wall_s": statistics.median(w["wall_s"] for w in warm),
                          "rss_mib": max(w["rss_mib"] for w in warm)}
    top = json.loads(warm[0]["out"])["results"][0]["path"]
    out["similar_top_is_query"] = os.path.realpath(top) == os.path.realpath(query)
    out["in_process"] = in_process(db, args.queries, args.seed)
    dup = run_rss(["duplicates", "--by", "phash", "--db", str(db), "--json"])
    assert dup["code"] == 0, dup["err"]
    doc = json.loads(dup["out"])
    out["duplicates_phash_cli"] = {"wall_s": dup["wall_s"], "rss_mib": dup["rss_mib"],
                                   "groups": len(doc["groups"]),
                                   "planted_recall": pair_recall(doc, truth,
                                                                 truth["phash_d"] <= 10)}
    dup = run_rss(["duplicates", "--by", "embedding", "--db", str(db), "--json"])
    assert dup["code"] == 0, dup["err"]
    doc = json.loads(dup["out"])
    out["duplicates_embedding_cli"] = {
        "wall_s": dup["wall_s"], "rss_mib": dup["rss_mib"], "groups": len(doc["groups"]),
        "planted_recall": pair_recall(doc, truth, truth["cos"] >= 0.85)}
    dup = run_rss(["duplicates", "--db", str(db), "--json"])          # the tiered default
    assert dup["code"] == 0, dup["err"]
    doc = json.loads(dup["out"])
    out["duplicates_tiered_cli"] = {
        "wall_s": dup["wall_s"], "rss_mib": dup["rss_mib"], "groups": len(doc["groups"]),
        "planted_recall": pair_recall(doc, truth, (truth["phash_d"] <= 8) | (truth["cos"] >= 0.85))}
    t = time.perf_counter()
    r = run(["index", str(newdir), "--db", str(db), "--json", "--progress", "none"])
    assert r["code"] == 0, r["err"]
    out["index_new"] = {"files": json.loads(r["out"])["decoded"],
                        "wall_s": round(time.perf_counter() - t, 2)}
    after = run_rss(["similar", str(newdir / held[0].name), "--db", str(db), "--json"])
    res = json.loads(after["out"])
    out["new_photo_found"] = {"wall_s": after["wall_s"], "rss_mib": after["rss_mib"],
                              "in_index": res["query_in_index"],
                              "top_is_itself": os.path.basename(res["results"][0]["path"])
                              == held[0].name}
    size = folder_bytes(db)
    out["folder_bytes"] = size
    out["bytes_per_asset"] = round(size / args.n, 1)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        shutil.rmtree(newdir, ignore_errors=True)
    print(json.dumps(out, indent=None if args.json else 2))
    if args.write:
        record(out)


def record(out: dict) -> None:
    text = RESULTS.read_text()
    line = f"- `bench_scale.py --n {out['n']}` ({out['date']}): `{json.dumps(out)}`\n"
    if BEGIN not in text:
        text += f"\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    body, tail = rest.split(END, 1)
    RESULTS.write_text(head + BEGIN + body.rstrip("\n") + "\n" + line + END + tail)


if __name__ == "__main__":
    main()
