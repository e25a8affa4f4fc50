"""kill -9 at random moments, 20 times, with the real CLI on real photos: no invariant breaks."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np

from alice_gpu.search.vectors import VectorIndex
from alice_gpu.store import Store

EXE = shutil.which("alice-gpu") or os.path.join(os.path.dirname(sys.executable), "alice-gpu")
ITERATIONS = 20


def _invariants(db) -> tuple[list[str], int]:
    """Violations found in the store after a kill, and the number of assets."""
    bad = []
    with Store(db, model="efficientnet_lite0", dim=1280, read_only=True) as store:
        con = store.con
        paths = [r[0] for r in con.execute("SELECT path FROM assets").fetchall()]
        if len(paths) != len(set(paths)):
            bad.append("a file is indexed twice")
        missing_hash = con.execute("SELECT count(*) FROM assets WHERE status = 'ok' AND "
                                   "(ahash IS NULL OR dhash IS NULL OR phash IS NULL OR "
                                   "whash IS NULL)").fetchall()[0][0]
        if missing_hash:
            bad.append(f"{missing_hash} assets without hashes (partial batch)")
        no_vec = con.execute("SELECT count(*) FROM assets a LEFT JOIN embeddings e ON "
                             "e.asset_id = a.id WHERE a.status = 'ok' AND e.asset_id IS NULL"
                             ).fetchall()[0][0]
        if no_vec:
            bad.append(f"{no_vec} assets without their embedding (partial batch)")
        orphans = con.execute("SELECT count(*) FROM embeddings e LEFT JOIN assets a ON "
                              "a.id = e.asset_id WHERE a.id IS NULL").fetchall()[0][0]
        if orphans:
            bad.append(f"{orphans} embeddings without an asset")
        db_ids = set(store.embeddings()[0].tolist())
        index = VectorIndex(store).load()          # rebuilt when out of step
        faiss_ids = set(np.asarray([index.id_map.at(i) for i in range(index.ntotal)]).tolist())
        if not faiss_ids <= db_ids:
            bad.append("FAISS ids not a subset of DuckDB ids")
        if faiss_ids != db_ids:
            bad.append("FAISS index out of step after load")
    return bad, len(paths)


def test_kill_9_loop_then_a_full_run_indexes_everything_once(tmp_path, photos):
    media = tmp_path / "media"
    media.mkdir()
    for src in sorted((photos / "images").iterdir())[:240]:
        shutil.copy2(src, media / src.name)
    cfg = tmp_path / "small-commits.yaml"   # many small transactions: many places to die
    cfg.write_text("performance:\n  batch_size: 16\n  transaction_size: 16\n")
    db = tmp_path / "db"
    rng = random.Random(1234)
    killed_with_data = 0
    violations: list[str] = []
    for it in range(ITERATIONS):
        proc = subprocess.Popen([EXE, "index", str(media), "--db", str(db), "--device", "cpu",
                                 "--config", str(cfg), "--json"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        time.sleep(rng.uniform(0.2, 5.0))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)   # the CLI and its decode workers
        proc.wait(timeout=60)
        if not (db / "alice.duckdb").exists():
            continue
        bad, n = _invariants(db)
        violations += [f"iteration {it}: {b}" for b in bad]
        killed_with_data += n > 0
    assert violations == []
    assert killed_with_data >= 3          # the kills did land in the middle of real work
    final = subprocess.run([EXE, "index", str(media), "--db", str(db), "--json"],
                           capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr[-2000:]
    bad, n = _invariants(db)
    assert bad == [] and n == 240
    summary = json.loads(final.stdout)
    assert summary["failed"] == 0
