"""The one place that knows whether there is a GPU: device selection and device facts.

Everything else takes a ``torch.device`` and runs the same code on either.
Torch is imported here at the top: import this module only where a model or
device compute runs (the kernels of :mod:`.kernels` need CuPy, not torch).
"""

from __future__ import annotations

import logging

import torch

from ..errors import DeviceError

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


def hashes_in_workers(device: torch.device | None, parallel_hash_computation: bool) -> bool:
    """On the CPU the decode workers hash in parallel (no extra copy); a GPU hashes batches."""
    return parallel_hash_computation and (device is None or device.type == "cpu")


def resolve_precision(device: torch.device, requested: str = "auto") -> str:
    """``auto``: fp16 on CUDA; bf16 on CPUs where it is native (oneDNN says so and ATen
    runs its AVX-512 kernels; ``ATEN_CPU_CAPABILITY=avx2`` turns them off); else fp32."""
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "fp16"
    try:
        native_bf16 = (bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
                       and torch.backends.cpu.get_cpu_capability().startswith("AVX512"))
    except (AttributeError, RuntimeError):
        native_bf16 = False
    return "bf16" if native_bf16 else "fp32"


def model_batch_size(device: torch.device) -> int:
    """Images per CNN forward pass: small on CPU, where activations then stay in cache
    (micro-batches of 8 beat whole batches, RESULTS.md), the whole batch on a GPU."""
    return 8 if device.type == "cpu" else 1 << 30


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def free_cached_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
