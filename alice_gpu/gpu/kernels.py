"""Our CUDA kernels (``kernels/*.cu``, package data), compiled at run time by CuPy (NVRTC).

Torch-free: a hash search on a GPU needs CuPy and the kernel sources only, so
``duplicates`` and ``similar --by <hash>`` never pay for importing torch. The
CPU twins in :mod:`alice_gpu.search.hamming` define the exact semantics; the
tests compare the two wherever a GPU is present.
"""

from __future__ import annotations

import importlib.util
import logging
from functools import lru_cache
from importlib import resources

import numpy as np

from ..errors import DeviceError

log = logging.getLogger(__name__)

KERNEL_PACKAGE = "alice_gpu.kernels"
# every kernel the code loads: (source file stem, function names in it)
KERNELS = {"hamming_pairs": ("hamming_pairs",),
           "hamming_topk": ("hamming_histogram", "hamming_select")}


def kernel_source(stem: str) -> str:
    """The CUDA source ``kernels/<stem>.cu`` from the installed package data."""
    source = resources.files(KERNEL_PACKAGE).joinpath(f"{stem}.cu")
    if not source.is_file():
        raise DeviceError(f"CUDA kernel source {stem}.cu is missing from this installation "
                          f"(package {KERNEL_PACKAGE}); reinstall alice-gpu")
    return source.read_text()


def _cupy():
    try:
        import cupy
    except ImportError:
        raise DeviceError("the CUDA kernels need CuPy: pip install 'alice-gpu[cuda]' "
                          "(or 'alice-gpu[cuda12]' for CUDA 12)") from None
    return cupy


def kernel_device(name: str) -> int | None:
    """The CUDA device index hash searches run on for device ``name``, or None for the CPU.

    ``auto`` uses a GPU when CuPy is installed and sees one (and does not import CuPy
    where it is not installed); ``cuda`` / ``cuda:N`` without one is an error, never a
    silent fall-back.
    """
    name = (name or "auto").lower()
    if name == "cpu":
        return None
    if name == "auto":
        if importlib.util.find_spec("cupy") is None:
            return None
        try:
            return 0 if _cupy().cuda.runtime.getDeviceCount() > 0 else None
        except Exception as exc:  # noqa: BLE001 - no driver, no device: the CPU answers
            log.debug("no CUDA device for the hash kernels (%s)", exc)
            return None
    if name != "cuda" and not (name.startswith("cuda:") and name[5:].isdigit()):
        raise DeviceError(f"unknown device {name!r} (choose auto, cpu, cuda or cuda:N)")
    index = int(name[5:] or 0)
    try:
        count = _cupy().cuda.runtime.getDeviceCount()
    except DeviceError:
        raise
    except Exception:  # noqa: BLE001 - CuPy's runtime error when there is no driver
        count = 0
    if not 0 <= index < count:
        raise DeviceError("--device cuda was requested but no CUDA GPU is available "
                          "(use --device cpu or auto)")
    return index


@lru_cache(maxsize=8)
def load_kernel(stem: str, name: str):
    """A kernel function from ``kernels/<stem>.cu``, compiled once per process."""
    cp = _cupy()
    return cp.RawModule(code=kernel_source(stem), options=("-std=c++17",)).get_function(name)


def cuda_hamming_pairs(hashes: np.ndarray, threshold: int, device: int = 0
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GPU twin of ``search.hamming.hamming_pairs``: same pairs, same (i, j) order."""
    cp = _cupy()
    n = len(hashes)
    empty = np.zeros(0, np.int64)
    if n < 2:
        return empty, empty, empty
    kernel = load_kernel("hamming_pairs", "hamming_pairs")
    with cp.cuda.Device(device):
        codes = cp.asarray(np.ascontiguousarray(hashes, dtype=np.uint64))
        capacity = max(4096, 8 * n)
        while True:
            out_i = cp.empty(capacity, dtype=cp.int32)
            out_j = cp.empty(capacity, dtype=cp.int32)
            out_d = cp.empty(capacity, dtype=cp.uint8)
            count = cp.zeros(1, dtype=cp.uint64)
            blocks = (n + 255) // 256
            kernel((blocks,), (256,), (codes, np.int64(n), np.int32(threshold), out_i, out_j,
                                       out_d, count, np.uint64(capacity)))
            found = int(count.get()[0])
            if found <= capacity:
                break
            capacity = found            # rare: more pairs than room; run again with room
        i = out_i[:found].get().astype(np.int64)
        j = out_j[:found].get().astype(np.int64)
        d = out_d[:found].get().astype(np.int64)
    order = np.lexsort((j, i))
    return i[order], j[order], d[order]


def cuda_hamming_topk(query: int, hashes: np.ndarray, k: int, device: int = 0
                      ) -> tuple[np.ndarray, np.ndarray]:
    """GPU twin of ``search.hamming.hamming_topk``: (distances, rows), nearest first,
    ties by row."""
    cp = _cupy()
    n = len(hashes)
    if n == 0 or k <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    k = min(k, n)
    hist_k = load_kernel("hamming_topk", "hamming_histogram")
    select_k = load_kernel("hamming_topk", "hamming_select")
    with cp.cuda.Device(device):
        codes = cp.asarray(np.ascontiguousarray(hashes, dtype=np.uint64))
        q = cp.asarray(np.array([query & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))
        hist = cp.zeros((1, 65), dtype=cp.uint64)
        blocks = ((n + 1) // 2 + 255) // 256
        hist_k((blocks, 1), (256,), (codes, np.int64(n), q, hist))
        cum = np.cumsum(hist.get()[0])
        cutoff = int(np.searchsorted(cum, k))          # first distance reaching k
        capacity = int(cum[cutoff])
        rows = cp.empty(capacity, dtype=cp.int64)
        dists = cp.empty(capacity, dtype=cp.uint8)
        count = cp.zeros(1, dtype=cp.uint64)
        select_k((blocks,), (256,), (codes, np.int64(n), np.uint64(query & 0xFFFFFFFFFFFFFFFF),
                                     np.int32(cutoff), rows, dists, count, np.uint64(capacity)))
        found = min(int(count.get()[0]), capacity)
        r = rows[:found].get()
        d = dists[:found].get().astype(np.int64)
    order = np.lexsort((r, d))[:k]
    return d[order], r[order]
