from __future__ import annotations

import pytest
import yaml

from alice_gpu.config import CONFIG_DIR, Config, ConfigError, load_config


def test_default_yaml_matches_builtin_defaults():
    # an installed (non-editable) package falls back to the built-ins: they must agree
    assert load_config(CONFIG_DIR / "default.yaml") == Config().validate()


@pytest.mark.parametrize("text, message", [
    ("decode:\n  max_wrokers: 4\n", "unknown config key 'decode.max_wrokers'"),
    ("features:\n  batch_size: many\n", "features.batch_size' must be int"),
    ("features:\n  batch_size: 0\n", "features.batch_size must be in 1..4096"),
    ("features:\n  embed: 1\n", "features.embed' must be bool"),
    ("device: tpu\n", "device must be auto, cpu or cuda"),
    ("- a\n- b\n", "config must be a mapping"),
    ("decode: [\n", "not valid YAML"),
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
    path.write_text(yaml.safe_dump({"features": {"batch_size": 7}}))
    cfg = load_config(path)
    assert cfg.features.batch_size == 7
    cfg2 = cfg.with_overrides(features__batch_size=None, decode__max_workers=3, device="cpu")
    assert (cfg2.features.batch_size, cfg2.decode.max_workers, cfg2.device) == (7, 3, "cpu")
    with pytest.raises(ConfigError):
        cfg.with_overrides(features__batch_size=-1)
