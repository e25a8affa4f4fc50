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

from .errors import ConfigError, QueryError

DB_ENV = "ALICE_GPU_DB"

HASH_NAMES = ("ahash", "dhash", "phash", "whash")
QUERY_KINDS = ("embedding",) + HASH_NAMES
# duplicates' tiers, strongest first: same bytes, hashes close, embedding close, look-alike
TIERS = ("exact", "near", "edited", "similar")
# what made a file (``ai_source``): the generators the metadata parsers recognise
SOURCES = ("a1111", "comfyui", "invokeai", "novelai", "fooocus", "swarmui", "stability-matrix",
           "tensorart", "civitai", "drawthings", "midjourney", "c2pa", "none")
DUPLICATE_KINDS = ("tiered",) + QUERY_KINDS


@dataclass(frozen=True)
class PerformanceConfig:
    """The seed's performance keys; each one changes real behaviour (see README)."""

    max_workers: int = 8                  # CPU decode processes (capped at the cores present)
    batch_size: int = 100                 # images per device batch
    enable_batch_operations: bool = True  # bulk Arrow inserts; False = one INSERT per row
    batch_insert_size: int = 1000         # rows per bulk INSERT statement
    transaction_size: int = 2000          # rows per committed transaction
    max_memory_cache_mb: int = 512        # decoded pixels in flight never exceed this
    cache_ttl_seconds: int = 3600         # query-result cache entries expire after this
    parallel_metadata_extraction: bool = True  # stat + content hashing on a thread pool
    parallel_hash_computation: bool = True     # CPU runs: hashes in the decode workers
    search_cache_size: int = 256          # query-result LRU entries (0 = no cache)

    def validate(self) -> None:
        _check(1 <= self.max_workers <= 256, "performance.max_workers must be in 1..256")
        _check(1 <= self.batch_size <= 4096, "performance.batch_size must be in 1..4096")
        _check(self.batch_insert_size >= 1, "performance.batch_insert_size must be >= 1")
        _check(self.transaction_size >= 1, "performance.transaction_size must be >= 1")
        _check(self.max_memory_cache_mb >= 16, "performance.max_memory_cache_mb must be >= 16")
        _check(self.cache_ttl_seconds >= 0, "performance.cache_ttl_seconds must be >= 0")
        _check(self.search_cache_size >= 0, "performance.search_cache_size must be >= 0")


@dataclass(frozen=True)
class DecodeConfig:
    """How files become fixed-size uint8 RGB images on CPU workers."""

    working_size: int = 256
    hash_size: int = 64            # working size of hash-only runs; JPEGs are drafted to >= 2x this
    # hash-only runs: the working image of a JPEG of 256..2048 px a side is estimated
    # from its 1/8-scale block means (DC coefficients) instead of a half-scale decode
    block_means: bool = True
    # jobs with fewer files than this are decoded in-process (no pool start-up);
    # measured by benchmarks/bench_throughput.py (see RESULTS.md)
    parallel_threshold: int = 32
    prefetch_batches: int = 2
    engine: str = "cpu"            # cpu (Pillow in the workers) | gpu (nvJPEG for JPEGs; CUDA only)
    timeout_seconds: float = 60.0  # per file, in the workers: a slower file is recorded as failed

    def validate(self) -> None:
        _check(32 <= self.working_size <= 1024, "decode.working_size must be in 32..1024")
        _check(self.hash_size in (32, 64, 128, 256), "decode.hash_size must be 32, 64, 128 or 256")
        _check(self.parallel_threshold >= 0, "decode.parallel_threshold must be >= 0")
        _check(self.prefetch_batches >= 1, "decode.prefetch_batches must be >= 1")
        _check(self.engine in ("cpu", "gpu"), "decode.engine must be cpu or gpu")
        _check(self.timeout_seconds > 0, "decode.timeout_seconds must be > 0")


