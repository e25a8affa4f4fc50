"""Configuration: a validated tree of frozen dataclasses loaded from YAML.

Every stage reads its own section; nothing takes thirty keyword arguments.
Unknown keys and bad values raise :class:`ConfigError` with a one-line message,
which the CLI turns into exit code 2.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

import yaml

from .errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DB_ENV = "ALICE_GPU_DB"

HASH_NAMES = ("ahash", "dhash", "phash", "whash")
QUERY_KINDS = ("embedding",) + HASH_NAMES


@dataclass(frozen=True)
class DecodeConfig:
    """How files become fixed-size uint8 RGB images on CPU workers."""

    working_size: int = 256
    max_workers: int = 8
    # jobs with fewer files than this are decoded in-process (no pool start-up)
    parallel_threshold: int = 64
    prefetch_batches: int = 2

    def validate(self) -> None:
        _check(32 <= self.working_size <= 1024, "decode.working_size must be in 32..1024")
        _check(self.max_workers >= 1, "decode.max_workers must be >= 1")
        _check(self.parallel_threshold >= 0, "decode.parallel_threshold must be >= 0")
        _check(self.prefetch_batches >= 1, "decode.prefetch_batches must be >= 1")


@dataclass(frozen=True)
class FeatureConfig:
    """What is computed on the device."""

    batch_size: int = 100
    embed: bool = True
    model: str = "efficientnet_lite0"

    def validate(self) -> None:
        _check(1 <= self.batch_size <= 4096, "features.batch_size must be in 1..4096")


@dataclass(frozen=True)
class StoreConfig:
    """How results reach DuckDB."""

    transaction_size: int = 1000

    def validate(self) -> None:
        _check(self.transaction_size >= 1, "store.transaction_size must be >= 1")


@dataclass(frozen=True)
class QueryConfig:
    """Defaults for similar / duplicates."""

    k: int = 10
    # Hamming distance (bits of 64) for hash duplicates, cosine for embeddings
    hash_threshold: int = 10
    embedding_threshold: float = 0.85

    def validate(self) -> None:
        _check(self.k >= 1, "query.k must be >= 1")
        _check(0 <= self.hash_threshold <= 64, "query.hash_threshold must be in 0..64")
        _check(-1.0 <= self.embedding_threshold <= 1.0, "query.embedding_threshold must be in -1..1")


@dataclass(frozen=True)
class Config:
    device: str = "auto"
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    query: QueryConfig = field(default_factory=QueryConfig)

    def validate(self) -> "Config":
        _check(self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
               f"device must be auto, cpu or cuda (got {self.device!r})")
        for f in fields(self):
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value):
                value.validate()
        return self

    def with_overrides(self, **dotted: Any) -> "Config":
        """Apply ``section.key=value`` overrides, ignoring ``None`` (flag not given)."""
        cfg = self
        for key, value in dotted.items():
            if value is None:
                continue
            section, _, name = key.partition("__")
            if name:
                sub = getattr(cfg, section)
                cfg = replace(cfg, **{section: replace(sub, **{name: value})})
            else:
                cfg = replace(cfg, **{section: value})
        return cfg.validate()


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _build(cls: type, data: Mapping[str, Any], where: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in known:
            raise ConfigError(f"unknown config key {path!r}")
        typ = hints[key]
        if dataclasses.is_dataclass(typ):
            kwargs[key] = _build(typ, value or {}, path)
            continue
        if typ is bool:
            ok = isinstance(value, bool)
        elif typ is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif typ is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            value = float(value) if ok else value
        else:
            ok = isinstance(value, str)
        if not ok:
            raise ConfigError(f"config key {path!r} must be {typ.__name__}, got {value!r}")
        kwargs[key] = value
    return cls(**kwargs)


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Load and validate a YAML config; ``None`` gives ``configs/default.yaml`` or built-ins."""
    if path is None:
        path = CONFIG_DIR / "default.yaml"
        if not Path(path).exists():
            return Config().validate()
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    return _build(Config, data, "").validate()


def default_db_dir() -> Path:
    """The per-user index folder: $ALICE_GPU_DB, else $XDG_DATA_HOME/alice-gpu."""
    env = os.environ.get(DB_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return Path(base) / "alice-gpu" / "default"
