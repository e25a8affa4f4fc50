"""Pipeline, the local engine: decode on this machine's worker processes (in this process
for small jobs), features on one device, rows back in input order.

Decode runs at most ``prefetch_batches`` batches, and never more than
``max_memory_cache_mb`` of pixels, ahead of the device; batch n+1 is staged
while batch n computes. A previous in-process decode that never finished (the
process died on a file) sends the next job to isolated workers, where the
culprit is caught.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

from ..config import Config
from ..decode import DecodePlan, Known
from ..features.stage import Featuriser
from ..features.worker import decode_and_hash
from ..records import STATUS_SAME, AssetRecord, Decoded, FileEntry
from .dispatch import decode_stream
from .metrics import StageTimer
from .pool import DecodePool, effective_workers
from .stages import make_featuriser

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


class LocalEngine:
    """The local distributor over the stage callables (see :class:`.stages.Engine`)."""

    def __init__(self, cfg: Config, device: "torch.device | None", timer: StageTimer,
                 folder: str | os.PathLike[str], in_process_only: bool = False):
        self.cfg, self.device, self.timer = cfg, device, timer
        self.workers = 1 if in_process_only else effective_workers(cfg.performance.max_workers)
        self.parallel_threshold = cfg.decode.parallel_threshold
        self.guard = _InProcessGuard(folder)
        self.pool: DecodePool | None = None
        self._featuriser: Featuriser | None = None
        self.name = str(device) if device is not None else cfg.device
        self.runtime = ""
        self.on_device = False

    # ------------------------------------------------------------ the protocol
    def start(self, todo: Sequence[FileEntry]) -> None:
        """Small jobs decode in this process (no pool to start); large ones fork workers."""
        timeout = self.cfg.decode.timeout_seconds
        if todo and self.guard.tripped:
            log.warning("the last run died while decoding in-process; decoding in isolated "
                        "worker processes this time")
            self.pool, self.parallel_threshold = DecodePool(self.workers, timeout), 0
        elif todo and self.workers > 1 and len(todo) >= self.parallel_threshold:
            self.pool = DecodePool(self.workers, timeout)

    def featuriser(self) -> Featuriser:
        """The features stage on this engine's device, made on first use (loads torch and
        the model only when there is something to compute)."""
        if self._featuriser is None:
            self._featuriser = make_featuriser(self.cfg, self.device, self.timer)
            extractor = self._featuriser.extractor
            self.on_device = extractor is not None
            self.name = str(extractor.device) if extractor is not None else (
                "cpu" if self.device is None else str(self.device))
            self.runtime = extractor.runtime if self._featuriser.embed else "none"
        return self._featuriser

    def plan(self) -> DecodePlan:
        return self.featuriser().plan

    def records(self, todo: Sequence[FileEntry], plan: DecodePlan, known: Known,
                batch_size: int, stop: threading.Event) -> Iterator[list[AssetRecord | Decoded]]:
        """Stream decoded files into device batches; yields each batch's rows (and the
        byte-identical copies) as it finishes."""
        featuriser = self.featuriser()
        max_in_flight = max(self.workers, min(
            self.cfg.decode.prefetch_batches * batch_size,
            self.cfg.performance.max_memory_cache_mb * 2**20 // _item_bytes(todo, plan)))
        if self.pool is None:
            self.guard.arm()          # cleared once every in-process decode has returned
        stream = decode_stream(todo, plan, self.pool, max_in_flight, self.parallel_threshold,
                               known, self.cfg.decode.timeout_seconds)
        finished = False
        try:
            yield from self._batches(stream, featuriser, batch_size, stop)
            finished = not stop.is_set()
        finally:
            stream.close()            # stop dispatch; queued decodes are cancelled
            if self.guard.armed or finished:
                self.guard.clear()    # alive after every in-process decode, or isolated run done

    def decode_here(self, entries: Sequence[FileEntry], plan: DecodePlan) -> list[Decoded]:
        """A few files decoded in this process, each under its deadline."""
        return decode_and_hash(entries, plan, None, self.cfg.decode.timeout_seconds)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None

    # ------------------------------------------------------------ parts
    def _batches(self, stream: Iterator[Decoded], featuriser: Featuriser, batch_size: int,
                 stop: threading.Event) -> Iterator[list[AssetRecord | Decoded]]:
        """Batches to the device, each collected after the next is launched (copy and
        compute overlap); byte-identical copies ride along with the next batch out."""
        batch: list[Decoded] = []
        same: list[Decoded] = []
        launched: Callable[[], list[AssetRecord]] | None = None
        pictures = 0
        t_wait = time.perf_counter()
        for d in stream:
            if stop.is_set():
                break
            self.timer.add("decode", time.perf_counter() - t_wait)
            (same if d.status == STATUS_SAME else batch).append(d)
            if d.status != STATUS_SAME:     # a video weighs its frames: a batch is pictures
                pictures += len(d.frames.times) if d.frames is not None else 1
            if pictures >= batch_size:
                finish, launched = launched, featuriser.submit(batch)
                batch, pictures = [], 0
                if finish is not None:
                    yield [*finish(), *same]
                    same = []
            t_wait = time.perf_counter()
        if batch:                     # decoded already: finished even on a stop
            finish, launched = launched, featuriser.submit(batch)
            if finish is not None:
                yield finish()
        if launched is not None:
            yield launched()
        if same:
            yield same


def _item_bytes(todo: Sequence[FileEntry], plan: DecodePlan) -> int:
    """What a decoded file holds in memory, on average over ``todo``: a video carries up
    to ``MAX_FRAMES`` working images, so a run of videos keeps fewer files in flight."""
    from ..decode.video import MAX_FRAMES
    from ..discover import VIDEO_EXTENSIONS

    if not todo:
        return plan.bytes_per_item
    videos = sum(1 for e in todo if os.path.splitext(e.path)[1].lower() in VIDEO_EXTENSIONS)
    return int(plan.bytes_per_item * (1 + (MAX_FRAMES - 1) * videos / len(todo)))


class _InProcessGuard:
    """A marker file in the index folder while files are decoded in this process.

    A decoder that kills its process (a native crash), or hangs while holding the
    GIL so that the in-process deadline cannot leave it behind, cannot be caught
    in-process. The marker outlives such a death (or the kill that ends the hang),
    and the next run sends the job to isolated worker processes, which record the
    culprit and go on.
    """

    NAME = ".decoding-in-process"

    def __init__(self, folder: str | os.PathLike[str]):
        self.path = os.path.join(os.fspath(folder), self.NAME)
        self.tripped = os.path.exists(self.path)
        self.armed = False

    def arm(self) -> None:
        try:
            with open(self.path, "w") as fh:
                fh.write(f"{os.getpid()}\n")
            self.armed = True
        except OSError:   # read-only or full: decoding still works, unguarded
            pass

    def clear(self) -> None:
        try:
            os.unlink(self.path)
        except OSError:
            pass
        self.armed = self.tripped = False
