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


class StoreError(AliceError, RuntimeError):
    """The store cannot be opened or used."""


class StoreLockedError(StoreError):
    """Another process holds the store."""
