"""The Python API: everything the CLI does, for notebooks and media organisers.

    import alice_gpu
    idx = alice_gpu.open_index("~/my-index")
    idx.index(["~/Pictures"])
    idx.similar("cat.jpg", k=5)
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable

from .config import Config, default_db_dir, load_config
from .device import select_device
from .embedding import model_cfg
from .pipeline import IndexSummary, ProgressFn, run_index
from .search import DuplicatesResult, SimilarResult, duplicates, similar
from .store import MANIFEST_FILE, Store
from .vectors import VectorIndex

log = logging.getLogger(__name__)


class AliceIndex:
    """One index folder. Each call opens the store for just as long as it needs it."""

    def __init__(self, db: str | os.PathLike[str] | None = None, config: Config | None = None):
        self.folder = Path(db).expanduser() if db else default_db_dir()
        self.config = config or load_config()

    def _model(self) -> str:
        """The model the index was built with (manifest), else the configured one."""
        try:
            return json.loads((self.folder / MANIFEST_FILE).read_text())["model"]
        except (OSError, ValueError, KeyError):
            return self.config.features.model

    def _open(self, read_only: bool) -> Store:
        name = self._model() if read_only else self.config.features.model
        return Store(self.folder, model=name, dim=model_cfg(name).dim, read_only=read_only)

    def index(self, paths: Iterable[str | os.PathLike[str]], *, device: str | None = None,
              embed: bool | None = None, batch_size: int | None = None,
              workers: int | None = None, retry_failed: bool = False,
              progress: ProgressFn | None = None) -> IndexSummary:
        """Add new and changed files under ``paths``; drop vanished ones.

        Unchanged files that failed before are skipped unless ``retry_failed``.
        """
        cfg = self.config.with_overrides(device=device, features__embed=embed,
                                         features__batch_size=batch_size,
                                         decode__max_workers=workers)
        roots = [os.path.expanduser(os.fspath(p)) for p in paths]
        dev = select_device(cfg.device)
        with self._open(read_only=False) as store:
            return run_index(store, VectorIndex(store), roots, cfg, dev, progress, retry_failed)

    def similar(self, image: str | os.PathLike[str], *, k: int | None = None,
                by: str = "embedding", device: str | None = None) -> SimilarResult:
        """Top-k look-alikes of ``image`` (in the index or not), best first."""
        cfg = self.config.with_overrides(device=device)
        with self._open(read_only=True) as store:
            return similar(store, VectorIndex(store), os.fspath(image),
                           k=k or cfg.query.k, by=by, cfg=cfg, device=select_device(cfg.device))

    def duplicates(self, *, by: str = "phash", threshold: float | None = None) -> DuplicatesResult:
        """Groups of near-duplicates (connected components within ``threshold``)."""
        with self._open(read_only=True) as store:
            return duplicates(store, VectorIndex(store), by=by, threshold=threshold,
                              cfg=self.config)

    def stats(self) -> dict[str, Any]:
        with self._open(read_only=True) as store:
            out = store.stats()
        out["db"] = str(self.folder)
        return out


def open_index(db: str | os.PathLike[str] | None = None, *, config: Config | str | None = None
               ) -> AliceIndex:
    """Open (or prepare to create) the index in folder ``db`` (default: per-user folder)."""
    if config is None or isinstance(config, (str, os.PathLike)):
        config = load_config(config)
    return AliceIndex(db, config)


__all__ = ["AliceIndex", "open_index"]
