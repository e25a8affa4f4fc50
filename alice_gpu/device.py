"""Stage 3, device: the one place that knows whether there is a GPU.

Device selection, pinned host batches and host→device copies live here;
every later stage takes a ``torch.device`` and runs the same code on either.
"""

from __future__ import annotations

import logging
import os
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .errors import DeviceError

log = logging.getLogger(__name__)


def cuda_available() -> bool:
    return torch.cuda.is_available()


def select_device(name: str = "auto") -> torch.device:
    """``auto`` → CUDA when present, else CPU; an explicit ``cuda`` without a GPU raises."""
    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if cuda_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not cuda_available():
            raise DeviceError("--device cuda was requested but no CUDA GPU is available "
                              "(use --device cpu or auto)")
        return torch.device(name)
    raise DeviceError(f"unknown device {name!r} (choose auto, cpu or cuda)")


def stack_batch(images: Sequence[np.ndarray], device: torch.device) -> torch.Tensor:
    """Stack (S, S, 3) uint8 images into one NHWC host tensor, pinned when bound for CUDA."""
    n = len(images)
    shape = images[0].shape if images[0].ndim == 3 else (*images[0].shape, 1)  # luma: C = 1
    host = torch.empty((n, *shape), dtype=torch.uint8, pin_memory=device.type == "cuda")
    np.stack(images, out=host.numpy().reshape(n, *images[0].shape))
    return host


