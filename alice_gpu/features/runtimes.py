"""Which runtime runs the embedding network: chosen here, and only here.

Torch-free, so that choosing costs nothing: a CPU run or query with ONNX Runtime never
imports torch. ``auto`` is torch on a CUDA device and, on the CPU, the first installed
of :data:`CPU_PREFERENCE`, an order measured side by side (``benchmarks/bench_embed.py``,
RESULTS.md). A runtime asked for by name that is unknown or not installed is a one-line
error, never a silent fall-back.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util

from ..errors import ConfigError

RUNTIMES = ("torch", "onnxruntime")
CPU_PREFERENCE = ("onnxruntime", "torch")     # measured: RESULTS.md, bench_embed.py
INSTALL = {"onnxruntime": "pip install onnxruntime", "torch": "pip install torch"}
MODULE = {"torch": "torch", "onnxruntime": "onnxruntime"}


def installed(runtime: str) -> bool:
    return importlib.util.find_spec(MODULE[runtime]) is not None


@functools.cache
def cuda_present() -> bool:
    """Whether the NVIDIA driver sees a GPU, asked without torch (libcuda through ctypes):
    ``--device auto`` on a machine without one then never imports torch."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    count = ctypes.c_int(0)
    try:
        return lib.cuInit(0) == 0 and lib.cuDeviceGetCount(ctypes.byref(count)) == 0 \
            and count.value > 0
    except AttributeError:
        return False


def device_kind(device: object) -> str:
    """``cpu`` or ``cuda`` for a torch.device, a device name (``auto``, ``cpu``,
    ``cuda:1``) or None (the configured ``auto``)."""
    kind = getattr(device, "type", None)
    if kind is not None:
        return str(kind)
    name = str(device or "auto")
    if name == "auto":
        return "cuda" if cuda_present() else "cpu"
    return name.split(":")[0]


def resolve_runtime(requested: str, device: object = "cpu") -> str:
    """The runtime that embeds on ``device`` for ``requested`` (auto, or a name)."""
    kind = device_kind(device)
    if requested == "auto":
        if kind != "cpu":
            return "torch"
        return next(r for r in CPU_PREFERENCE if r == "torch" or installed(r))
    if requested not in RUNTIMES:
        raise ConfigError(f"unknown runtime {requested!r} (choose from auto, "
                          f"{', '.join(RUNTIMES)})")
    if kind != "cpu" and requested != "torch":
        raise ConfigError(f"--runtime {requested} runs on the CPU; on {kind} the runtime is "
                          f"torch (--runtime torch, or --device cpu)")
    if not installed(requested):
        raise ConfigError(f"--runtime {requested} is not installed ({INSTALL[requested]})")
    return requested
