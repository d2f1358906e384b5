from pathlib import Path

import pytest

from flair_deploy.config import FrozenConfig, apply_overrides, load_config
from flair_deploy.errors import ConfigError


class Inner(FrozenConfig):
    lr: float = 0.1
    name: str = "x"


class Outer(FrozenConfig):
    inner: Inner = Inner()
    epochs: int = 3


def test_precedence_cli_over_yaml_over_defaults(tmp_path: Path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("epochs: 5\ninner:\n  lr: 0.5\n")
    cfg = load_config(Outer, cfg_file, ["inner.lr=0.01"])
    assert cfg.epochs == 5 and cfg.inner.lr == 0.01 and cfg.inner.name == "x"


def test_unknown_key_is_an_error_naming_it(tmp_path: Path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("inner:\n  lrr: 0.5\n")
    with pytest.raises(ConfigError, match=r"inner\.lrr: unknown key"):
        load_config(Outer, cfg_file)


def test_configs_are_frozen():
    cfg = load_config(Outer)
    with pytest.raises(Exception, match="frozen"):
        cfg.epochs = 4  # type: ignore[misc]


def test_bad_yaml_and_bad_override(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Outer, bad)
    with pytest.raises(ConfigError, match=r"section\.key=value"):
        apply_overrides({}, ["novalue"])
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(Outer, tmp_path / "missing.yaml")


def test_wrong_type_is_reported_with_field():
    with pytest.raises(ConfigError, match="epochs"):
        load_config(Outer, None, ["epochs=many"])
