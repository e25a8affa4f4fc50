"""int8 embeddings (``features.precision: int8``): a model quantized once from generated
images, close to fp32, and an index that never mixes the two spaces."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import run_cli


@pytest.fixture
def int8_config(tmp_path):
    path = tmp_path / "int8.yaml"
    path.write_text("features:\n  precision: int8\n")
    return path


def test_calibration_images_are_generated_the_same_everywhere():
    from alice_gpu.features.quantize import calibration_images

    a, b = calibration_images(3), calibration_images(3)
    assert all(x.shape == (256, 256, 3) and x.dtype == np.uint8 for x in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert len({x.tobytes() for x in a}) == 3 and min(float(x.std()) for x in a) > 10


def test_the_int8_model_is_made_once_and_stays_near_fp32(photo_set):
    """Quantized on first use (said), cached beside the fp32 file, then loaded silently;
    its embeddings stay near fp32 on real photos (measured: min 0.94, median 0.98)."""
    from alice_gpu.features.onnx import OnnxEmbedder

    _, _, pixels = photo_set
    images = list(pixels[:48])
    said: list[str] = []
    int8 = OnnxEmbedder("efficientnet_lite0", announce=said.append, precision="int8")
    fp32 = OnnxEmbedder("efficientnet_lite0")
    assert said[-1].startswith("quantizing the model to int8, once")
    said.clear()
    again = OnnxEmbedder("efficientnet_lite0", announce=said.append, precision="int8")
    assert not said
    q, f = again.embed(images), fp32.embed(images)
    cos = np.sum(q * f, axis=1)
    assert np.median(cos) >= 0.95 and cos.min() >= 0.85, (np.median(cos), cos.min())
    assert np.allclose(np.linalg.norm(q, axis=1), 1, atol=1e-5)
    assert not np.allclose(q, f, atol=1e-4)            # really another model
    assert np.array_equal(int8.embed(images[:4]), q[:4])   # the same file, the same vectors


def _media(tmp_path, photos, n=6):
    media = tmp_path / "media"
    media.mkdir()
    srcs = sorted((photos / "images").iterdir())
    for src in srcs[:n]:
        shutil.copy2(src, media / src.name)
    return media, srcs


def test_an_int8_index_refuses_fp32_vectors_and_queries_in_int8(tmp_path, photos, int8_config):
    media, srcs = _media(tmp_path, photos)
    db = tmp_path / "db"
    code, out, err = run_cli("index", media, "--db", db, "--config", int8_config, "--json",
                             "--progress", "none")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["space"] == "int8" and doc["runtime"] == "onnxruntime" and doc["embedded"] == 6
    assert json.loads((db / "manifest.json").read_text())["space"] == "int8"
    shutil.copy2(srcs[50], media / srcs[50].name)        # a new file, default precision
    code, _, err = run_cli("index", media, "--db", db, "--progress", "none")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "holds int8 embeddings" in lines[0], err
    assert "features.precision: int8" in lines[0] and "Traceback" not in err
    code, out, _ = run_cli("stats", "--db", db, "--json")
    assert code == 0 and json.loads(out)["assets"] == 6          # nothing was added
    # a query from outside the index is embedded in the index's space, int8
    outside = tmp_path / "outside.jpg"
    shutil.copy2(srcs[2], outside)
    code, out, err = run_cli("similar", outside, "--db", db, "--json")
    assert code == 0, err
    best = json.loads(out)["results"][0]
    # (an fp32 query of this photo scores 0.976 against its int8 vector; stored vectors are
    # compressed, so the same space gives 0.9999)
    assert best["path"].endswith(srcs[2].name) and best["score"] >= 0.999, best


def test_an_fp32_index_refuses_int8_vectors_and_an_empty_one_takes_them(
        tmp_path, photos, int8_config):
    media, _ = _media(tmp_path, photos, 3)
    db = tmp_path / "db"
    assert run_cli("index", media, "--db", db, "--progress", "none")[0] == 0
    assert json.loads((db / "manifest.json").read_text())["space"] == "fp32"
    code, _, err = run_cli("index", media, "--db", db, "--config", int8_config,
                           "--progress", "none")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "holds fp32 embeddings" in lines[0], err
    assert json.loads((db / "manifest.json").read_text())["space"] == "fp32"
    hashes_only = tmp_path / "hashes"
    assert run_cli("index", media, "--db", hashes_only, "--no-embed", "--progress", "none")[0] == 0
    code2, out2, err2 = run_cli("index", media, "--db", hashes_only, "--config", int8_config,
                                "--json", "--progress", "none")
    assert code2 == 0 and json.loads(out2)["space"] == "int8", err2
    assert json.loads((hashes_only / "manifest.json").read_text())["space"] == "int8"


def test_int8_with_torch_is_a_one_line_error(tmp_path, photos, int8_config):
    media, _ = _media(tmp_path, photos, 1)
    code, _, err = run_cli("index", media, "--db", tmp_path / "db", "--runtime", "torch",
                           "--config", int8_config)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "int8 runs on onnxruntime" in err


def test_a_query_through_the_holder_is_embedded_in_the_index_space(tmp_path, photos,
                                                                   int8_config):
    """While a long-lived process holds an int8 index, another process's query image is
    featurised by that process (NeedsFeature), in int8, not in its configured fp32."""
    import subprocess
    import sys

    from alice_gpu import open_index
    from alice_gpu.config import load_config

    media, srcs = _media(tmp_path, photos, 4)
    db = tmp_path / "db"
    assert run_cli("index", media, "--db", db, "--config", int8_config, "--progress",
                   "none")[0] == 0
    outside = tmp_path / "outside.jpg"
    shutil.copy2(srcs[1], outside)
    api = open_index(db, config=load_config(int8_config))
    with api.hold():
        done = subprocess.run([sys.executable, "-m", "alice_gpu", "similar", str(outside),
                               "--db", str(db), "--json"], capture_output=True, text=True,
                              timeout=300)
    assert done.returncode == 0, done.stderr
    best = json.loads(done.stdout)["results"][0]
    assert best["path"].endswith(srcs[1].name) and best["score"] >= 0.999, best
