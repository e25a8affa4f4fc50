"""Stage 3, device: the one place that knows whether there is a GPU.

Device selection, pinned host batches and host→device copies live here;
every later stage takes a ``torch.device`` and runs the same code on either.
"""

from __future__ import annotations

import logging
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
