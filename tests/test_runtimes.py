"""The embedding network's runtimes: one place chooses, an export that equals eager torch,
a model file cached safely, and the same embeddings from every runtime."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import run_cli


def test_one_place_chooses_and_never_falls_back(monkeypatch):
    from alice_gpu.errors import ConfigError
    from alice_gpu.features import runtimes

    assert runtimes.resolve_runtime("auto", "cpu") == "onnxruntime"
    assert runtimes.resolve_runtime("auto", "cuda:0") == "torch"
    assert runtimes.resolve_runtime("torch", "cpu") == "torch"
    with pytest.raises(ConfigError, match="unknown runtime 'tflite'"):
        runtimes.resolve_runtime("tflite", "cpu")
    with pytest.raises(ConfigError, match="runs on the CPU"):
        runtimes.resolve_runtime("onnxruntime", "cuda")
    monkeypatch.setattr(runtimes, "installed", lambda name: name == "torch")
    with pytest.raises(ConfigError, match="pip install onnxruntime"):
        runtimes.resolve_runtime("onnxruntime", "cpu")
    assert runtimes.resolve_runtime("auto", "cpu") == "torch"


def test_the_cli_refuses_an_unknown_runtime_in_one_line(tmp_path, photos):
    code, _, err = run_cli("index", photos / "images", "--db", tmp_path / "db", "--runtime",
                           "tflite")
    assert code == 2 and "--runtime" in err and not (tmp_path / "db").exists()


def test_the_export_equals_eager_torch_on_real_photos(photo_set):
    import torch

    from alice_gpu.features.models import create_model
    from alice_gpu.features.onnx import OnnxEmbedder

    _, _, pixels = photo_set
    images = list(pixels[:48])
    model = create_model("efficientnet_lite0", "cpu", precision="fp32")
    with torch.inference_mode():
        eager = model.embed(torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)).numpy()
    got = OnnxEmbedder("efficientnet_lite0").embed(images)
    cos = np.sum(got * eager, axis=1)
    assert cos.min() >= 0.99999, cos.min()
    assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)


def test_the_model_file_is_cached_and_made_again_when_corrupt_or_stale(tmp_path, monkeypatch,
                                                                       model_cache):
    from alice_gpu.features import onnx

    said = []
    path = onnx.model_file("efficientnet_lite0", said.append)        # the session's export
    assert path.is_file() and path.parent == model_cache / "onnx"
    said.clear()
    assert onnx.model_file("efficientnet_lite0", said.append) == path and not said
    # a copy of the cache: spoiled there, then read; exported again, said on stderr
    monkeypatch.setenv("ALICE_GPU_CACHE", str(tmp_path))
    (tmp_path / "onnx").mkdir()
    spoiled = tmp_path / "onnx" / path.name
    spoiled.write_bytes(b"not a model")
    stale = tmp_path / "onnx" / "efficientnet_lite0-0000000000000000-torch0-ort0-opset1.onnx"
    stale.write_bytes(b"an older export")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    orphan = tmp_path / "onnx" / f".efficientnet_lite0-{gone}-abc123.onnx"  # killed mid-export
    orphan.write_bytes(b"half")
    embedder = onnx.OnnxEmbedder("efficientnet_lite0", 1, announce=said.append)
    assert said and "exporting" in said[0] and spoiled.stat().st_size > 1_000_000
    assert not stale.exists() and not orphan.exists() and embedder.embed([np.zeros((256, 256, 3), np.uint8)]).shape == (
        1, 1280)
    assert not [p for p in (tmp_path / "onnx").iterdir() if p.name.startswith(".")]


def test_index_by_default_runtime_matches_torch_for_every_photo(tmp_path, photos):
    """Done-when 3: every one of the photos, embedded by the default runtime and by torch
    eager, has cosine >= 0.9999 between the two."""
    import alice_gpu

    vectors = {}
    for runtime in ("auto", "torch"):
        db = tmp_path / runtime
        code, out, err = run_cli("index", photos / "images", "--db", db, "--device", "cpu",
                                 "--runtime", runtime, "--json", "--progress", "none")
        assert code == 0, err
        assert json.loads(out)["runtime"] == ("onnxruntime" if runtime == "auto" else "torch")
        api = alice_gpu.open_index(db)
        with api._open(read_only=True) as store:
            ids = store.con.execute("SELECT a.path, e.asset_id FROM assets a JOIN embeddings e "
                                    "ON a.id = e.asset_id ORDER BY a.path").fetchall()
            vectors[runtime] = {p: store.embedding_of(i) for p, i in ids}
    assert vectors["auto"].keys() == vectors["torch"].keys() and len(vectors["auto"]) > 400
    cos = np.array([float(np.dot(vectors["auto"][p], vectors["torch"][p]))
                    for p in vectors["auto"]])
    assert cos.min() >= 0.9999, cos.min()


def test_a_cold_query_outside_the_index_never_imports_torch(tmp_path, photos):
    media = tmp_path / "media"
    media.mkdir()
    srcs = sorted((photos / "images").iterdir())
    for src in srcs[:6]:
        shutil.copy2(src, media / src.name)
    assert run_cli("index", media, "--db", tmp_path / "db")[0] == 0
    probe = ("import json, sys\nfrom alice_gpu.cli import run\ncode = run(sys.argv[1:])\n"
             "sys.stderr.write('\\nPROBE ' + json.dumps({'code': code, 'torch': 'torch' in "
             "sys.modules}) + '\\n')\n")
    res = subprocess.run([sys.executable, "-c", probe, "similar", str(srcs[100]), "--db",
                          str(tmp_path / "db"), "--json"], capture_output=True, text=True,
                         timeout=300, env={**os.environ})
    doc = json.loads([ln for ln in res.stderr.splitlines() if ln.startswith("PROBE ")][-1][6:])
    assert doc == {"code": 0, "torch": False}, res.stderr[-1500:]
    assert json.loads(res.stdout)["query_in_index"] is False
