"""Pinned staging: decoded uint8 batches from host memory to the device.

uint8 travels (4x less than float); the float conversion happens on the device.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Sequence

import numpy as np
import torch


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
        return torch.cuda.stream(self.compute_stream) if self.cuda else nullcontext()
