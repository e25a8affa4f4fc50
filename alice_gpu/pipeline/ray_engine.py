"""Pipeline, the Ray engine: the same stage callables, distributed by Ray Data.

The driver is the local engine's job (:class:`~.run._IndexJob`): discovery and
change detection against the store, the run record, the single writer (DuckDB
and FAISS), progress, metrics, Ctrl-C. Only the middle differs: the files to do
go to Ray Data as path lists, ``decode_and_hash`` (the decode stage, the same
function the local pool runs) runs as Ray tasks on CPUs, and the features stage
(:class:`~alice_gpu.features.stage.Featuriser`) runs in a pool of actors that
load the model once, with a GPU each when the cluster has them. Rows stream back
to the driver's writer.

Ray retries a task whose worker died, Ray Data one whose code raised
(``TASK_RETRIES``), and restarts a dead actor (Ray Data's default). If a batch still fails, the files Ray did not return are done by the
local engine in the driver, so each one ends indexed or recorded as failed.
Ray is an optional dependency (``pip install 'alice-gpu[distributed]'``),
imported only here and only for ``--engine ray``.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ..decode import DecodePlan, Known
from ..errors import ConfigError
from ..records import STATUS_SAME, AssetRecord, Decoded, FileEntry

if TYPE_CHECKING:
    from ..config import Config
    from ..features.stage import Featuriser

log = logging.getLogger(__name__)

TASK_RETRIES = 3          # a decode task whose code raised is run again (a dead worker: by Ray)


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
                 decode: Callable[..., list[Decoded]] | None = None) -> dict[str, np.ndarray]:
    """A Ray task: one batch of path rows through the decode stage callable."""
    from ..features.worker import decode_and_hash

    entries = [FileEntry(str(p), int(s), int(m))
               for p, s, m in zip(batch["path"], batch["size"], batch["mtime_ns"])]
    return {"item": _objects((decode or decode_and_hash)(entries, plan, known))}


class FeaturesActor:
    """A Ray actor: the features stage callable, its model loaded once per actor."""

    def __init__(self, cfg: "Config", device: str | None):
        from .run import make_featuriser

        self.featuriser = make_featuriser(cfg, device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = list(batch["item"])
        same = [d for d in items if d.status == STATUS_SAME]      # copied by the driver
        todo = [d for d in items if d.status != STATUS_SAME]
        return {"item": _objects((self.featuriser(todo) if todo else []) + same)}


class RayEngine:
    """Options of a run on Ray (``--engine ray``): where, and how wide."""

    def __init__(self, address: str | None = None, gpus_per_worker: float | None = None,
                 actors: int | None = None, decode: Callable[..., list[Decoded]] | None = None,
                 init_kwargs: dict | None = None):
        self.address, self.gpus_per_worker, self.actors = address, gpus_per_worker, actors
        self.decode = decode                    # the decode callable (tests wrap it)
        self.init_kwargs = init_kwargs or {}
        self.started = False

    def connect(self) -> Any:
        ray = import_ray()
        for name in ("ray", "ray.data"):           # our progress is the run's; theirs is noise
            logging.getLogger(name).setLevel(logging.WARNING)
        if not ray.is_initialized():
            ray.init(address=self.address, ignore_reinit_error=True, include_dashboard=False,
                     log_to_driver=False, logging_level=logging.WARNING, **self.init_kwargs)
            self.started = True
        return ray

    def close(self) -> None:
        if self.started:
            import ray

            ray.shutdown()
            self.started = False

    def device(self, cfg: "Config", ray: Any) -> tuple[str | None, float]:
        """The device the actors compute on, and the GPUs each one asks Ray for."""
        gpus = float(ray.cluster_resources().get("GPU", 0))
        want = cfg.device
        if want == "cpu" or (want == "auto" and gpus == 0):
            return ("cpu" if cfg.features.embed or not cfg.performance.parallel_hash_computation
                    else None), 0.0
        if gpus == 0:
            raise ConfigError(f"--device {want}: the Ray cluster has no GPU")
        return "cuda", self.gpus_per_worker if self.gpus_per_worker is not None else 1.0

    def records(self, todo: list[FileEntry], plan: DecodePlan, known: Known, cfg: "Config",
                batch_size: int, stop: Any) -> Any:
        """Yield lists of rows (and byte-identical copies) as Ray finishes them."""
        ray = self.connect()
        device, gpus = self.device(cfg, ray)
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        actors = self.actors or max(1, int(ray.cluster_resources().get("GPU", 0) // gpus)
                                    if gpus else 1)
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
                            fn_kwargs={"plan": plan, "known": known, "decode": self.decode},
                            num_cpus=1)
        ds = ds.map_batches(FeaturesActor, batch_size=batch_size, batch_format="numpy",
                            fn_constructor_kwargs={"cfg": cfg, "device": device},
                            compute=ray.data.ActorPoolStrategy(size=actors),
                            num_gpus=gpus or None, num_cpus=0 if gpus else 1)
        for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
            if stop.is_set():
                return
            yield list(batch["item"])


def ray_decode_and_featurise(job: Any, engine: RayEngine, todo: list[FileEntry],
                             featuriser: "Featuriser") -> list[Decoded]:
    """The Ray engine's middle of a run (the local engine's ``_decode_and_featurise``);
    returns the byte-identical copies for the driver to copy."""
    cfg = job.cfg
    same: list[Decoded] = []
    done: set[str] = set()
    t_wait = time.perf_counter()
    try:
        for items in engine.records(todo, featuriser.plan, job.known, cfg,
                                    job.summary.batch_size, job.stop):
            job.timer.add("decode", time.perf_counter() - t_wait)
            rows = [x for x in items if isinstance(x, AssetRecord)]
            same += [x for x in items if not isinstance(x, AssetRecord)]
            done.update(x.path for x in items)
            if rows:
                job.batches += 1
                job.device_items += len(rows)
                job._emit(rows)
            t_wait = time.perf_counter()
    except Exception as exc:  # noqa: BLE001 - Ray gave up on a batch: nothing may go missing
        rest = [e for e in todo if e.path not in done]
        log.warning("Ray could not finish %d files (%s); the driver does them itself",
                    len(rest), str(exc).strip().splitlines()[-1][:200] if str(exc) else
                    type(exc).__name__)
        if rest and not job.stop.is_set():
            same += job.local_decode_and_featurise(rest, featuriser)
    return same
