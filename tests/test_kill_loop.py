"""kill -9 of the real CLI at moments picked from its own progress output: no invariant breaks,
and no decode worker outlives it."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
from typing import Iterator

import numpy as np
import psutil
import pytest

from alice_gpu.search.vectors import VectorIndex
from alice_gpu.store import Store

pytestmark = pytest.mark.slow

EXE = shutil.which("alice-gpu") or os.path.join(os.path.dirname(sys.executable), "alice-gpu")
ITERATIONS = 20
ORPHAN_GRACE_S = 10      # the bound: no worker left this long after the kill


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


def start_index(media, db, *args: str, env: dict | None = None) -> subprocess.Popen:
    """``alice-gpu index`` with machine-readable progress on stderr."""
    return subprocess.Popen([EXE, "index", str(media), "--db", str(db), "--device", "cpu",
                             "--progress", "jsonl", "--json", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=env)


def progress(proc: subprocess.Popen) -> Iterator[dict]:
    """The run's progress events, as they come (log lines in between are skipped)."""
    for line in proc.stderr:
        if line.startswith("{"):
            yield json.loads(line)


def kill_alone(proc: subprocess.Popen) -> list[psutil.Process]:
    """SIGKILL the main process only (as an OOM killer or a user does), not its group,
    and return the descendants still alive ``ORPHAN_GRACE_S`` later (they are then killed)."""
    kids = psutil.Process(proc.pid).children(recursive=True)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    _, alive = psutil.wait_procs(kids, timeout=ORPHAN_GRACE_S, callback=None)
    alive = [p for p in alive if _running(p)]
    for p in alive:
        p.kill()
    proc.stderr.close()        # workers share the pipe: read it only once they are gone
    return alive


def _running(p: psutil.Process) -> bool:
    """Still running: a zombie has ended (it waits only for its new parent to reap it)."""
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def media(tmp_path, photos):
    root = tmp_path / "media"
    root.mkdir()
    for src in sorted((photos / "images").iterdir())[:240]:
        shutil.copy2(src, root / src.name)
    return root


def test_kill_9_loop_then_a_full_run_indexes_everything_once(tmp_path, media):
    cfg = tmp_path / "small-commits.yaml"   # many small transactions: many places to die
    cfg.write_text("performance:\n  batch_size: 16\n  transaction_size: 16\n")
    db = tmp_path / "db"
    rng = random.Random(1234)
    killed_with_data = 0
    violations: list[str] = []
    for it in range(ITERATIONS):
        proc = start_index(media, db, "--config", str(cfg))
        target = None
        for ev in progress(proc):
            if ev["stage"] != "index":
                continue
            if target is None:          # kill somewhere in what this run has left to do
                if ev["total"] == 0:
                    break
                key = rng.choice(["done", "committed"])
                target = (key, rng.randrange(ev["total"]))
            if ev[target[0]] >= target[1]:
                break
        if proc.poll() is None:
            violations += [f"iteration {it}: worker {p.pid} outlived the kill"
                           for p in kill_alone(proc)]
        proc.wait(timeout=600)
        if not (db / "alice.duckdb").exists():
            continue
        bad, n = _invariants(db)
        violations += [f"iteration {it}: {b}" for b in bad]
        killed_with_data += n > 0 and target is not None
    assert violations == []
    assert killed_with_data >= 3          # the kills did land in the middle of real work
    final = subprocess.run([EXE, "index", str(media), "--db", str(db), "--json"],
                           capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr[-2000:]
    bad, n = _invariants(db)
    assert bad == [] and n == 240
    summary = json.loads(final.stdout)
    assert summary["failed"] == 0


@pytest.mark.parametrize("method", ["fork", "loky"])
def test_no_decode_worker_outlives_a_kill_9_of_the_main_process(tmp_path, media, method):
    """kill -9 of the main ``index`` process alone: its workers go too, however started."""
    env = {**os.environ, "ALICE_GPU_START_METHOD": method}
    proc = start_index(media, tmp_path / "db", "--no-embed", "--workers", "2", env=env)
    for ev in progress(proc):
        if ev["stage"] == "index" and ev["done"] > 0:   # the workers are decoding
            break
    assert proc.poll() is None, "the run ended before it could be killed"
    assert len(psutil.Process(proc.pid).children(recursive=True)) >= 2   # workers to orphan
    assert kill_alone(proc) == []


def test_a_worker_ends_on_sigterm_and_the_run_still_indexes_everything(tmp_path, media):
    """Workers do not inherit the main process's SIGTERM handler; the pool replaces the
    one that ended and its files are decoded again."""
    proc = start_index(media, tmp_path / "db", "--no-embed", "--workers", "2")
    events = progress(proc)
    for ev in events:
        if ev["stage"] == "index" and ev["done"] > 0:
            break
    workers = psutil.Process(proc.pid).children()
    assert workers, "no decode workers"
    workers[0].send_signal(signal.SIGTERM)
    workers[0].wait(timeout=60)               # it ends (an inherited handler would ignore it)
    last = None
    for last in events:
        pass
    assert proc.wait(timeout=600) == 0
    assert last is not None and last["done"] == last["total"] == 240 and last["failed"] == 0


_HANG_IN_WORKERS = """
import os, sys, time
from pathlib import Path
import alice_gpu, alice_gpu.decode.files as files
from alice_gpu.config import load_config
parent, flags = os.getpid(), Path(sys.argv[3])
def hangs(entry, *a, **k):       # every worker hangs in its decoder (as in C, for minutes)
    if os.getpid() != parent:
        (flags / str(os.getpid())).touch()
        time.sleep(600)
files.decode_file = hangs
cfg = load_config(sys.argv[4])
alice_gpu.open_index(sys.argv[2], config=cfg).index([sys.argv[1]], embed=False)
"""


def test_workers_hung_in_their_decoder_die_with_the_main_process(tmp_path, media):
    """Not only idle workers: one stuck in a decoder (whose deadline is minutes away) goes too."""
    flags = tmp_path / "flags"
    flags.mkdir()
    cfg = tmp_path / "slow-deadline.yaml"
    cfg.write_text("performance:\n  max_workers: 2\ndecode:\n  timeout_seconds: 300\n")
    env = {**os.environ, "ALICE_GPU_START_METHOD": "fork"}    # workers inherit the hang
    proc = subprocess.Popen([sys.executable, "-c", _HANG_IN_WORKERS, str(media),
                             str(tmp_path / "db"), str(flags), str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    watcher = psutil.Process(proc.pid)
    hung = []
    while len(hung) < 2 and proc.poll() is None:       # each worker says when it is stuck
        hung = [p for p in watcher.children() if (flags / str(p.pid)).exists()]
        psutil.wait_procs([watcher], timeout=0.05)
    assert len(hung) == 2, proc.stderr.read()[-2000:]
    assert kill_alone(proc) == []
