"""The Ray engine: the same stage callables on a local Ray instance give the same index as
the local engine, share its change detection, and lose no file when a worker dies."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from alice_gpu import open_index
from conftest import run_cli

pytestmark = [pytest.mark.ray, pytest.mark.slow]

if os.environ.get("ALICE_GPU_REQUIRE_RAY"):
    import ray  # noqa: F401 - CI installs the [distributed] extra: its absence fails
else:
    ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance for the module (2 CPUs, as on the CI machine)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             ignore_reinit_error=True)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def folder(tmp_path_factory, photos):
    media = tmp_path_factory.mktemp("ray") / "media"
    media.mkdir()
    for src in sorted((photos / "images").iterdir())[100:190]:      # 90 real photos
        shutil.copy2(src, media / src.name)
    return media


def _index_state(db: Path) -> dict[str, tuple]:
    with open_index(db)._open(read_only=True) as store:
        rows = store.con.execute("SELECT path, ahash, dhash, phash, whash, phash_orient, status "
                                 "FROM assets ORDER BY path").fetchall()
        ids, vecs = store.embeddings()
        by_id = dict(store.con.execute("SELECT id, path FROM assets").fetchall())
    out = {r[0]: tuple(r[1:]) for r in rows}
    return out, {by_id[int(i)]: v for i, v in zip(ids, vecs)}


def test_ray_gives_the_local_engines_index_and_a_rerun_decodes_nothing(local_ray, folder,
                                                                       tmp_path):
    code, out, err = run_cli("index", folder, "--engine", "ray", "--db", tmp_path / "ray",
                             "--json")
    doc = json.loads(out)
    assert code == 0, err
    assert doc["decoded"] == 90 and doc["failed"] == 0 and doc["embedded"] == 90
    assert doc["device"] == "ray"
    code, out, _ = run_cli("index", folder, "--db", tmp_path / "local", "--json")
    assert code == 0
    ray_rows, ray_vecs = _index_state(tmp_path / "ray")
    local_rows, local_vecs = _index_state(tmp_path / "local")
    assert ray_rows == local_rows                       # every hash exactly
    assert ray_vecs.keys() == local_vecs.keys() and len(ray_vecs) == 90
    cos = [float(np.dot(ray_vecs[p], local_vecs[p])) for p in ray_vecs]
    assert min(cos) >= 0.9999
    stats = [json.loads(run_cli("stats", "--db", tmp_path / d, "--json")[1]) for d in
             ("ray", "local")]
    for key in ("assets", "failed", "embedded", "bytes", "formats"):
        assert stats[0][key] == stats[1][key], key
    code, out, _ = run_cli("index", folder, "--engine", "ray", "--db", tmp_path / "ray",
                           "--json")
    again = json.loads(out)
    assert code == 0 and again["decoded"] == 0 and again["unchanged"] == 90


def test_a_dead_worker_is_retried_and_nothing_goes_missing(local_ray, folder, tmp_path):
    """A decode task whose worker process exits (once) is run again by Ray; a batch that
    fails on every try is done by the driver. Either way every file ends in the index."""
    from alice_gpu.pipeline.ray_engine import RayEngine

    marker = tmp_path / "crashed-once"
    poison = sorted(p.name for p in folder.iterdir())[40]

    def dies_once_then_raises_on_one_file(entries, plan, known=None, timeout=None):
        from alice_gpu.features.worker import decode_and_hash

        if not marker.exists():
            marker.write_text("x")
            os._exit(1)                                  # the worker process dies
        if any(e.path.endswith(poison) for e in entries):
            raise RuntimeError("simulated crash on every try")
        return decode_and_hash(entries, plan, known, timeout)

    engine = RayEngine(decode=dies_once_then_raises_on_one_file)
    api = open_index(tmp_path / "db")
    summary = api.index([folder], embed=False, ray_engine=engine)
    assert marker.exists()
    assert summary.decoded + summary.failed == 90 and summary.failed == 0
    assert summary.driver_files >= 1                     # said in the summary
    with api._open(read_only=True) as store:
        paths = set(store.path_ids())
    assert paths == {str(p) for p in folder.iterdir()}   # each one indexed, none missing


def test_engine_flags_are_checked(tmp_path, folder, monkeypatch):
    code, _, err = run_cli("index", folder, "--address", "auto", "--db", tmp_path / "x")
    assert code == 2 and "--engine ray" in err
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("no ray here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    code, _, err = run_cli("index", folder, "--engine", "ray", "--db", tmp_path / "y")
    assert code == 2 and "pip install 'alice-gpu[distributed]'" in err


def test_ctrl_c_on_ray_commits_what_is_done_and_exits_130(folder, tmp_path):
    """A run with its own Ray (no --address): SIGINT after the first commits stops it with
    exit 130, what was committed stays, and a re-run does exactly the rest."""
    import re
    import signal
    import subprocess
    import sys

    from test_reliability import HELD_CLI

    db = tmp_path / "db"
    cfg = tmp_path / "small.yaml"
    cfg.write_text("performance:\n  batch_size: 10\n  transaction_size: 10\n")
    # the driver holds its rows at 10 files until the signal has been sent: it lands
    # mid-run however fast the cluster is
    release = tmp_path / "release"
    proc = subprocess.Popen([sys.executable, "-c", HELD_CLI, "index", str(folder), "--engine",
                             "ray", "--db", str(db), "--config", str(cfg), "--no-embed",
                             "--progress", "jsonl"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "RELEASE": str(release), "HOLD_AT": "10"})
    seen = []
    for line in proc.stderr:                      # the run's own progress events
        seen.append(line)
        if line.startswith("{") and json.loads(line).get("committed", 0) >= 10:
            break
    proc.send_signal(signal.SIGINT)
    release.write_text("go")
    _, rest = proc.communicate(timeout=300)
    err = "".join(seen) + rest
    assert proc.returncode == 130, err[-2000:]
    m = re.search(r"interrupted: (\d+) files done and committed, (\d+) pending", err)
    assert m, err[-2000:]
    done, pending = int(m.group(1)), int(m.group(2))
    assert done + pending == 90 and 10 <= done < 90
    again = json.loads(run_cli("index", folder, "--db", db, "--no-embed", "--json")[1])
    assert (again["unchanged"], again["decoded"]) == (done, pending)


def test_an_unreachable_cluster_is_one_line_and_exit_2(folder, tmp_path):
    """Never a quiet local run: a bad --address fails before any work (a refused
    connection is seen at once, not after Ray's own minutes of retries)."""
    code, out, err = run_cli("index", folder, "--engine", "ray", "--address", "127.0.0.1:1",
                             "--db", tmp_path / "db")
    assert code == 2 and err.count("\n") == 1, err
    assert "cannot reach the Ray cluster at 127.0.0.1:1" in err
    assert not (tmp_path / "db").exists()                # nothing indexed, nothing opened


def test_cuda_on_a_cluster_without_gpus_is_one_line_and_exit_2(local_ray, folder, tmp_path):
    code, _, err = run_cli("index", folder, "--engine", "ray", "--device", "cuda",
                           "--db", tmp_path / "db")
    assert code == 2 and err.count("\n") == 1 and "has no GPU" in err, err
    assert not (tmp_path / "db").exists()


def test_ray_plans_hashing_as_a_local_run_on_the_same_device():
    """The decode tasks hash where a local run on the actors' device would: in the
    workers on the CPU, on the device (torch) on a GPU."""
    import torch

    from alice_gpu.config import load_config
    from alice_gpu.pipeline.ray_engine import RayEngine
    from alice_gpu.pipeline.stages import decode_plan

    cfg = load_config()
    for device in ("cpu", "cuda"):
        engine = RayEngine()
        engine.cfg, engine.device = cfg, device
        assert engine.plan() == decode_plan(cfg, torch.device(device))
    assert engine.plan().hash_in_worker is False
    assert decode_plan(cfg, torch.device("cpu")).hash_in_worker is True


def test_a_decoder_that_hangs_costs_its_file_not_the_ray_run(local_ray, folder, tmp_path):
    """The per-file deadline lives in the shared decode callable: a Ray task whose decoder
    sleeps records that file as failed and the run goes on."""
    from alice_gpu.config import load_config
    from alice_gpu.pipeline.ray_engine import RayEngine

    hung = sorted(p.name for p in folder.iterdir())[7]

    def sleeps_on_one_file(entries, plan, known=None, timeout=None):
        import time

        import alice_gpu.decode.files as files
        from alice_gpu.features.worker import decode_and_hash

        real = files.decode_file

        def decode_file(entry, *args, **kwargs):
            if entry.path.endswith(hung):
                time.sleep(3600)
            return real(entry, *args, **kwargs)

        files.decode_file = decode_file
        try:
            return decode_and_hash(entries, plan, known, timeout)
        finally:
            files.decode_file = real

    cfg = tmp_path / "deadline.yaml"
    cfg.write_text("decode:\n  timeout_seconds: 1\n")
    api = open_index(tmp_path / "db", config=load_config(cfg))
    summary = api.index([folder], embed=False, ray_engine=RayEngine(decode=sleeps_on_one_file))
    assert (summary.decoded, summary.failed, summary.driver_files) == (89, 1, 0)
    assert summary.failed_files[0].path.endswith(hung)
    assert "decode timeout" in summary.failed_files[0].error
