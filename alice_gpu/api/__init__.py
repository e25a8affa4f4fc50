"""The Python API: everything the CLI does, for notebooks and media organisers.

    import alice_gpu
    idx = alice_gpu.open_index("~/my-index")
    idx.index(["~/Pictures"])
    idx.similar("cat.jpg", k=5)

:mod:`.index` (:class:`AliceIndex`), :mod:`.routing` (a call answered by the
process that holds the index), :mod:`.held` (that process's side).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..config import Config, load_config
from ..errors import ConfigError
from ..store import DB_FILE
from .index import AliceIndex


def journal_index(journal: str | os.PathLike[str]) -> Path:
    """The index a move journal was written for (``undo`` acts on it); an error when the
    journal is unreadable or its index is gone."""
    from ..actions.journal import header_index

    path = Path(os.path.expanduser(os.fspath(journal)))
    folder = Path(header_index(path))
    if not (folder / DB_FILE).exists():
        raise ConfigError(f"{path} was written for the index at {folder}, which is gone")
    return folder


def open_index(db: str | os.PathLike[str] | None = None, *, config: Config | str | None = None
               ) -> AliceIndex:
    """Open (or prepare to create) the index in folder ``db`` (default: per-user folder)."""
    if config is None or isinstance(config, (str, os.PathLike)):
        config = load_config(config)
    return AliceIndex(db, config)


__all__ = ["AliceIndex", "journal_index", "open_index"]
