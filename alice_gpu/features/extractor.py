"""Features on a device: batches of uint8 images in, hashes and embeddings out.

:class:`FeatureExtractor` is the batched compute under the stage callable
(:class:`~alice_gpu.features.stage.Featuriser`). The pipeline imports this
module only when there is something to compute on a device, so a run with
nothing to do, or a CPU hash-only run, never pays for importing torch.
"""

from __future__ import annotations

import logging
import time
from typing import Sequence

import numpy as np
import torch

from ..errors import reason
from ..gpu.devices import free_cached_memory, is_out_of_memory, model_batch_size
from ..gpu.staging import Stager
from .hashes_torch import compute_hashes, to_uint64
from .models import EmbeddingModel, create_model
from .batch import Features, Pending
from .clock import StageClock

log = logging.getLogger(__name__)


class FeatureExtractor:
    """Hashes (always) and embeddings (when a model is given) of uint8 batches.

    ``submit`` launches a batch and returns at once on CUDA (copy and compute on
    their own streams), so the pipeline stages batch n+1 while batch n runs;
    ``extract`` is submit + result. A CUDA out-of-memory error halves the batch
    (and the CNN's micro-batch) and retries; it never marks files failed.
    """

    runtime = "torch"

    def __init__(self, device: torch.device, model: EmbeddingModel | None):
        self.device = device
        self.model = model
        self.model_batch = model_batch_size(device)
        self.stager = Stager(device)

    @classmethod
    def create(cls, device: torch.device, model_name: str | None,
               precision: str = "fp32") -> "FeatureExtractor":
        model = create_model(model_name, device, precision=precision) if model_name else None
        return cls(device, model)

    @torch.inference_mode()
    def _launch(self, batch: torch.Tensor, hashes: bool, embed: bool
                ) -> tuple[dict[str, torch.Tensor] | None, torch.Tensor | None]:
        with self.stager.compute():
            out_hashes = compute_hashes(batch.contiguous()) if hashes else None
            emb = None
            if embed and self.model is not None:
                emb = torch.cat([self.model.embed(batch[i:i + self.model_batch])
                                 for i in range(0, len(batch), self.model_batch)])
            return out_hashes, emb

    def submit(self, pixels: Sequence[np.ndarray] | None, hashes: bool = True, embed: bool = True,
               timer: StageClock | None = None, batch: torch.Tensor | None = None) -> Pending:
        """Launch one batch (host ``pixels``, or a ``batch`` already on the device)."""
        n = len(batch) if batch is not None else len(pixels)
        try:
            t0 = time.perf_counter()
            dev = batch if batch is not None else self.stager.stage(pixels)
            t1 = time.perf_counter()
            got, emb = self._launch(dev, hashes, embed)
            t2 = time.perf_counter()
        except Exception as exc:  # noqa: BLE001 - handled below, per batch or per image
            return Pending(lambda e=exc: self._recover(e, pixels, batch, hashes, embed, timer))
        if timer is not None:
            timer.add("transfer", t1 - t0)
            timer.add("compute", t2 - t1)   # launch (all of it on the CPU)

        def finish() -> list[Features]:
            try:
                t = time.perf_counter()
                host_h = None if got is None else {k: to_uint64(v) for k, v in got.items()}
                host_e = None if emb is None else emb.float().cpu().numpy()
                if timer is not None:
                    timer.add("compute", time.perf_counter() - t)
            except Exception as exc:  # noqa: BLE001 - asynchronous CUDA errors surface here
                return self._recover(exc, pixels, batch, hashes, embed, timer)
            return [Features(None if host_h is None else {k: int(v[i]) for k, v in host_h.items()},
                             None if host_e is None else host_e[i]) for i in range(n)]

        if self.device.type == "cpu":
            result = finish()
            return Pending(lambda: result)
        return Pending(finish)

    def _recover(self, exc: BaseException, pixels, batch, hashes: bool, embed: bool,
                 timer: StageClock | None) -> list[Features]:
        items = list(pixels) if pixels is not None else [b for b in batch]
        if is_out_of_memory(exc):
            free_cached_memory(self.device)
            if len(items) > 1 or self.model_batch > 1:
                self.model_batch = max(1, self.model_batch // 2)
                half = max(1, len(items) // 2)
                log.warning("out of device memory: retrying in halves of %d", half)
                return [f for part in (items[:half], items[half:]) if part
                        for f in self._extract_items(part, pixels is not None, hashes, embed, timer)]
        if len(items) == 1:
            return [Features(None, None, reason(exc, "features: "))]
        log.warning("batch of %d failed on %s (%s); retrying one by one",
                    len(items), self.device, exc)
        return [f for item in items
                for f in self._extract_items([item], pixels is not None, hashes, embed, timer)]

    def _extract_items(self, items, on_host: bool, hashes, embed, timer) -> list[Features]:
        if on_host:
            return self.submit(items, hashes, embed, timer).result()
        return self.submit(None, hashes, embed, timer, batch=torch.stack(items)).result()

    def extract(self, pixels: Sequence[np.ndarray], hashes: bool = True, embed: bool = True,
                timer: StageClock | None = None) -> list[Features]:
        """Features per image; a failing batch is halved (out of memory) or split per image."""
        return self.submit(pixels, hashes, embed, timer).result()
