"""Stage 4, features: a batch of decoded images in, hashes and embeddings out, on one device.

The pipeline imports this module only when there is something to compute,
so a run with nothing to do never pays for importing torch.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .device import model_batch_size, stack_batch, synchronize, to_device
from .embedding import EmbeddingModel, create_model
from .hashing import compute_hashes, to_uint64
from .metrics import StageTimer

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Features:
    """One image's result; ``error`` is set (and the rest None) when it failed on the device."""

    hashes: dict[str, int] | None
    embedding: np.ndarray | None
    error: str | None = None


class FeatureExtractor:
    """Hashes (always) and embeddings (when a model is given) of uint8 batches."""

    def __init__(self, device: torch.device, model: EmbeddingModel | None):
        self.device = device
        self.model = model
        self.model_batch = model_batch_size(device)

    @classmethod
    def create(cls, device: torch.device, model_name: str | None,
               precision: str = "fp32") -> "FeatureExtractor":
        model = create_model(model_name, device, precision=precision) if model_name else None
        return cls(device, model)

    @torch.inference_mode()
    def compute(self, host_batch: torch.Tensor, hashes: bool = True, embed: bool = True,
                timer: StageTimer | None = None
                ) -> tuple[dict[str, np.ndarray] | None, np.ndarray | None]:
        """(hashes name → uint64 array or None, embeddings (N, dim) float32 or None)."""
        t0 = time.perf_counter()
        batch = to_device(host_batch, self.device)
        synchronize(self.device)
        t1 = time.perf_counter()
        out_hashes = ({k: to_uint64(v) for k, v in compute_hashes(batch).items()}
                      if hashes else None)
        emb = None
        if embed and self.model is not None:
            parts = [self.model.embed(batch[i:i + self.model_batch])
                     for i in range(0, len(batch), self.model_batch)]
            emb = torch.cat(parts).float().cpu().numpy()
        synchronize(self.device)
        if timer is not None:
            timer.add("transfer", t1 - t0)
            timer.add("compute", time.perf_counter() - t1)
        return out_hashes, emb

    def extract(self, pixels: Sequence[np.ndarray], hashes: bool = True, embed: bool = True,
                timer: StageTimer | None = None) -> list[Features]:
        """Features per image; a batch that fails is retried image by image."""
        try:
            t = time.perf_counter()
            host = stack_batch(pixels, self.device)
            if timer is not None:
                timer.add("transfer", time.perf_counter() - t)
            got, emb = self.compute(host, hashes, embed, timer)
        except Exception as exc:  # noqa: BLE001 - isolate the culprit, keep the rest
            if len(pixels) == 1:
                return [Features(None, None, f"features: {type(exc).__name__}: {exc}"[:300])]
            log.warning("batch of %d failed on %s (%s); retrying one by one",
                        len(pixels), self.device, exc)
            return [f for p in pixels for f in self.extract([p], hashes, embed, timer)]
        return [Features(None if got is None else {k: int(v[i]) for k, v in got.items()},
                         None if emb is None else emb[i]) for i in range(len(pixels))]
