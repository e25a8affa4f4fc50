"""Stage 4, features: the stage callable, decoded files in, store rows out, on one device.

Torch-free itself: the compute under it (:mod:`.extractor`) is created only
when a run computes on a device, so a CPU hash-only run (every hash computed
in the decode workers) builds its rows here without importing torch.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import TYPE_CHECKING, Callable, Sequence

from ..decode import DecodePlan
from ..records import STATUS_OK, STATUS_RAW, AssetRecord, Decoded, FileEntry
from .clock import StageClock
from .frames import frames_of, per_item
from .worker import decode_and_hash

if TYPE_CHECKING:
    import torch

    from .batch import Pending
    from .extractor import FeatureExtractor


class Featuriser:
    """The features stage callable: decoded files in, store rows out, on one device.

    ``submit`` launches a batch and returns a function that waits for its rows (in
    the input's order), so a distributor can stage batch n+1 while batch n computes.
    Failed records pass through as failures; with ``--decode gpu`` JPEG bytes are
    decoded by nvJPEG here, and the files it rejects are decoded by Pillow instead.
    Without an extractor (CPU hash-only runs) every feature was computed in the
    decode workers and this only builds the rows.
    """

    def __init__(self, extractor: FeatureExtractor | None, plan: DecodePlan, embed: bool,
                 timer: StageClock | None = None):
        self.extractor, self.plan, self.embed, self.timer = extractor, plan, embed, timer

    @classmethod
    def create(cls, device: "torch.device | None", model_name: str | None, plan: DecodePlan,
               precision: str = "fp32", timer: StageClock | None = None,
               runtime: str = "torch", threads: int | None = None) -> "Featuriser":
        """``runtime``: ``torch`` on ``device``, or a CPU runtime (``onnxruntime``),
        chosen by :func:`~alice_gpu.features.runtimes.resolve_runtime`."""
        extractor = None
        if runtime == "onnxruntime":
            from .onnx import OnnxExtractor

            extractor = OnnxExtractor.create(model_name, threads, precision)
        elif runtime != "torch":
            from ..errors import ConfigError

            raise ConfigError(f"the {runtime} runtime is not available in this version")
        elif device is not None:
            from .extractor import FeatureExtractor

            extractor = FeatureExtractor.create(device, model_name, precision=precision)
        return cls(extractor, plan, model_name is not None, timer)

    def __call__(self, items: Sequence[Decoded]) -> list[AssetRecord]:
        return self.submit(items)()

    def submit(self, items: Sequence[Decoded]) -> Callable[[], list[AssetRecord]]:
        items = list(items)
        if self.extractor is None:
            rows = [AssetRecord.of(d, d.hashes) for d in items]
            return lambda: rows
        launched: list[tuple[list[int], Pending]] = []
        raws = [i for i, d in enumerate(items) if d.status == STATUS_RAW]
        if raws:
            launched += self._launch_raw(items, raws)
        host = [i for i, d in enumerate(items) if d.status == STATUS_OK]
        if host:
            need = any(items[i].hashes is None for i in host)
            pixels, owners = frames_of([items[i] for i in host], host)
            pending = self.extractor.submit(pixels, hashes=need, embed=self.embed,
                                            timer=self.timer)
            launched.append((owners, pending))

        def rows() -> list[AssetRecord]:
            out = {i: AssetRecord.of(d) for i, d in enumerate(items)
                   if d.status not in (STATUS_OK, STATUS_RAW)}
            for idx, pending in launched:
                for i, f in per_item(items, idx, pending.result()):
                    d = items[i]
                    hashes = d.hashes if d.hashes is not None else f.hashes
                    out[i] = AssetRecord.of(d, hashes, f.embedding, f.error)
            return [out[i] for i in range(len(items))]

        return rows

    def _launch_raw(self, items: list[Decoded], raws: list[int]) -> list[tuple[list[int], Pending]]:
        """nvJPEG decodes the JPEG bytes on the device; a rejected file is decoded by
        Pillow here and replaces its item (then computed with the host images)."""
        from ..gpu.nvjpeg import gpu_decode_jpegs

        t = time.perf_counter()
        batch, rejected = gpu_decode_jpegs([items[i].raw for i in raws],
                                           [items[i].orientation for i in raws],
                                           self.plan.working_size, self.extractor.device)
        if self.timer is not None:
            self.timer.add("decode", time.perf_counter() - t)
        pillow = replace(self.plan, hash_in_worker=False, keep_pixels=True, gpu_decode=False)
        for k in rejected:
            d = items[raws[k]]
            items[raws[k]] = decode_and_hash([FileEntry(d.path, d.size, d.mtime_ns)], pillow)[0]
        refused = set(rejected)
        on_gpu = [i for k, i in enumerate(raws) if k not in refused]
        if not on_gpu:
            return []
        return [(on_gpu, self.extractor.submit(None, hashes=True, embed=self.embed,
                                               timer=self.timer, batch=batch))]