@dataclass(frozen=True)
class FeatureConfig:
    """What is computed on the device."""

    embed: bool = True
    model: str = "efficientnet_lite0"
    # auto | fp32 | bf16 | fp16 (torch; auto: bf16 on CPUs with it, fp16 on CUDA) | int8 (onnxruntime)
    precision: str = "auto"
    runtime: str = "auto"          # auto | torch | onnxruntime (auto: torch on CUDA, else fastest)
    threads: int = 0               # a CPU runtime's threads (0: every core the process may use)

    def validate(self) -> None:
        _check(self.precision in ("auto", "fp32", "bf16", "fp16", "int8"),
               "features.precision must be auto, fp32, bf16, fp16 or int8")
        _check(self.runtime in ("auto", "torch", "onnxruntime"),
               "features.runtime must be auto, torch or onnxruntime")
        _check(self.threads >= 0, "features.threads must be >= 0")


def threshold_problem(by: str, threshold: float) -> str | None:
    """What is wrong with a duplicates threshold for ``--by`` (None when it is fine):
    whole bits in 0..64 for hashes and for the tiered answer's near tier, a cosine in -1..1
    for embeddings."""
    if by == "embedding":
        if not -1.0 <= threshold <= 1.0:
            return f"for embeddings it is a cosine in -1..1, not {threshold:g}"
    elif threshold != int(threshold) or not 0 <= threshold <= 64:
        return f"for hashes it is a whole number of bits in 0..64, not {threshold:g}"
    return None


def check_threshold(by: str, threshold: float | None) -> None:
    """Refuse a duplicates threshold outside its range (``QueryError``, exit 2)."""
    problem = None if threshold is None else threshold_problem(by, threshold)
    if problem:
        raise QueryError(f"--threshold {problem}")


@dataclass(frozen=True)
class QueryConfig:
    """Defaults for similar / duplicates."""

    k: int = 10
    # Hamming distance (bits of 64) for hash duplicates, cosine for embeddings
    hash_threshold: int = 10
    embedding_threshold: float = 0.85
    # tiered: a near copy has a pHash within near_threshold bits as it is, or within
    # turned_threshold bits in one of the 7 other orientations (7x the comparisons: a
    # looser bound would multiply chance matches at a million files; RESULTS.md)
    near_threshold: int = 8
    turned_threshold: int = 6
    # tiered: with verify, every candidate pair (pHash near, or embedding cosine >=
    # candidate_threshold among each file's candidates_per_image closest) is checked on
    # the two pictures: one capture is near (same pixels) or edited (a crop, a turn, a
    # retouch), two captures are similar. Without verify, an edited copy is a pair at
    # cosine >= edited_threshold (the answer before verification). A look-alike
    # (similar) has cosine >= similar_threshold (grouped only when the tier is asked for)
    verify: bool = True
    candidate_threshold: float = 0.6
    candidates_per_image: int = 5
    nearest_threshold: float = 0.45    # each file's nearest neighbour is checked down to this
    verify_workers: int = 0            # processes checking pairs (0: one per core)
    edited_threshold: float = 0.85
    similar_threshold: float = 0.7
    # the tiers duplicates groups by default, and the tiers --move-to acts on
    tiers: str = "exact,near,edited"
    act_on: str = "exact,near,edited"
    # similar / duplicates / a vector-index rebuild stay within this (not the decode budget)
    memory_mb: int = 2048
    # which file of a duplicate group is kept: rules in order, the first that differs decides
    keep: str = "pixels,size,oldest"

    def validate(self) -> None:
        _check(self.k >= 1, "query.k must be >= 1")
        _check(self.memory_mb >= 256, "query.memory_mb must be >= 256")
        _check(isinstance(self.keep, str) and bool(self.keep.strip()),
               "query.keep must be a comma-separated list of rules, e.g. pixels,size,oldest")
        _check(0 <= self.hash_threshold <= 64, "query.hash_threshold must be in 0..64")
        _check(-1.0 <= self.embedding_threshold <= 1.0, "query.embedding_threshold must be in -1..1")
        _check(-1.0 <= self.similar_threshold <= self.edited_threshold <= 1.0,
               "query.similar_threshold <= query.edited_threshold, both in -1..1")
        _check(0 <= self.near_threshold <= 64, "query.near_threshold must be in 0..64")
        _check(isinstance(self.verify, bool), "query.verify must be true or false")
        _check(-1.0 <= self.candidate_threshold <= 1.0, "query.candidate_threshold must be in -1..1")
        _check(self.candidates_per_image >= 1, "query.candidates_per_image must be >= 1")
        _check(-1.0 <= self.nearest_threshold <= self.candidate_threshold,
               "query.nearest_threshold must be in -1..query.candidate_threshold")
        _check(self.verify_workers >= 0, "query.verify_workers must be >= 0 (0: one per core)")
        _check(0 <= self.turned_threshold <= 64, "query.turned_threshold must be in 0..64")
        for key in ("tiers", "act_on"):
            names = [t.strip() for t in str(getattr(self, key)).split(",") if t.strip()]
            _check(bool(names) and all(t in TIERS for t in names),
                   f"query.{key} must be a comma-separated list of {', '.join(TIERS)}")


