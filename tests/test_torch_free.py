"""Queries that need no model never import torch (it costs seconds to import on slow machines)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

_PROBE = """
import json, sys
from alice_gpu.cli import run
code = run(sys.argv[1:])
sys.stderr.write("\\nPROBE " + json.dumps({"code": code, "torch": "torch" in sys.modules}) + "\\n")
"""


def _probe(*args) -> tuple[int, bool, str]:
    """Run one CLI command in a fresh interpreter: (exit code, was torch imported, stdout)."""
    res = subprocess.run([sys.executable, "-c", _PROBE, *map(str, args)], capture_output=True,
                         text=True, timeout=300)
    line = [ln for ln in res.stderr.splitlines() if ln.startswith("PROBE ")]
    assert line, res.stderr[-2000:]
    doc = json.loads(line[-1][6:])
    return doc["code"], doc["torch"], res.stdout


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, photos):
    """Eight photos indexed with hashes and embeddings (in this process, with torch)."""
    import alice_gpu

    root = tmp_path_factory.mktemp("torchfree")
    media = root / "media"
    media.mkdir()
    for src in sorted((photos / "images").iterdir())[:8]:
        shutil.copy2(src, media / src.name)
    summary = alice_gpu.open_index(root / "db").index([media], device="cpu")
    assert summary.decoded == 8
    return media, root / "db"


@pytest.mark.parametrize("by", ["embedding", "phash", "dhash"])
def test_similar_of_an_indexed_image_does_not_import_torch(indexed, by):
    media, db = indexed
    query = sorted(media.iterdir())[2]
    code, torch_loaded, out = _probe("similar", query, "--db", db, "--by", by, "--json")
    assert code == 0 and json.loads(out)["query_in_index"] is True
    assert not torch_loaded


@pytest.mark.parametrize("args", [["duplicates"], ["duplicates", "--by", "embedding"],
                                  ["stats"]], ids=" ".join)
def test_duplicates_and_stats_do_not_import_torch(indexed, args):
    _, db = indexed
    code, torch_loaded, _ = _probe(*args, "--db", db, "--json")
    assert code == 0 and not torch_loaded


def test_index_with_nothing_to_do_does_not_import_torch(indexed):
    media, db = indexed
    code, torch_loaded, out = _probe("index", media, "--db", db, "--json")
    assert code == 0 and json.loads(out)["unchanged"] == 8
    assert not torch_loaded


def test_a_query_image_outside_the_index_imports_torch_only_with_the_torch_runtime(indexed,
                                                                                   tmp_path):
    """The probe has teeth: where torch runs the model (``--runtime torch``), torch is
    there; the default CPU runtime (ONNX Runtime) featurises without it."""
    media, db = indexed
    outside = tmp_path / "q.jpg"
    shutil.copy2(sorted(media.iterdir())[0], outside)
    code, torch_loaded, out = _probe("similar", outside, "--db", db, "--json", "--runtime",
                                     "torch")
    assert code == 0 and json.loads(out)["query_in_index"] is False
    assert torch_loaded
    code, torch_loaded, out = _probe("similar", outside, "--db", db, "--json")
    assert code == 0 and json.loads(out)["results"][0]["score"] > 0.999
    assert not torch_loaded
