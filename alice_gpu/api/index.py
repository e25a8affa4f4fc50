"""The Python API: everything the CLI does, for notebooks and media organisers.

When another process holds the index (an ``index`` run), each call is answered by
that process over its socket (:mod:`.routing`); inside the holder, calls run on
views of the held store (:mod:`.held`). Either way the caller gets what a
direct call returns.

    import alice_gpu
    idx = alice_gpu.open_index("~/my-index")
    idx.index(["~/Pictures"])
    idx.similar("cat.jpg", k=5)
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from ..config import Config, default_db_dir, load_config
from ..errors import ConfigError, QueryMemoryError
from ..features.modelcfg import known_dim
from ..search.cache import QueryCache, file_stamp
from .catalog import Catalog
from .media import Media
from .organizing import Organizing
from .routing import routed
from ..store import DB_FILE, MANIFEST_FILE, Store

if TYPE_CHECKING:
    from ..actions.moves import MoveReport
    from ..pipeline import IndexSummary, ProgressFn
    from ..pipeline.ray_engine import RayEngine
    from ..search.evaluate import Evaluation
    from ..search.queries import DuplicatesResult, SimilarResult
    from ..store.filters import Filters
    from .held import HeldIndex

# the pipeline, the queries and anything with torch are imported where they are
# needed: `stats`, and queries answered from stored features, start in a fraction
# of a second and never load torch

log = logging.getLogger(__name__)


class AliceIndex(Catalog, Media, Organizing):
    """One index folder. Each call opens the store for just as long as it needs it."""

    def __init__(self, db: str | os.PathLike[str] | None = None, config: Config | None = None,
                 *, held: "HeldIndex | None" = None):
        self.folder = Path(db).expanduser() if db else default_db_dir()
        self.config = config or load_config()
        self._held = held          # inside the process that holds the index: its views
        perf = self.config.performance
        self.cache = QueryCache(perf.search_cache_size, perf.cache_ttl_seconds)

    def _cache_key(self, *parts: Any) -> tuple:
        db = self.folder / DB_FILE
        return (*parts, file_stamp(db), file_stamp(db.with_name(DB_FILE + ".wal")))

    def _manifest(self) -> dict[str, Any]:
        try:
            return json.loads((self.folder / MANIFEST_FILE).read_text())
        except (OSError, ValueError):
            return {}

    def _open(self, read_only: bool) -> Store:
        """Queries use the model the index was built with; writes the configured one.
        Inside the holder: a view of the held store (a context manager alike)."""
        if self._held is not None:
            return self._held.view()
        manifest = self._manifest()
        name = manifest.get("model") if read_only else None
        name = name or self.config.features.model
        dim = manifest.get("dim") if manifest.get("model") == name else None
        if not isinstance(dim, int):
            dim = known_dim(name)
        if dim is None:
            from ..features.models import model_cfg   # a plug-in model: ask the registry

            dim = model_cfg(name).dim
        # an index run caches what it writes within the decode budget; a query's DuckDB
        # share of its own budget is small: it only streams (the rest is the vector index)
        limit = (max(64, self.config.query.memory_mb // 16) if read_only else
                 max(256, self.config.performance.max_memory_cache_mb))
        return Store(self.folder, model=name, dim=dim, read_only=read_only, memory_limit_mb=limit)

    @routed
    def index(self, paths: Iterable[str | os.PathLike[str]], *, device: str | None = None,
              embed: bool | None = None, batch_size: int | None = None,
              workers: int | None = None, retry_failed: bool = False,
              decode: str | None = None, prune: bool = False,
              progress: ProgressFn | None = None, engine: str = "local",
              address: str | None = None, gpus_per_worker: float | None = None,
              ray_engine: "RayEngine | None" = None, settle: float = 0.0,
              within: list[str] | None = None) -> IndexSummary:
        """Add new and changed files under ``paths``; drop vanished ones.

        ``progress`` receives :class:`~alice_gpu.pipeline.ProgressEvent` objects.

        Unchanged files that failed before are skipped unless ``retry_failed``.
        ``engine="ray"`` runs the decode and features stages on a Ray cluster (``address``,
        default: a local one), with ``gpus_per_worker`` GPUs per features actor. Files
        changed less than ``settle`` seconds ago are left for a later run; ``within``: walk
        only these folders under ``paths`` (where a watcher saw changes).
        """
        cfg = self.config.with_overrides(device=device, features__embed=embed,
                                         performance__batch_size=batch_size,
                                         performance__max_workers=workers,
                                         decode__engine=decode)
        roots = [os.path.expanduser(os.fspath(p)) for p in paths]
        dev = None
        local = engine == "local" and ray_engine is None
        if local and (cfg.device not in ("auto", "cpu") or cfg.decode.engine == "gpu"):
            from ..gpu.devices import select_device

            dev = select_device(cfg.device)  # an explicit GPU request fails up front
            if cfg.decode.engine == "gpu" and dev.type != "cuda":
                raise ConfigError("--decode gpu needs a CUDA device (--device cuda)")
        if engine not in ("local", "ray"):
            raise ConfigError(f"unknown engine {engine!r} (choose from local, ray)")
        if not local and cfg.decode.engine == "gpu":
            raise ConfigError("--decode gpu goes with the local engine (--engine local)")
        if engine == "ray" and ray_engine is None:
            from ..pipeline.ray_engine import RayEngine

            ray_engine = RayEngine(address, gpus_per_worker)
        if ray_engine is not None:
            ray_engine.prepare(cfg)    # connected, device chosen: or a one-line error now
        try:
            return self._run_index(roots, cfg, dev, progress, retry_failed,
                                   (prune, settle, within), ray_engine)
        finally:
            if ray_engine is not None:
                ray_engine.close()

    def _run_index(self, roots, cfg, dev, progress, retry_failed, how, engine):
        from ..search.vectors import VectorIndex
        from .held import holding

        if self._held is not None:              # a long-lived holder (serve) runs it
            with self._held.index_lock, self._open(read_only=False) as store:
                vectors = self._held.vectors = VectorIndex(store)
                return self._index_into(store, vectors, roots, cfg, dev, progress,
                                        retry_failed, how, engine)
        with self._open(read_only=False) as store, holding(store, self.folder) as held:
            vectors = held.vectors = VectorIndex(store)   # queries share the run's index
            return self._index_into(store, vectors, roots, cfg, dev, progress, retry_failed,
                                    how, engine)

    @staticmethod
    def _index_into(store, vectors, roots, cfg, dev, progress, retry_failed, how, engine):
        from ..features.quantize import embedding_space
        from ..pipeline import run_index

        if cfg.features.embed:      # never two embedding spaces in one index
            store.claim_space(embedding_space(cfg.features.precision))
        prune, settle, within = how
        summary = run_index(store, vectors, roots, cfg, dev, progress, retry_failed, prune,
                            engine=engine, settle=settle, within=within)
        if cfg.metadata.auto_tags:
            store.auto_tags()
        return summary

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Hold the index for writing while the block runs (a long-lived process: the web
        app), answering other processes for it, every call of theirs taken (an ``index``
        included, one at a time); this object's calls then use the held index.
        StoreLockedError when another process holds it."""
        from .held import holding

        with self._open(read_only=False) as store, \
                holding(store, self.folder, refuse={}) as held:
            self._held = held
            try:
                yield
            finally:
                self._held = None

    def warm(self) -> None:
        """Load what a search by image needs (the model, the isolated decoder) now,
        not at the first search: a server does this once, in the background."""
        from ..pipeline.stages import warm_outside

        warm_outside(self.config.with_overrides(decode__engine="cpu"))

    @contextmanager
    def _vectors(self, store: Store, cfg: Config) -> Iterator[Any]:
        """The vector index a query searches: the holder's live one, or the file's."""
        if self._held is not None:
            with self._held.vectors_for(store, cfg.query.memory_mb) as vectors:
                yield vectors
            return
        from ..search.vectors import VectorIndex

        yield VectorIndex(store, mmap=True, memory_mb=cfg.query.memory_mb)

    @routed
    def similar(self, image: str | os.PathLike[str], *, k: int | None = None,
                by: str = "embedding", device: str | None = None,
                filters: "Filters | None" = None, isolated: bool = False
                ) -> "SimilarResult":
        """Top-k look-alikes of ``image`` (in the index or not), best first, among the
        files matching ``filters`` (all files by default).

        ``device`` (default: the configured one) runs hash searches on a GPU and
        featurises a query image that is not in the index; ``isolated`` decodes such an
        image in a worker process (a file from a stranger).
        """
        from ..search.queries import similar

        cfg = self.config.with_overrides(device=device)
        k = k or cfg.query.k
        path = os.fspath(image)
        key = self._cache_key("similar", os.path.abspath(path), file_stamp(Path(path)), k, by,
                              filters)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        with self._open(read_only=True) as store, _query_memory(cfg), \
                self._vectors(store, cfg) as vectors:
            allowed = _allowed(store, filters)
            featurise = self._featuriser(store, cfg, by, isolated)
            result = similar(store, vectors, path, k=k, by=by, cfg=cfg, device=cfg.device,
                             allowed=allowed, featurise=featurise)
        self.cache.put(key, result)
        return result

    def _featuriser(self, store: Store, cfg: Config, by: str, isolated: bool = False):
        """How a query image outside the index gets its features: made here as the index
        made its rows; in the holder, sent by the client (which makes them itself)."""
        held = self._held.featuriser(store) if self._held is not None else None
        if held is not None:
            return held
        from ..pipeline.stages import featurise_outside

        return featurise_outside(cfg, store.model, store.embedding_count() > 0,
                                 by == "embedding", isolated, store.space)

    @routed
    def duplicates(self, *, by: str = "tiered", threshold: float | None = None,
                   device: str | None = None, keep: str | None = None,
                   tiers: str | None = None, filters: "Filters | None" = None
                   ) -> "DuplicatesResult":
        """Groups of duplicates, each around a keeper; every two files of a group are
        within the thresholds (complete linkage). ``by="tiered"``: exact, near (any
        orientation), edited copy and, when ``tiers`` names it, similar."""
        from ..search.queries import duplicates

        cfg = self.config.with_overrides(device=device)
        key = self._cache_key("duplicates", by, threshold, cfg.device, keep, tiers, filters)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        with self._open(read_only=True) as store, _query_memory(cfg), \
                self._vectors(store, cfg) as vectors:
            result = duplicates(store, vectors, by=by, threshold=threshold, cfg=cfg,
                                device=cfg.device, keep=keep, tiers=tiers,
                                allowed=_allowed(store, filters))
        self.cache.put(key, result)
        return result

    @routed
    def move_duplicates(self, move_to: str | os.PathLike[str], *, dry_run: bool = False,
                        by: str = "tiered", threshold: float | None = None,
                        tiers: str | None = None, keep: str | None = None,
                        act_on: str | None = None, device: str | None = None,
                        filters: "Filters | None" = None
                        ) -> tuple["DuplicatesResult", "MoveReport"]:
        """Move every non-keeper of the tiers in ``act_on`` (default ``query.act_on``) to
        ``move_to``, keeping its path relative to its indexed root, with a journal for
        :meth:`undo`; the index follows. A journal a killed run left open in ``move_to``
        is finished first. ``dry_run``: only the plan."""
        from ..actions.moves import move_duplicates
        from ..search.queries import check_tiers

        acting = check_tiers(act_on or self.config.query.act_on, "--act-on tier")
        with self._moving():
            return move_duplicates(
                lambda read_only: self._open(read_only=read_only),
                lambda: self.duplicates(by=by, threshold=threshold, device=device, keep=keep,
                                        tiers=tiers, filters=filters),
                os.fspath(move_to), acting, dry_run)

    @routed
    def undo(self, journal: str | os.PathLike[str]) -> "MoveReport":
        """Put back every file a move journal moved (never over a file that is there now);
        the index follows. The journal must name this index (:func:`journal_index`)."""
        from ..actions.journal import header_index
        from ..actions.moves import undo_moves

        header_index(Path(os.path.expanduser(os.fspath(journal))))   # readable, a journal
        if not (self.folder / DB_FILE).exists():
            raise ConfigError(f"no index at {self.folder}")
        with self._moving(), self._open(read_only=False) as store:
            return undo_moves(store, journal)

    def _moving(self) -> Any:
        """Inside a holder: the lock file moves take, so that a ``watch`` pass never walks
        a folder while files leave it ahead of the index following them."""
        return self._held.moving if self._held is not None else nullcontext()

    def evaluate(self, ground_truth: str | os.PathLike[str], *, by: str = "tiered",
                 threshold: float | None = None, similar_by: str = "embedding",
                 device: str | None = None, index: bool = True,
                 progress: ProgressFn | None = None,
                 root: str | os.PathLike[str] | None = None) -> "Evaluation":
        """Score ``duplicates`` (pairwise precision, recall, F1) and ``similar`` (N-S,
        mAP) against a ``file,group[,transform][,relation]`` CSV (relative paths under
        ``root``, by default the CSV's folder); its files are indexed first (only new or
        changed ones are decoded) unless ``index`` is false. A ``relation`` column
        (copy / lookalike) adds copies' precision and recall and the look-alikes
        grouped as duplicates."""
        from ..errors import QueryError
        from ..search.evaluate import MAP_DEPTH, evaluate, read_truth

        truth = read_truth(ground_truth, root)
        if index:
            self.index(truth.files, device=device, progress=progress,
                       embed=True if {"embedding", "tiered"} & {by, similar_by} else None)
        dup = self.duplicates(by=by, threshold=threshold, device=device)

        def ranked(query: str) -> list[str]:
            try:
                res = self.similar(query, k=MAP_DEPTH, by=similar_by, device=device)
            except QueryError:          # e.g. a file that failed to index: nothing found
                return []
            return [m.path for m in res.results]

        return evaluate(truth, ([f.path for f in g.files] for g in dup.groups), ranked,
                        {"by": by, "threshold": dup.threshold},
                        {"by": similar_by, "depth": MAP_DEPTH})


def _allowed(store: Store, filters: "Filters | None") -> "Any":
    """The ids a query may answer with (None: all of them)."""
    if filters is None or filters.empty():
        return None
    return store.ids_matching(filters)


@contextmanager
def _query_memory(cfg: Config) -> Iterator[None]:
    """Running out of memory in a query is a one-line error (exit 5), not a traceback."""
    import duckdb

    try:
        yield
    except (MemoryError, duckdb.OutOfMemoryException) as exc:
        raise QueryMemoryError(
            f"the query ran out of memory ({str(exc).splitlines()[0][:160] or 'MemoryError'}); "
            f"query.memory_mb is {cfg.query.memory_mb}: raise it in a config file (--config) "
            f"on a machine with more memory") from None