@dataclass(frozen=True)
class MetadataConfig:
    """What is kept of each file's own metadata (read in the decode workers)."""

    extract: bool = True          # EXIF, dates, cameras, AI generation data
    gps: bool = True              # false: GPS positions are never stored
    auto_tags: bool = False       # tag files source:<generator>, model:<name>, camera:<model>

    def validate(self) -> None:
        for name in ("extract", "gps", "auto_tags"):
            _check(isinstance(getattr(self, name), bool), f"metadata.{name} must be true or false")


@dataclass(frozen=True)
class Config:
    device: str = "auto"
    performance: PerformanceConfig = field(default_factory=PerformanceConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    query: QueryConfig = field(default_factory=QueryConfig)
    metadata: MetadataConfig = field(default_factory=MetadataConfig)

    def validate(self) -> "Config":
        _check(self.device in ("auto", "cpu", "cuda")
               or (self.device.startswith("cuda:") and self.device[5:].isdigit()),
               f"device must be auto, cpu or cuda (or cuda:N; got {self.device!r})")
        for f in fields(self):
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value):
                value.validate()
        return self

    def with_overrides(self, **dotted: Any) -> "Config":
        """Apply ``section__key=value`` overrides, ignoring ``None`` (flag not given)."""
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


PROFILES = ("default", "fast", "memory", "large")
PROFILE_PACKAGE = "alice_gpu.configs"   # configs/*.yaml, installed as package data


def profile_names() -> list[str]:
    """The profiles shipped with this installation (``configs/*.yaml``)."""
    from importlib import resources

    return sorted(p.name[:-5] for p in resources.files(PROFILE_PACKAGE).iterdir()
                  if p.name.endswith(".yaml"))


def profile_text(name: str) -> str:
    """The YAML of a named profile, read from the installed package data."""
    from importlib import resources

    source = resources.files(PROFILE_PACKAGE).joinpath(f"{name}.yaml")
    if "/" in name or not source.is_file():
        raise ConfigError(f"unknown profile {name!r} (choose from {', '.join(profile_names())})")
    return source.read_text()


def load_config(path: str | os.PathLike[str] | None = None, *, profile: str | None = None
                ) -> Config:
    """Load and validate a YAML config (missing keys take the built-in defaults).

    ``profile`` names a shipped profile (``configs/NAME.yaml``); ``None`` for both
    gives the built-in defaults, which are the ``default`` profile's (tested).
    """
    if path is not None and profile is not None:
        raise ConfigError("give --config or --profile, not both")
    if path is None and profile in (None, "default"):
        # configs/default.yaml documents these very values (a test keeps them equal):
        # no YAML to read or parse on the way to a query or an index run
        return Config().validate()
    if path is None:
        return parse_config(profile_text(profile), f"profile {profile!r}")
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    return parse_config(text, f"config {path}")


def config_from_dict(data: Mapping[str, Any]) -> Config:
    """A validated Config from the tree ``dataclasses.asdict`` makes of one (how a client
    sends its configuration to the process that holds an index)."""
    return _build(Config, data, "").validate()


def parse_config(text: str, where: str) -> Config:
    """A validated Config from YAML text; ``where`` names the source in messages."""
    import yaml

    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where} is not valid YAML: {str(exc).splitlines()[0]}") from None
    return _build(Config, data, "").validate()


def default_db_dir() -> Path:
    """The per-user index folder: $ALICE_GPU_DB, else $XDG_DATA_HOME/alice-gpu."""
    env = os.environ.get(DB_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return Path(base) / "alice-gpu" / "default"
