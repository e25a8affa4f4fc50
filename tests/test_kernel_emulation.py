"""Our CUDA kernels, run on the CPU: kernels/*.cu compiled for the host with a shim header.

Each kernel runs through its real launch code (``alice_gpu.gpu.kernels``) with CuPy
replaced by numpy-backed arrays, so the launch arguments, grid sizes and output
handling are exercised with the kernel source itself. Results are compared with the
numpy reference on awkward sizes. Every argument a launch passes must have exactly
the type the kernel's signature declares (a Python int or a wrong-width scalar is
the classic silent bug). No substitute for a GPU run (see tests/cuda_emu/shim.h).
"""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
import types
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest

from alice_gpu.gpu import kernels as K
from alice_gpu.search.hamming import brute_hamming_pairs, hamming_topk

SHIM = Path(__file__).parent / "cuda_emu"
GXX = shutil.which("g++")
pytestmark = pytest.mark.skipif(GXX is None, reason="needs g++ to compile the kernels for the host")

_SIGNATURE = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(([^)]*)\)', re.S)
# declared C type -> (numpy dtype, is pointer)
_TYPES = {"unsigned long long": np.uint64, "long long": np.int64, "int": np.int32,
          "unsigned int": np.uint32, "unsigned char": np.uint8}
_CTYPE = {t: c for c, t in _TYPES.items()}


def signatures(source: str) -> dict[str, list[tuple[str, type, bool]]]:
    """kernel name -> [(parameter name, numpy dtype, pointer?)] from the .cu source."""
    out = {}
    for name, params in _SIGNATURE.findall(source):
        args = []
        for param in params.split(","):
            words = param.replace("*", " * ").replace("__restrict__", " ").split()
            pname = words[-1]
            pointer = "*" in words
            ctype = " ".join(w for w in words[:-1] if w not in ("const", "*"))
            args.append((pname, _TYPES[ctype], pointer))
        out[name] = args
    return out


