from pathlib import Path
from typing import Annotated

import pytest
from pydantic import Field

from flair_deploy.config import KEYS_DOC, FrozenConfig, apply_overrides, load_config, model_of
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


# ------------------------------------------------------------------ precedence and messages


def test_precedence_flags_over_set_over_yaml_over_defaults(tmp_path: Path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("epochs: 5\ninner:\n  lr: 0.5\n  name: yaml\n")
    cfg = load_config(Outer, cfg_file, ["inner.lr=0.01", "epochs=6"], {"epochs": 7, "inner.name": None})
    # epochs: flag beats --set beats YAML; inner.name: a None flag is "not given", so YAML stays.
    assert (cfg.epochs, cfg.inner.lr, cfg.inner.name) == (7, 0.01, "yaml")


def test_unknown_key_suggests_the_closest_and_points_to_the_docs(tmp_path: Path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("inner:\n  lrr: 0.5\n")
    with pytest.raises(ConfigError) as exc:
        load_config(Outer, cfg_file)
    assert "did you mean 'lr'?" in str(exc.value) and KEYS_DOC in str(exc.value)
    with pytest.raises(ConfigError, match=r"--set epoch: unknown key \(did you mean 'epochs'\?\)"):
        load_config(Outer, None, ["epoch=3"])


class Banded(FrozenConfig):
    bands: tuple[Annotated[int, Field(ge=1)], ...] = (1, 2, 3)
    out: Path


def test_errors_name_the_option_and_the_value_not_a_pydantic_path():
    with pytest.raises(ConfigError) as exc:
        load_config(Banded, None, (), {"bands": (0, 2), "out": "o"}, flag_names={"bands": "--bands"})
    msg = str(exc.value)
    assert msg == "--bands item 1: input should be greater than or equal to 1 (got 0)"
    assert "bands.0" not in msg and "pydantic.dev" not in msg and "\n" not in msg


def test_a_missing_value_says_which_option_gives_it():
    with pytest.raises(
        ConfigError, match=r"out is required but not given; give --out \(or out: in --config\)"
    ):
        load_config(Banded, None, (), {}, flag_names={"out": "--out"})


def test_yaml_paths_are_relative_to_the_yaml_folder(tmp_path: Path, monkeypatch):
    sub = tmp_path / "conf"
    sub.mkdir()
    cfg_file = sub / "c.yaml"
    cfg_file.write_text("out: maps/m.tif\n")
    monkeypatch.chdir(tmp_path)
    assert load_config(Banded, cfg_file, path_keys=("out",)).out == (sub / "maps/m.tif").resolve()
    assert load_config(Banded, cfg_file, (), {"out": "x.tif"}, path_keys=("out",)).out == Path("x.tif")


def test_override_values_are_yaml_and_bad_ones_name_the_form():
    assert apply_overrides({"a": {"b": 1}}, ["a.c=[1, 2]", "d=true"]) == {
        "a": {"b": 1, "c": [1, 2]},
        "d": True,
    }
    with pytest.raises(ConfigError, match=r"--set 'x' is not of the form section.key=value"):
        apply_overrides({}, ["x"])


def _documented_keys(model, prefix=""):
    for name, field in model.model_fields.items():
        sub = model_of(field.annotation)
        if sub is not None and name not in ("gates", "classes"):
            yield from _documented_keys(sub, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}"


@pytest.mark.parametrize(
    "model",
    [
        "flair_deploy.training.config:TrainConfig",
        "flair_deploy.training.config:EvaluateConfig",
        "flair_deploy.exports.config:ExportConfig",
        "flair_deploy.inference.config:DetectConfig",
        "flair_deploy.benchmarking.plan:BenchmarkConfig",
    ],
)
def test_every_config_key_is_documented_where_errors_point(model):
    import importlib

    module, _, name = model.partition(":")
    cls = importlib.import_module(module)
    readme = (Path(__file__).resolve().parents[2] / KEYS_DOC).read_text(encoding="utf-8")
    for key in _documented_keys(getattr(cls, name)):
        parts = key.split(".")
        suffixes = {".".join(parts[i:]) for i in range(len(parts))}  # data.normalization.kind, ..., kind
        assert any(f"`{s}`" in readme for s in suffixes), f"{name}: {key} is not in {KEYS_DOC}"


def test_every_loader_resolves_yaml_paths_against_the_file(tmp_path: Path):
    from flair_deploy.benchmarking.plan import load_benchmark_config
    from flair_deploy.exports.config import load_export_config
    from flair_deploy.inference.config import load_detect_config
    from flair_deploy.training.config import load_evaluate_config

    f = tmp_path / "c.yaml"
    f.write_text("checkpoint: m.ckpt\nout_dir: o\ncsv: t.csv\n")
    assert load_evaluate_config(f).config.checkpoint == tmp_path / "m.ckpt"
    f.write_text("checkpoint: m.ckpt\nout_dir: o\nint8: true\ncalibration: [a.csv]\n")
    assert load_export_config(f).config.calibration == (tmp_path / "a.csv",)
    f.write_text("inputs: [a.tif]\noutput: m.tif\n")
    assert load_detect_config(f).config.inputs == (tmp_path / "a.tif",)
    f.write_text("models: [m.onnx]\n")
    assert load_benchmark_config(f).config.models == (tmp_path / "m.onnx",)


def test_a_bad_value_inside_a_section_given_whole_names_the_section_and_the_key():
    with pytest.raises(ConfigError, match=r"^--set inner \(inner\.lr\): input should be a valid number"):
        load_config(Outer, None, ["inner={lr: fast}"])
