"""Errors users see, in one torch-free module so the CLI can catch them cheaply.

Each maps to an exit code in the CLI; the message is one line saying what to do.
"""

from __future__ import annotations


class AliceError(Exception):
    """Base of every error alice-gpu reports to a user."""


class ConfigError(AliceError, ValueError):
    """A configuration that cannot be used."""


class DeviceError(AliceError, RuntimeError):
    """The requested device cannot be used (e.g. ``cuda`` on a machine without one)."""


class ModelError(AliceError, RuntimeError):
    """A model that cannot be created or loaded."""


class QueryError(AliceError, ValueError):
    """A query that cannot be answered (unreadable image, unknown --by...)."""


class QueryMemoryError(QueryError):
    """A query that would need more memory than ``query.memory_mb`` allows: exit 5."""


class StoreError(AliceError, RuntimeError):
    """The store cannot be opened or used."""


class StoreLockedError(StoreError):
    """Another process holds the store."""


class StorageError(StoreError):
    """Writing the index failed (disk full, I/O error) after a safe rollback: exit 4."""


def command_line(*args: object) -> str:
    """A command a user can paste as printed: ``alice-gpu`` and each argument shell-quoted
    (file names that are not UTF-8 shown escaped)."""
    import shlex

    words = ["alice-gpu", *(str(a) for a in args)]
    return " ".join(shlex.quote(w.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))
                    for w in words)


def is_storage_failure(exc: BaseException) -> bool:
    """Disk full or an I/O error: retrying row by row cannot help, and no file is to blame."""
    import errno

    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS):
        return True
    text = str(exc).lower()
    return any(s in text for s in ("no space left", "disk quota", "input/output error",
                                   "read-only file system", "could not write", "failed to write"))


def reason(exc: BaseException, prefix: str = "") -> str:
    """What a person reads about a file that failed: the error's kind and first line, short."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    kind = type(exc).__name__
    return f"{prefix}{kind}: {text}"[:300] if text else f"{prefix}{kind}"[:300]
