"""End to end through the CLI (its Python entry, same process) on small real collections."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import run_cli


def cli(*args: str) -> tuple[int, dict | str]:
    code, out, err = run_cli(*args)
    if "--json" in args and code in (0, 1):
        return code, json.loads(out)
    return code, out + err


@pytest.fixture
def collection(tmp_path, photos, near_dups):
    """12 photos + 4 UKBench views of one object + a broken file, in a folder of our own."""
    root = tmp_path / "media"
    (root / "photos").mkdir(parents=True)
    for src in sorted((photos / "images").iterdir())[:12]:
        shutil.copy2(src, root / "photos" / src.name)
    (root / "object").mkdir()
    for n in range(4):
        shutil.copy2(near_dups / "ukbench" / f"ukbench{n:05d}.jpg", root / "object")
    return root


def test_index_rerun_touch_delete(collection, tmp_path, device):
    db = tmp_path / "db"
    code, first = cli("index", collection, "--db", db, "--device", device.type, "--json")
    assert code == 0
    assert {"files_seen", "decoded", "unchanged", "failed", "removed", "seconds"} <= first.keys()
    assert (first["files_seen"], first["decoded"], first["failed"]) == (16, 16, 0)

    code, again = cli("index", collection, "--db", db, "--json")
    assert (again["decoded"], again["unchanged"], again["removed"]) == (0, 16, 0)

    touched = collection / "object" / "ukbench00001.jpg"
    st = touched.stat()
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    code, after_touch = cli("index", collection, "--db", db, "--json")
    # re-done: its bytes did not change, so its features come from the content-hash cache
    assert (after_touch["decoded"], after_touch["reused"], after_touch["unchanged"]) == (0, 1, 15)
    assert after_touch["metrics"]["cache_hit_rate"] == 1.0

    edited = collection / "object" / "ukbench00003.jpg"
    edited.write_bytes(edited.read_bytes() + b"\0trailing bytes")   # new content, same picture
    code, after_edit = cli("index", collection, "--db", db, "--json")
    assert (after_edit["decoded"], after_edit["reused"], after_edit["unchanged"]) == (1, 0, 15)

    victim = collection / "object" / "ukbench00002.jpg"
    code, before = cli("similar", collection / "object" / "ukbench00000.jpg", "--db", db,
                       "--k", "4", "--json")
    assert str(victim) in [r["path"] for r in before["results"]]
    victim.unlink()
    code, after_delete = cli("index", collection, "--db", db, "--json")
    assert (after_delete["removed"], after_delete["decoded"]) == (1, 0)
    code, stats = cli("stats", "--db", db, "--json")
    assert (stats["assets"], stats["failed"], stats["embedded"]) == (15, 0, 15)
    code, sim = cli("similar", collection / "object" / "ukbench00000.jpg", "--db", db,
                    "--k", "20", "--json")
    assert str(victim) not in [r["path"] for r in sim["results"]]
    assert len(sim["results"]) == 15


def test_similar_contract_and_query_outside_index(collection, tmp_path):
    db = tmp_path / "db"
    cli("index", collection, "--db", db, "--json")
    outside = tmp_path / "query.jpg"
    shutil.copy2(collection / "object" / "ukbench00003.jpg", outside)
    for by in ("embedding", "phash", "dhash", "ahash", "whash"):
        code, doc = cli("similar", outside, "--db", db, "--by", by, "--k", "5", "--json")
        assert code == 0
        assert doc["query"] == str(outside) and doc["query_in_index"] is False
        scores = [r["score"] for r in doc["results"]]
        assert len(scores) == 5 and scores == sorted(scores, reverse=True)
        assert {"path", "score"} <= doc["results"][0].keys()
        # its byte-identical twin in the index is the best match
        assert doc["results"][0]["path"] == str(collection / "object" / "ukbench00003.jpg")
    code, text = cli("similar", outside, "--db", db)
    assert code == 0 and "ukbench00003.jpg" in text


def test_duplicates_and_failed_files(collection, tmp_path):
    db = tmp_path / "db"
    shutil.copy2(collection / "photos" / sorted(os.listdir(collection / "photos"))[0],
                 collection / "copy_of_first.jpg")
    (collection / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    code, summary = cli("index", collection, "--db", db, "--no-embed", "--json")
    assert code == 1                                   # completed, with a failed file
    assert summary["failed"] == 1
    assert summary["failed_files"][0]["path"].endswith("broken.jpg")
    code, dup = cli("duplicates", "--db", db, "--json")
    assert code == 0
    groups = [sorted(os.path.basename(f["path"]) for f in g["files"]) for g in dup["groups"]]
    first = sorted(os.listdir(collection / "photos"))[0]
    assert sorted(["copy_of_first.jpg", first]) in groups
    code, stats = cli("stats", "--db", db, "--json")
    assert (stats["assets"], stats["failed"], stats["embedded"]) == (17, 1, 0)
    # a later full run adds the embeddings the hash-only run skipped; the broken file is not retried
    code, full = cli("index", collection, "--db", db, "--json")
    # the indexed original has no embedding yet, so neither can be copied: both decoded
    assert (full["decoded"], full["reused"], full["unchanged"], full["embedded"]) == (17, 0, 1, 17)
    third = collection / "third_copy.jpg"
    shutil.copy2(collection / "copy_of_first.jpg", third)
    code, again = cli("index", collection, "--db", db, "--json")
    assert (again["decoded"], again["reused"], again["embedded"]) == (0, 1, 1)
    code, dup_e = cli("duplicates", "--db", db, "--by", "embedding", "--threshold", "0.99", "--json")
    groups = [sorted(os.path.basename(f["path"]) for f in g["files"]) for g in dup_e["groups"]]
    assert sorted(["copy_of_first.jpg", first, "third_copy.jpg"]) in groups


def test_usage_errors_exit_2(tmp_path, collection):
    db = tmp_path / "db"
    assert cli("index", tmp_path / "nope", "--db", db)[0] == 2
    assert cli("stats", "--db", tmp_path / "never-made")[0] == 2
    cli("index", collection / "object", "--db", db, "--no-embed", "--json")
    code, text = cli("similar", collection / "object" / "ukbench00000.jpg", "--db", db, "--by", "md5")
    assert code == 2 and "unknown --by" in text
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    code, text = cli("similar", bad, "--db", db, "--by", "phash")
    assert code == 2 and "cannot decode query image" in text
    cfg = tmp_path / "c.yaml"
    cfg.write_text("features:\n  batch_sise: 3\n")
    code, text = cli("index", collection, "--db", db, "--config", cfg)
    assert code == 2 and "unknown config key 'features.batch_sise'" in text
    if not torch.cuda.is_available():
        code, text = cli("index", collection, "--db", db, "--device", "cuda")
        assert code == 2 and "no CUDA GPU" in text


def test_console_script_is_installed():
    exe = shutil.which("alice-gpu") or os.path.join(os.path.dirname(sys.executable), "alice-gpu")
    res = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "duplicates" in res.stdout