def to_device(host_nhwc: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a uint8 NHWC batch to ``device`` (async from pinned memory) as uint8 NCHW.

    uint8 travels (4x less than float); the float conversion happens on the device.
    """
    dev = host_nhwc.to(device, non_blocking=True)
    return dev.permute(0, 3, 1, 2).contiguous()


def hashes_in_workers(device: torch.device | None, parallel_hash_computation: bool) -> bool:
    """On the CPU the decode workers hash in parallel (no extra copy); a GPU hashes batches."""
    return parallel_hash_computation and (device is None or device.type == "cpu")


def resolve_precision(device: torch.device, requested: str = "auto") -> str:
    """``auto``: fp16 on CUDA, bf16 on CPUs with native bf16 (oneDNN), else fp32."""
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "fp16"
    try:
        native_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        native_bf16 = False
    return "bf16" if native_bf16 else "fp32"


def model_batch_size(device: torch.device) -> int:
    """Images per CNN forward pass: small on CPU (activations stay in cache; measured
    36 img/s at 8 vs 15 img/s at 96 on 2 cores), the whole batch on a GPU."""
    return 8 if device.type == "cpu" else 1 << 30


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------ CUDA kernels (CuPy)

KERNEL_DIR = Path(os.environ.get("ALICE_GPU_KERNELS",
                                 Path(__file__).resolve().parent.parent / "kernels"))


def _cupy():
    try:
        import cupy
    except ImportError:
        raise DeviceError("the CUDA kernels need CuPy: pip install 'alice-gpu[cuda]'") from None
    return cupy


@lru_cache(maxsize=8)
def load_kernel(source: str, name: str):
    """A kernel from ``kernels/<source>.cu``, compiled once per process by CuPy (NVRTC)."""
    cp = _cupy()
    path = KERNEL_DIR / f"{source}.cu"
    if not path.exists():
        raise DeviceError(f"CUDA kernel source {path} is missing")
    return cp.RawModule(code=path.read_text(), options=("-std=c++17",)).get_function(name)


def cuda_kernels_usable(device: torch.device | None) -> bool:
    """True when hash searches can run on ``device`` with our kernels."""
    if device is None or device.type != "cuda":
        return False
    try:
        _cupy()
    except DeviceError:
        return False
    return True


def cuda_hamming_pairs(hashes: np.ndarray, threshold: int, device: torch.device
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GPU twin of ``vectors.hamming_pairs``: same pairs, same (i, j) order."""
    cp = _cupy()
    n = len(hashes)
    empty = np.zeros(0, np.int64)
    if n < 2:
        return empty, empty, empty
    kernel = load_kernel("hamming_pairs", "hamming_pairs")
    with cp.cuda.Device(device.index or 0):
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


def cuda_hamming_topk(query: int, hashes: np.ndarray, k: int, device: torch.device
                      ) -> tuple[np.ndarray, np.ndarray]:
    """GPU twin of ``vectors.hamming_topk``: (distances, rows), nearest first, ties by row."""
    cp = _cupy()
    n = len(hashes)
    if n == 0 or k <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    k = min(k, n)
    hist_k = load_kernel("hamming_topk", "hamming_histogram")
    select_k = load_kernel("hamming_topk", "hamming_select")
    with cp.cuda.Device(device.index or 0):
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


# ------------------------------------------------------------------ overlapped CUDA transfers

class Stager:
    """Host → device copies of uint8 batches.

    On CUDA: a ring of pinned host buffers reused batch after batch, copies
    issued on their own stream with ``non_blocking=True``, and an event per
    copy that the compute stream waits on, so the copy of batch n+1 overlaps
    the compute of batch n. A ring slot is reused only after its copy's event
    has completed. On the CPU it is a plain stack (no copy at all).
    """

    def __init__(self, device: torch.device, slots: int = 3):
        self.device = device
        self.cuda = device.type == "cuda"
        self.slots = slots
        self._ring: list[torch.Tensor | None] = [None] * slots
        self._done: list[object | None] = [None] * slots
        self._next = 0
        if self.cuda:
            self.copy_stream = torch.cuda.Stream(device)
            self.compute_stream = torch.cuda.Stream(device)

    def _slot(self, shape: tuple[int, ...]) -> tuple[int, torch.Tensor]:
        k = self._next
        self._next = (k + 1) % self.slots
        if self._done[k] is not None:
            self._done[k].synchronize()          # the previous copy from this slot is over
        buf = self._ring[k]
        if buf is None or buf.shape[1:] != shape[1:] or buf.shape[0] < shape[0]:
            buf = torch.empty(shape, dtype=torch.uint8, pin_memory=True)
            self._ring[k] = buf
        return k, buf[: shape[0]]

    def stage(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """uint8 NCHW on the device, ready for the compute stream."""
        if not self.cuda:
            return to_device(stack_batch(images, self.device), self.device)
        n = len(images)
        shape = images[0].shape if images[0].ndim == 3 else (*images[0].shape, 1)
        k, host = self._slot((n, *shape))
        np.stack(images, out=host.numpy().reshape(n, *images[0].shape))
        with torch.cuda.stream(self.copy_stream):
            dev = host.to(self.device, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self.copy_stream)
        self._done[k] = done
        self.compute_stream.wait_event(done)     # compute starts when its copy has landed
        dev.record_stream(self.compute_stream)
        return dev.permute(0, 3, 1, 2)

    def compute(self):
        """Context for the compute stream (a no-op on the CPU)."""
        from contextlib import nullcontext

        return torch.cuda.stream(self.compute_stream) if self.cuda else nullcontext()


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def free_cached_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ------------------------------------------------------------------ GPU JPEG decode (nvJPEG)

def gpu_decode_jpegs(datas: Sequence[bytes], orientations: Sequence[int], size: int,
                     device: torch.device) -> tuple[torch.Tensor | None, list[int]]:
    """Decode JPEG bytes on the GPU (torchvision / nvJPEG) to a uint8 NCHW batch of size².

    EXIF orientation is applied with flips/transposes on the device; every image
    is then resized (antialiased bilinear) to ``size`` x ``size``. Returns the
    batch of the images nvJPEG accepted and the indices it rejected (for the CPU
    decoder to take over). Not bit-identical to Pillow: see README.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    try:
        decoded = decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        decoded = []
        for t in tensors:   # one bad file must not sink its batch: retry one by one
            try:
                decoded.append(decode_jpeg(t, mode=ImageReadMode.RGB, device=device))
            except RuntimeError:
                decoded.append(None)
    out, rejected = [], []
    for i, (img, orient) in enumerate(zip(decoded, orientations)):
        if img is None:
            rejected.append(i)
            continue
        img = _orient(img, orient)
        img = torch.nn.functional.interpolate(img[None].float(), size=(size, size),
                                              mode="bilinear", antialias=True,
                                              align_corners=False)
        out.append(img.round_().clamp_(0, 255).to(torch.uint8))
    return (torch.cat(out) if out else None), rejected


def _orient(img: torch.Tensor, orientation: int) -> torch.Tensor:
    """EXIF orientation 1..8 on a CHW tensor (same transforms as ImageOps.exif_transpose)."""
    if orientation == 2:
        return img.flip(-1)
    if orientation == 3:
        return img.flip(-1).flip(-2)
    if orientation == 4:
        return img.flip(-2)
    if orientation == 5:
        return img.transpose(-1, -2)
    if orientation == 6:
        return img.transpose(-1, -2).flip(-1)
    if orientation == 7:
        return img.transpose(-1, -2).flip(-1).flip(-2)
    if orientation == 8:
        return img.transpose(-1, -2).flip(-2)
    return img
