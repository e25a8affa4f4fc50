"""Run metrics (the seed's PerformanceMetrics): stage timers and peak memory of the process tree.

``memory_usage_mb`` is the peak of the summed resident memory of this process
and all its descendants (the decode workers), sampled
with psutil every 100 ms, and never less than the peak RSS the kernel reports
for this process or its largest waited-for child.
"""

from __future__ import annotations

import itertools
import resource
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    import psutil

STAGES = ("discover", "decode", "transfer", "compute", "write")


@dataclass
class RunMetrics:
    """Stored per run in DuckDB (``runs.metrics``) and printed at the end of every run.

    batch_efficiency: images that went through the device divided by the
    capacity of the batches that carried them (batches x batch_size); 1.0 means
    every device batch was full.
    """

    files_processed: int = 0
    processing_time: float = 0.0
    average_file_time: float = 0.0
    memory_usage_mb: float = 0.0
    cache_hit_rate: float = 0.0
    cache_hits: int = 0
    batch_efficiency: float = 0.0
    batches: int = 0
    stage_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))

    def to_dict(self) -> dict:
        out = asdict(self)
        out["stage_seconds"] = {k: round(v, 3) for k, v in self.stage_seconds.items()}
        for key in ("processing_time", "average_file_time", "memory_usage_mb", "cache_hit_rate",
                    "batch_efficiency"):
            out[key] = round(out[key], 4)
        return out


class StageTimer:
    """Accumulates wall seconds per stage; safe to use from several threads."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self._lock = threading.Lock()

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - t)


class PeakMemory:
    """Samples the process tree's RSS in a daemon thread; ``peak_mb`` after ``stop``.

    Listing descendants means reading every process's stat on the machine, so the
    list is refreshed once a second (and when a process vanishes); each 100 ms
    sample only reads the listed processes' RSS.
    """

    REFRESH = 10   # samples between two listings of the descendants

    def __init__(self, interval: float = 0.1):
        self.interval = interval
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="alice-rss", daemon=True)

    def _run(self) -> None:
        import psutil   # on this thread: off the path to the first decode

        me = psutil.Process()
        procs: list[psutil.Process] = []
        for n in itertools.count():
            if n % self.REFRESH == 0 or not procs:
                procs = _tree(me)
            total = 0
            for p in procs:
                try:
                    total += p.memory_info().rss
                except psutil.Error:       # a worker gone: list them again next time
                    procs = []
            self.peak_mb = max(self.peak_mb, total / 2**20)
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        self.peak_mb = max(self.peak_mb, own, child)


def _tree(proc: "psutil.Process") -> list["psutil.Process"]:
    """``proc`` and all its descendants (the decode workers)."""
    import psutil

    try:
        return [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return [proc]
