"""CUDA kernels in kernels/: they compile for Hopper wherever nvcc exists, they ship in the
package, and on a GPU they give exactly the CPU reference's answers (alice_gpu.search.hamming)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from alice_gpu.gpu.kernels import KERNELS as LOADED, kernel_source
from alice_gpu.search.hamming import hamming_pairs, hamming_topk
from conftest import cuda_test

KERNELS = sorted((Path(__file__).resolve().parent.parent / "kernels").glob("*.cu"))
NVCC = shutil.which("nvcc")


def test_every_kernel_the_code_loads_ships_with_the_package():
    assert {p.stem for p in KERNELS} == set(LOADED)
    for stem, functions in LOADED.items():
        source = kernel_source(stem)          # importlib.resources, as an installed package
        for name in functions:
            assert f"void {name}(" in source, (stem, name)


@pytest.mark.slow
@pytest.mark.skipif(NVCC is None, reason="nvcc is not installed on this machine")
@pytest.mark.parametrize("source", KERNELS, ids=lambda p: p.name)
def test_kernel_compiles_for_sm90(source, tmp_path):
    res = subprocess.run([NVCC, "-arch=sm_90", "-Werror", "all-warnings", "-c", str(source),
                          "-o", str(tmp_path / "k.o")], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]


def _codes(n: int, seed: int) -> np.ndarray:
    """Clusters of near-identical hashes plus exact duplicates and random noise."""
    rng = np.random.default_rng(seed)
    centres = rng.integers(0, 2**63, max(1, n // 20), dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    pick = centres[rng.integers(0, len(centres), n)]
    flips = np.zeros(n, dtype=np.uint64)
    for _ in range(3):
        flips |= np.uint64(1) << rng.integers(0, 64, n).astype(np.uint64)
    codes = pick ^ np.where(rng.random(n) < 0.7, flips, np.uint64(0))
    codes[: n // 10] = rng.integers(0, 2**63, n // 10, dtype=np.uint64)
    return codes


@cuda_test
@pytest.mark.parametrize("n, threshold", [(1, 4), (257, 0), (1000, 6), (5000, 10)])
def test_cuda_pairs_equal_cpu_reference(n, threshold):
    from alice_gpu.gpu.kernels import cuda_hamming_pairs

    codes = _codes(n, n)
    ref = hamming_pairs(codes, threshold)
    got = cuda_hamming_pairs(codes, threshold, 0)
    for a, b in zip(ref, got):
        assert np.array_equal(a, b)


@cuda_test
@pytest.mark.parametrize("n, k", [(1, 3), (100, 10), (4097, 50), (20000, 7)])
def test_cuda_topk_equals_cpu_reference(n, k):
    from alice_gpu.gpu.kernels import cuda_hamming_topk

    codes = _codes(n, k)
    for q in (codes[0], codes[-1], np.uint64(0)):
        ref = hamming_topk(int(q), codes, k)
        got = cuda_hamming_topk(int(q), codes, k, 0)
        assert np.array_equal(ref[0], got[0]) and np.array_equal(ref[1], got[1])