def _build(stem: str, tmp: Path) -> tuple[ctypes.CDLL, dict]:
    source = K.kernel_source(stem)
    sigs = signatures(source)
    cu = tmp / f"{stem}.cu"
    cu.write_text(source)
    wrappers = []
    for name, args in sigs.items():
        params = ", ".join(f"{_CTYPE[t]}{'*' if p else ''} {n}" for n, t, p in args)
        names = ", ".join(n for n, _, _ in args)
        wrappers.append(f'extern "C" void emu_{name}(unsigned gx, unsigned gy, unsigned bx, '
                        f'{params}) {{ emu::launch(gx, gy, bx, [&] {{ {name}({names}); }}); }}')
    harness = tmp / f"{stem}_emu.cpp"
    harness.write_text(f'#include "shim.h"\n#include "{cu}"\n' + "\n".join(wrappers) + "\n")
    lib = tmp / f"{stem}_emu.so"
    res = subprocess.run([GXX, "-std=c++20", "-O1", "-pthread", "-shared", "-fPIC",
                          "-Wall", "-Werror=return-type", f"-I{SHIM}", str(harness),
                          "-o", str(lib)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    return ctypes.CDLL(str(lib)), sigs


class FakeArray(np.ndarray):
    """A numpy array with CuPy's ``.get()``."""

    def get(self) -> np.ndarray:
        return np.asarray(self).copy()


def _fake_cupy() -> types.SimpleNamespace:
    def wrap(a):
        return np.ascontiguousarray(a).view(FakeArray)

    return types.SimpleNamespace(
        asarray=wrap,
        empty=lambda shape, dtype: wrap(np.empty(shape, dtype)),
        zeros=lambda shape, dtype: wrap(np.zeros(shape, dtype)),
        int32=np.int32, int64=np.int64, uint8=np.uint8, uint64=np.uint64,
        cuda=types.SimpleNamespace(Device=lambda i: nullcontext()))


class EmuKernel:
    """Stands in for a ``cupy.RawKernel``: checks argument types, then runs the host build."""

    def __init__(self, lib: ctypes.CDLL, name: str, args: list, calls: list):
        self.fn = getattr(lib, f"emu_{name}")
        self.name, self.args, self.calls = name, args, calls

    def __call__(self, grid, block, args):
        grid = tuple(grid) + (1,) * (2 - len(grid))
        assert len(args) == len(self.args), f"{self.name}: {len(args)} args, declares {len(self.args)}"
        c_args = []
        for value, (pname, dtype, pointer) in zip(args, self.args):
            if pointer:
                assert isinstance(value, np.ndarray) and value.dtype == dtype, (
                    f"{self.name}({pname}): passed {getattr(value, 'dtype', type(value))}, "
                    f"declared {np.dtype(dtype)}*")
                assert value.flags.c_contiguous
                c_args.append(ctypes.c_void_p(value.ctypes.data))
            else:
                assert isinstance(value, np.generic) and value.dtype == dtype, (
                    f"{self.name}({pname}): passed {type(value).__name__}, "
                    f"declared {np.dtype(dtype)}")
                c_args.append(np.ctypeslib.as_ctypes_type(dtype)(value.item()))
        self.calls.append((self.name, grid, tuple(block)))
        self.fn(ctypes.c_uint(grid[0]), ctypes.c_uint(grid[1]), ctypes.c_uint(block[0]), *c_args)


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kernels")
    built = {stem: _build(stem, tmp) for stem in K.KERNELS}
    calls: list = []
    return built, calls


@pytest.fixture
def on_host(emulated, monkeypatch):
    built, calls = emulated
    calls.clear()
    monkeypatch.setattr(K, "_cupy", _fake_cupy)
    monkeypatch.setattr(K, "load_kernel",
                        lambda stem, name: EmuKernel(built[stem][0], name,
                                                     built[stem][1][name], calls))
    return calls


def test_every_kernel_the_code_loads_is_declared_in_its_source(emulated):
    built, _ = emulated
    for stem, names in K.KERNELS.items():
        assert set(names) <= set(built[stem][1]), stem


def _codes(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)
    for k in range(1, n, 3):                      # near copies: 0..12 bits from a neighbour
        v = int(codes[k - 1])
        for bit in rng.integers(0, 64, rng.integers(0, 13)):
            v ^= 1 << int(bit)
        codes[k] = v
    if n > 8:
        codes[n // 2:n // 2 + 5] = codes[0]       # a run of equal codes
    return codes


@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 255, 256, 257, 513])
@pytest.mark.parametrize("threshold", [0, 10, 64])
def test_hamming_pairs_kernel_matches_numpy(on_host, n, threshold):
    codes = _codes(n, seed=n)
    got = K.cuda_hamming_pairs(codes, threshold)
    ref = brute_hamming_pairs(codes, threshold)
    assert [a.tolist() for a in got] == [b.tolist() for b in ref]
    if n >= 2:
        assert on_host and on_host[0][1][0] == (n + 255) // 256


def test_hamming_pairs_kernel_regrows_its_output_when_full(on_host):
    codes = np.zeros(300, np.uint64)              # every pair matches: 44,850 > 8n capacity
    got = K.cuda_hamming_pairs(codes, 0)
    assert len(got[0]) == 300 * 299 // 2
    assert len(on_host) == 2                      # ran again with room


@pytest.mark.parametrize("n", [1, 2, 3, 7, 255, 256, 257, 513, 1001])
@pytest.mark.parametrize("k", [1, 5, 300])
def test_hamming_topk_kernels_match_numpy(on_host, n, k):
    codes = _codes(n, seed=100 + n)
    query = int(codes[n // 2]) ^ 0b1011
    got = K.cuda_hamming_topk(query, codes, k)
    ref = hamming_topk(query, codes, k)
    assert [a.tolist() for a in got] == [b.tolist() for b in ref]


def test_signature_parser_reads_pointer_and_scalar_types():
    sig = signatures('extern "C" __global__ void f(const unsigned long long* __restrict__ a,\n'
                     '    const long long n, int t, unsigned char* __restrict__ d)')
    assert sig == {"f": [("a", np.uint64, True), ("n", np.int64, False),
                         ("t", np.int32, False), ("d", np.uint8, True)]}


def test_a_wrong_scalar_type_is_caught(on_host):
    kernel = K.load_kernel("hamming_pairs", "hamming_pairs")
    codes = _fake_cupy().asarray(np.arange(5, dtype=np.uint64))
    out = [_fake_cupy().zeros(16, t) for t in (np.int32, np.int32, np.uint8)]
    count = _fake_cupy().zeros(1, np.uint64)
    with pytest.raises(AssertionError, match="declared int32"):
        kernel((1,), (256,), (codes, np.int64(5), 3, *out, count, np.uint64(16)))
