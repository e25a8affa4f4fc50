"""Pipeline, stages: what a run computes and where, the same for every engine.

The decode plan (what the decode workers produce), the features stage callable
built for a device, the metadata version a stored row needs, and the
:class:`Engine` protocol the run consumes: the local engine and the Ray engine
are distributors over the same callables and differ only in where they run them.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol, Sequence

from ..config import Config
from ..decode import DecodePlan, Known
from ..errors import ConfigError, QueryError
from ..features.stage import Featuriser
from ..records import AssetRecord, Decoded, FileEntry

if TYPE_CHECKING:
    import threading

    import torch


class EngineFailure(Exception):
    """An engine gave up on some files (a cluster lost them): the run does those itself."""


class Engine(Protocol):
    """A distributor over the stage callables; the run calls these in order."""

    name: str                       # the summary's ``device`` for a run on this engine
    on_device: bool                 # rows come from a device (batch metrics count them)

    def plan(self) -> DecodePlan:
        """What its decode tasks produce (fixed once the engine is prepared)."""

    def start(self, todo: Sequence[FileEntry]) -> None:
        """Before any thread or torch: start workers (a fork is cheap now)."""

    def records(self, todo: Sequence[FileEntry], plan: DecodePlan, known: Known,
                batch_size: int, stop: "threading.Event") -> Iterator[list[AssetRecord | Decoded]]:
        """Rows of the files (and, as ``Decoded`` with status ``same-as-indexed``, the
        byte-identical copies of indexed files), as each batch is done; stops early when
        ``stop`` is set. Raises :class:`EngineFailure` for files it gave up on."""

    def close(self) -> None: ...


def need_meta(cfg: Config) -> int:
    """The metadata version a stored row must have to count as done for this run."""
    from ..decode.metadata import META_VERSION

    return META_VERSION if cfg.metadata.extract else 0


def hashes_on_cpu_workers(device_type: str | None, cfg: Config) -> bool:
    """On the CPU (or with no device) the decode workers hash in parallel, where the
    pixels already are; a GPU hashes whole batches. One rule for every engine, so two
    runs on the same device store the same bits."""
    return cfg.performance.parallel_hash_computation and device_type in (None, "cpu")


def decode_plan(cfg: Config, device: "torch.device | str | None") -> DecodePlan:
    """What the decode workers produce for this run's configuration and device (a
    torch.device, a device type such as "cuda", or None: no device, hash-only)."""
    kind = getattr(device, "type", device)
    if kind is not None:
        kind = str(kind).split(":")[0]
    if not cfg.features.embed:
        # hash-only: luma straight from the JPEG decoder at the hashes' working size
        # (most JPEGs: estimated from their 1/8-scale block means)
        parallel = cfg.performance.parallel_hash_computation
        return DecodePlan(cfg.decode.hash_size, "L", hash_in_worker=parallel,
                          keep_pixels=not parallel, draft_size=2 * cfg.decode.hash_size,
                          block_means=cfg.decode.block_means,
                          metadata=cfg.metadata.extract, gps=cfg.metadata.gps)
    gpu = cfg.decode.engine == "gpu"
    return DecodePlan(cfg.decode.working_size, "RGB",
                      hash_in_worker=hashes_on_cpu_workers(kind, cfg) and not gpu,
                      keep_pixels=True, gpu_decode=gpu, metadata=cfg.metadata.extract,
                      gps=cfg.metadata.gps)


def make_featuriser(cfg: Config, device: "torch.device | str | None" = None,
                    timer: Any = None) -> Featuriser:
    """The features stage callable for ``cfg`` on ``device`` (a torch.device, a name, or
    None for the configured one); rows only for a CPU hash-only run. The local engine and
    every Ray actor build theirs here."""
    if not cfg.features.embed and cfg.performance.parallel_hash_computation:
        plain = device if device is not None and not isinstance(device, str) else None
        return Featuriser(None, decode_plan(cfg, plain), False, timer)
    runtime = cpu_runtime(cfg, device)
    if runtime is not None:                  # the CPU, without torch
        return Featuriser.create(None, cfg.features.model if cfg.features.embed else None,
                                 decode_plan(cfg, "cpu"), cpu_precision(cfg), timer, runtime,
                                 cfg.features.threads or None)
    from ..gpu.devices import resolve_precision, select_device

    dev = device if device is not None and not isinstance(device, str) else \
        select_device(device or cfg.device)
    return Featuriser.create(dev, cfg.features.model if cfg.features.embed else None,
                             decode_plan(cfg, dev), resolve_precision(dev, cfg.features.precision),
                             timer)


def cpu_runtime(cfg: Config, device: Any = None) -> str | None:
    """The CPU runtime that embeds for ``cfg`` on ``device`` (None: torch does), chosen in
    :mod:`~alice_gpu.features.runtimes`; only embeddings go to it (hashes that a plan
    leaves to the features stage are the workers' numpy ones)."""
    from ..features.runtimes import resolve_runtime

    runtime = resolve_runtime(cfg.features.runtime, device or cfg.device)
    precision = cfg.features.precision
    if not cfg.features.embed:
        return None
    if runtime == "torch":
        if precision == "int8":
            raise ConfigError("features.precision int8 runs on onnxruntime, on the CPU "
                              "(--runtime onnxruntime --device cpu)")
        return None
    if precision not in ("auto", "fp32", "int8"):
        raise ConfigError(f"features.precision {precision} is torch's; "
                          f"{runtime} runs fp32 or int8 (--runtime torch for {precision})")
    return runtime


def cpu_precision(cfg: Config) -> str:
    """What a CPU runtime runs for ``cfg``: int8 when asked for, else fp32."""
    return "int8" if cfg.features.precision == "int8" else "fp32"


def in_space(cfg: Config, space: str) -> Config:
    """``cfg`` for a query of an index whose vectors live in ``space``: the query image
    is embedded in that space, whatever the configured precision."""
    if space == "int8":
        return cfg.with_overrides(features__precision="int8")
    if cfg.features.precision == "int8":
        return cfg.with_overrides(features__precision="auto")
    return cfg


# features stages kept for the life of the process (a server's model stays resident)
_RESIDENT: dict[tuple, Featuriser] = {}
_RESIDENT_LOCK = threading.Lock()


def featurise_outside(cfg: Config, model: str, embedded_index: bool, want_embedding: bool,
                      isolated: bool = False, space: str = "fp32"
                      ) -> Callable[[str], AssetRecord]:
    """A file outside the index to its row, made the way the index made its rows: the
    decode plan of a run with (or, for a hash-only index, without) embeddings, and the
    same stage callables. Hashes alone are computed in numpy here (no torch) wherever a
    CPU run computes them in its workers. ``isolated``: decoded in a worker process (a
    file from a stranger: an upload), which a decoder's crash cannot take down. ``space``:
    the index's embedding space (the query is embedded in it)."""
    made = in_space(cfg, space).with_overrides(features__embed=embedded_index or want_embedding,
                              features__model=model, decode__engine="cpu",
                              metadata__extract=False)

    def featurise(path: str) -> AssetRecord:
        try:
            st = os.stat(path)
        except OSError as exc:
            raise QueryError(f"cannot read query image {path}: {exc.strerror}") from None
        featuriser = _featuriser_for(made, model, want_embedding)
        entry = FileEntry(path, st.st_size, st.st_mtime_ns)
        decoded = (decode_isolated if isolated else _decode_here)(
            entry, featuriser.plan, made.decode.timeout_seconds)
        with _RESIDENT_LOCK:              # one model, one batch at a time
            return featuriser([decoded])[0]

    return featurise


def _featuriser_for(made: Config, model: str, want_embedding: bool) -> Featuriser:
    """The features stage for a query, made once per process and kept; embeddings by
    the CPU runtime (a cold CLI then pays neither torch's import nor a model build)."""
    cpu_plan = decode_plan(made, "cpu" if made.features.embed else None)
    if not want_embedding and cpu_plan.hash_in_worker:
        return Featuriser(None, cpu_plan, False)
    int8 = made.features.precision == "int8"      # an int8 index: its queries too
    if int8 and want_embedding:
        if made.features.runtime == "torch":
            raise ConfigError("this index holds int8 embeddings, which only onnxruntime "
                              "makes: run without --runtime torch")
        made = made.with_overrides(device="cpu", features__runtime="onnxruntime")
    runtime = cpu_runtime(made.with_overrides(features__embed=want_embedding), "cpu") \
        if made.device in ("auto", "cpu") else None
    if runtime is not None:
        precision = cpu_precision(made)
        key = (model, runtime, precision, made.features.threads, cpu_plan)
        with _RESIDENT_LOCK:
            if key not in _RESIDENT:
                _RESIDENT[key] = Featuriser.create(None, model, cpu_plan, precision, None,
                                                   runtime, made.features.threads or None)
            return _RESIDENT[key]
    from ..gpu.devices import resolve_precision, select_device

    dev = select_device(made.device)
    precision = resolve_precision(dev, made.features.precision)
    plan = decode_plan(made, dev)
    key = (model if want_embedding else None, str(dev), precision, plan)
    with _RESIDENT_LOCK:
        if key not in _RESIDENT:
            _RESIDENT[key] = Featuriser.create(dev, key[0], plan, precision)
        return _RESIDENT[key]


def warm_outside(cfg: Config) -> None:
    """The resident features stage for queries with embeddings, and the isolated decoder,
    made now (a server's first search then pays for neither)."""
    from loky import get_reusable_executor

    made = cfg.with_overrides(features__embed=True, metadata__extract=False)
    _featuriser_for(made, made.features.model, True)
    get_reusable_executor(max_workers=1, timeout=600).submit(os.getpid).result()


def _decode_here(entry: FileEntry, plan: DecodePlan, timeout: float) -> "Decoded":
    from ..features.worker import decode_and_hash

    return decode_and_hash([entry], plan, None, timeout)[0]


def decode_isolated(entry: FileEntry, plan: DecodePlan, timeout: float) -> "Decoded":
    """One file decoded in a worker process (loky's reusable executor, started once and
    kept while it is used), under the same deadline and pixel limits; a worker that
    dies is a failed record, not a dead server."""
    from concurrent.futures.process import BrokenProcessPool

    from loky import get_reusable_executor

    from ..features.worker import decode_and_hash
    from ..records import Decoded

    executor = get_reusable_executor(max_workers=1, timeout=600)
    try:
        return executor.submit(decode_and_hash, [entry], plan, None, timeout).result(
            timeout=2 * timeout + 60)[0]
    except (BrokenProcessPool, TimeoutError) as exc:
        return Decoded.failed(entry, f"the decoder did not survive this file "
                                     f"({type(exc).__name__})")
