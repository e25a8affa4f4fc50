"""Pipeline, the Ray engine: the same stage callables, distributed by Ray Data.

The run (:mod:`.run`) does discovery and change detection against the store,
the run record, the single writer (DuckDB and FAISS), progress, metrics and
Ctrl-C. This engine only does the middle: the files to do go to Ray Data as
path lists, ``decode_and_hash`` (the decode stage, the same function the local
pool runs, with the same per-file deadline) runs as Ray tasks on CPUs, and the
features stage (:class:`~alice_gpu.features.stage.Featuriser`) runs in a pool of
actors that load the model once, with a GPU each when the cluster has them.

The engine connects and chooses its device before a run starts, so a cluster
that cannot be reached, or has no GPU for ``--device cuda``, is a one-line
error, never a quiet local run. Ray retries a task whose worker died, Ray Data
one whose code raised (``TASK_RETRIES``); if a batch still fails, Ray's error
becomes :class:`~.stages.EngineFailure` and the run does the files Ray did not
return itself, counting them in its summary. Ray is an optional dependency
(``pip install 'alice-gpu[distributed]'``), imported only here.
"""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np

from ..decode import DecodePlan, Known
from ..errors import ConfigError
from ..records import STATUS_SAME, AssetRecord, Decoded, FileEntry
from .stages import EngineFailure, decode_plan, make_featuriser

if TYPE_CHECKING:
    import threading

    from ..config import Config

log = logging.getLogger(__name__)

TASK_RETRIES = 3          # a decode task whose code raised is run again (a dead worker: by Ray)
CONNECT_TIMEOUT = 10.0    # seconds to reach a cluster's address before it is called unreachable


def import_ray() -> Any:
    """Ray, or a one-line error saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401 - Ray Data is the part we use
    except ImportError:
        raise ConfigError("--engine ray needs Ray: pip install 'alice-gpu[distributed]' "
                          "(or pip install 'ray[data]')") from None
    return ray


def _objects(items: list) -> np.ndarray:
    """A 1-d object array (np.array would try to unpack dataclasses with __len__)."""
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


def decode_batch(batch: dict[str, np.ndarray], plan: DecodePlan, known: Known | None,
                 timeout: float, decode: Callable[..., list[Decoded]] | None = None
                 ) -> dict[str, np.ndarray]:
    """A Ray task: one batch of path rows through the decode stage callable."""
    from ..decode.deadline import mark_disposable
    from ..features.worker import decode_and_hash

    mark_disposable()          # Ray replaces a worker the deadline's backstop ends
    entries = [FileEntry(str(p), int(s), int(m))
               for p, s, m in zip(batch["path"], batch["size"], batch["mtime_ns"])]
    return {"item": _objects((decode or decode_and_hash)(entries, plan, known, timeout))}


class FeaturesActor:
    """A Ray actor: the features stage callable, its model loaded once per actor."""

    def __init__(self, cfg: "Config", device: str | None):
        self.featuriser = make_featuriser(cfg, device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = list(batch["item"])
        same = [d for d in items if d.status == STATUS_SAME]      # copied by the run
        todo = [d for d in items if d.status != STATUS_SAME]
        return {"item": _objects((self.featuriser(todo) if todo else []) + same)}


def _reachable(address: str | None) -> None:
    """A ``host:port`` (or ``ray://host:port``) address that accepts no connection is a
    one-line error now, not minutes of Ray's own retries."""
    if not address or address == "auto":
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--address {address!r} is not host:port (or auto)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), CONNECT_TIMEOUT).close()
    except OSError as exc:
        raise ConfigError(f"cannot reach the Ray cluster at {address}: "
                          f"{exc.strerror or exc}") from None


