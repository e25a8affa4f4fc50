from __future__ import annotations

import pytest
import yaml

from alice_gpu.config import (PROFILES, Config, ConfigError, load_config, profile_names,
                              profile_text)

SEED_KEYS = {"max_workers", "batch_size", "enable_batch_operations", "batch_insert_size",
             "transaction_size", "max_memory_cache_mb", "cache_ttl_seconds",
             "parallel_metadata_extraction", "parallel_hash_computation", "search_cache_size"}


def test_default_profile_matches_builtin_defaults():
    # configs/default.yaml documents every key; its values must be the built-in ones,
    # which load_config() returns without reading it
    from alice_gpu.config import parse_config

    assert parse_config(profile_text("default"), "default") == Config().validate() == load_config()


def test_default_yaml_carries_every_seed_key():
    data = yaml.safe_load(profile_text("default"))
    assert set(data["performance"]) == SEED_KEYS


def test_profiles_are_package_data():
    """Read through importlib.resources, as from a wheel: the shipped set, nothing else."""
    assert profile_names() == sorted(PROFILES)


@pytest.mark.parametrize("name, workers, batch", [
    ("default", 8, 100), ("fast", 16, 200), ("memory", 4, 50), ("large", 12, 500)])
def test_profiles_carry_the_seed_numbers(name, workers, batch):
    assert name in PROFILES
    cfg = load_config(profile=name)
    assert (cfg.performance.max_workers, cfg.performance.batch_size) == (workers, batch)


def test_unknown_profile_and_both_sources_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="unknown profile 'turbo'"):
        load_config(profile="turbo")
    with pytest.raises(ConfigError, match="not both"):
        load_config(tmp_path / "x.yaml", profile="fast")


@pytest.mark.parametrize("text, message", [
    ("performance:\n  max_wrokers: 4\n", "unknown config key 'performance.max_wrokers'"),
    ("performance:\n  batch_size: many\n", "performance.batch_size' must be int"),
    ("performance:\n  batch_size: 0\n", "performance.batch_size must be in 1..4096"),
    ("performance:\n  enable_batch_operations: 1\n", "enable_batch_operations' must be bool"),
    ("performance:\n  max_memory_cache_mb: 1\n", "max_memory_cache_mb must be >= 16"),
    ("features:\n  precision: fp8\n", "features.precision must be"),
    ("device: tpu\n", "device must be auto, cpu or cuda"),
    ("device: cuda:x\n", "device must be auto, cpu or cuda"),
    ("- a\n- b\n", "config must be a mapping"),
    ("decode: [\n", "not valid YAML"),
    ("turbo: true\n", "unknown config key 'turbo'"),
])
def test_bad_config_is_refused_with_one_line(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_overrides_apply_and_validate(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"performance": {"batch_size": 7}}))
    cfg = load_config(path)
    assert cfg.performance.batch_size == 7
    cfg2 = cfg.with_overrides(performance__batch_size=None, performance__max_workers=3,
                              device="cpu")
    assert (cfg2.performance.batch_size, cfg2.performance.max_workers, cfg2.device) == (7, 3, "cpu")
    with pytest.raises(ConfigError):
        cfg.with_overrides(performance__batch_size=-1)
