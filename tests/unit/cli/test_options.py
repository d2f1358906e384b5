"""The shared option machinery: flag tables point at real config keys, options hold no defaults."""

import importlib
import inspect

import pytest

from flair_deploy.choices import Stitching
from flair_deploy.cli import benchmark, detect, evaluate, export, train
from flair_deploy.cli._options import given_flags, help_text, parse_key_values, split_list
from flair_deploy.config import model_of
from flair_deploy.errors import ConfigError

MODULES = (train, evaluate, export, detect, benchmark)


def _model(module):
    name, _, cls = module.CONFIG_MODEL.partition(":")
    return getattr(importlib.import_module(name), cls)


def _has_key(model, dotted):
    *sections, key = dotted.split(".")
    for section in sections:
        model = model_of(model.model_fields[section].annotation)
    return key in model.model_fields


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_flag_tables_name_real_config_keys(module):
    model = _model(module)
    for param, key in module.FLAGS.items():
        assert _has_key(model, key), f"{module.__name__}: --{param} sets unknown key {key}"
        assert param in inspect.signature(module.command).parameters


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_options_default_to_not_given_so_the_model_holds_the_defaults(module):
    params = inspect.signature(module.command).parameters
    for param in module.FLAGS:
        default = params[param].default
        assert default in (None, False), f"{module.__name__}: --{param} defaults to {default!r}"


def test_help_shows_the_config_models_defaults(capsys, monkeypatch):
    from flair_deploy.cli import main
    from flair_deploy.inference.config import DetectConfig

    monkeypatch.setenv("COLUMNS", "80")
    with pytest.raises(SystemExit):
        main(["detect", "-h"])
    out = " ".join(capsys.readouterr().out.split())
    assert f"[default: {DetectConfig.model_fields['chunk_mb'].default}]" in out
    assert f"[default: {Stitching.BLEND.value}]" in out


def test_given_flags_drop_options_not_given_and_name_the_option():
    flags, names = given_flags(
        {"tile": "tile_size", "stitching": "stitching", "json_": "json"}, tile=None, stitching=Stitching.CROP
    )
    assert flags == {"stitching": "crop"}
    assert names == {"tile_size": "--tile", "stitching": "--stitching", "json": "--json"}


def test_list_and_key_value_parsers():
    assert split_list(["a,b", "c"], "--model") == ["a", "b", "c"] and split_list(None, "--x") is None
    with pytest.raises(ConfigError, match="--heads is empty"):
        split_list(",", "--heads")
    assert parse_key_values(["threads=4", "mode=fast"], "--backend-option") == {"threads": 4, "mode": "fast"}
    with pytest.raises(ConfigError, match=r"--backend-option 'threads' is not of the form KEY=VALUE"):
        parse_key_values(["threads"], "--backend-option")


def test_examples_keep_their_lines():
    text = help_text("Do it.\n\nMore.", ["cmd a", "cmd b \\\n    --c"])
    assert text.endswith("Examples:\n\n\b\n  cmd a\n  cmd b \\\n      --c")


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_errors_name_each_option_as_the_user_types_it(module):
    import typer.main

    from flair_deploy.cli import app

    command = typer.main.get_command(app).commands[module.__name__.rsplit(".", 1)[-1]]
    options = {p.name: p.opts for p in command.params if p.param_type_name == "option"}
    _, names = given_flags(module.FLAGS)
    for param, key in module.FLAGS.items():
        if param in options:  # positional arguments are named by their metavar instead
            assert names[key] in options[param], f"{param}: {names[key]} is not one of {options[param]}"