class RayEngine:
    """A run on Ray (``--engine ray``): where, how wide, and on which device."""

    name = "ray"
    on_device = True

    def __init__(self, address: str | None = None, gpus_per_worker: float | None = None,
                 actors: int | None = None, decode: Callable[..., list[Decoded]] | None = None,
                 init_kwargs: dict | None = None):
        self.address, self.gpus_per_worker, self.actors = address, gpus_per_worker, actors
        self.decode = decode                    # the decode callable (tests wrap it)
        self.init_kwargs = init_kwargs or {}
        self.started = False
        self.cfg: "Config | None" = None
        self.device: str | None = None
        self.gpus = 0.0

    def prepare(self, cfg: "Config") -> "RayEngine":
        """Connect, and choose the actors' device: any problem is a one-line error here."""
        ray = self._connect()
        self.cfg = cfg
        self.device, self.gpus = self._device(cfg, ray)
        from ..features.runtimes import resolve_runtime

        self.runtime = resolve_runtime(cfg.features.runtime, self.device or "cpu") \
            if cfg.features.embed else "none"
        return self

    def _connect(self) -> Any:
        ray = import_ray()
        for name in ("ray", "ray.data"):           # our progress is the run's; theirs is noise
            logging.getLogger(name).setLevel(logging.WARNING)
        _reachable(self.address)
        if ray.is_initialized():
            return ray
        try:
            ray.init(address=self.address, ignore_reinit_error=True, include_dashboard=False,
                     log_to_driver=False, logging_level=logging.WARNING, **self.init_kwargs)
        except Exception as exc:  # noqa: BLE001 - any failure to start or join is one line
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            where = f"the Ray cluster at {self.address}" if self.address else "a local Ray"
            raise ConfigError(f"cannot start or join {where}: {type(exc).__name__}"
                              + (f": {first}" if first else "")) from None
        self.started = True
        return ray

    def _device(self, cfg: "Config", ray: Any) -> tuple[str | None, float]:
        """The device the actors compute on, and the GPUs each one asks Ray for."""
        gpus = float(ray.cluster_resources().get("GPU", 0))
        want = cfg.device
        if want == "cpu" or (want == "auto" and gpus == 0):
            return ("cpu" if cfg.features.embed or not cfg.performance.parallel_hash_computation
                    else None), 0.0
        if gpus == 0:
            raise ConfigError(f"--device {want}: the Ray cluster has no GPU")
        return "cuda", self.gpus_per_worker if self.gpus_per_worker is not None else 1.0

    # ------------------------------------------------------------ the engine protocol
    def plan(self) -> DecodePlan:
        """What the decode tasks produce: the plan a local run on the actors' device uses,
        so both hash with the same code."""
        if self.cfg is None:
            raise RuntimeError("RayEngine.prepare(cfg) comes before a run")
        return decode_plan(self.cfg, self.device)

    def start(self, todo: Sequence[FileEntry]) -> None:
        return None                      # Ray's workers are the cluster's

    def records(self, todo: Sequence[FileEntry], plan: DecodePlan, known: Known,
                batch_size: int, stop: "threading.Event"
                ) -> Iterator[list[AssetRecord | Decoded]]:
        """Lists of rows (and byte-identical copies) as Ray finishes them."""
        import ray

        ds = self._dataset(ray, todo, plan, known, batch_size)
        try:
            for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
                if stop.is_set():
                    return
                yield list(batch["item"])
        except ray.exceptions.RayError as exc:       # a batch Ray gave up on
            text = str(exc).strip().splitlines()
            raise EngineFailure(text[0][:200] if text else type(exc).__name__) from None

    def _dataset(self, ray: Any, todo: Sequence[FileEntry], plan: DecodePlan, known: Known,
                 batch_size: int) -> Any:
        cfg = self.cfg
        cluster = ray.cluster_resources()
        cpus = max(1, int(cluster.get("CPU", 1)))
        actors = self.actors or (max(1, int(cluster.get("GPU", 0) // self.gpus))
                                 if self.gpus else 1)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.max_errored_blocks = 0
        # a task whose worker died is retried by Ray; one whose code raised, here
        ctx.retried_map_errors = True
        ctx.max_map_retries = TASK_RETRIES
        rows = [{"path": e.path, "size": e.size, "mtime_ns": e.mtime_ns} for e in todo]
        ds = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows) // batch_size
                                                                       + 1, 4 * cpus)))
        ds = ds.map_batches(decode_batch, batch_size=batch_size, batch_format="numpy",
                            fn_kwargs={"plan": plan, "known": known, "decode": self.decode,
                                       "timeout": cfg.decode.timeout_seconds},
                            num_cpus=1)
        return ds.map_batches(FeaturesActor, batch_size=batch_size, batch_format="numpy",
                              fn_constructor_kwargs={"cfg": cfg, "device": self.device},
                              compute=ray.data.ActorPoolStrategy(size=actors),
                              num_gpus=self.gpus or None, num_cpus=0 if self.gpus else 1)

    def close(self) -> None:
        if self.started:
            import ray

            ray.shutdown()
            self.started = False

