"""The CLI's conventions, for every command: -h, --version, readable help, one-line usage errors, exit 1."""

import re
import subprocess
import sys

import pytest
import yaml

from flair_deploy import __version__
from flair_deploy.cli import main

COMMANDS = ("train", "evaluate", "export", "inspect", "detect", "plan", "benchmark", "demo")


def _run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    cap = capsys.readouterr()
    return exc.value.code, cap.out, cap.err


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err and "Usage:" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_help_lists_every_command_with_a_whole_summary(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    code, out, _ = _run(["--help"], capsys)
    assert code == 0
    listed = out.split("Commands:")[1].splitlines()
    for cmd in COMMANDS:
        line = next(line for line in listed if line.split()[:1] == [cmd])
        assert not line.endswith("..."), line  # Click truncates summaries that do not fit


def test_no_arguments_shows_the_help(capsys):
    code, out, _ = _run([], capsys)
    assert code == 0 and "Usage: flair-deploy" in out


def test_python_dash_m_runs_the_cli():
    res = subprocess.run(
        [sys.executable, "-m", "flair_deploy", "--version"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0 and res.stdout.strip() == f"flair-deploy {__version__}"


def test_unknown_command_is_one_line_and_exit_1(capsys):
    code, _, err = _run(["no-such-command"], capsys)
    assert code == 1 and "no-such-command" in _one_error_line(err)


@pytest.mark.parametrize("cmd", ["", *COMMANDS])
def test_short_help_works_and_fits_80_columns(cmd, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    code, out, _ = _run([cmd, "-h"] if cmd else ["-h"], capsys)
    assert code == 0 and out.startswith("Usage: flair-deploy")
    assert max(len(line) for line in out.splitlines()) <= 80
    # User-facing metavars only: no Typer type names nor {argument} placeholders.
    assert not re.search(r"<(list\[|bool>|str>|int>|float>|path>)|\{[a-z_]+\}", out), out


@pytest.mark.parametrize("cmd", COMMANDS)
def test_version_on_every_command(cmd, capsys):
    code, out, _ = _run([cmd, "--version"], capsys)
    assert code == 0 and out.strip() == f"flair-deploy {__version__}"


@pytest.mark.parametrize("cmd", COMMANDS)
def test_unknown_option_is_one_line_and_exit_1_not_a_usage_box(cmd, capsys):
    code, _, err = _run([cmd, "--no-such-option"], capsys)
    assert code == 1
    assert "--no-such-option" in _one_error_line(err)


@pytest.mark.parametrize(
    ("argv", "option", "value", "allowed"),
    [
        (["detect", "a.tif", "--stitching", "average"], "--stitching", "average", "blend"),
        (["detect", "a.tif", "--backend", "openvino"], "--backend", "openvino", "onnxruntime"),
        (["detect", "a.tif", "--precision", "fp8"], "--precision", "fp8", "int8"),
        (["detect", "a.tif", "--compress", "lzw"], "--compress", "lzw", "zstd"),
        (["detect", "a.tif", "--tile", "big"], "--tile", "big", "integer"),
        (["export", "m.ckpt", "--exporter", "tf"], "--exporter", "tf", "dynamo"),
        (["export", "m.ckpt", "--calibration-method", "magic"], "--calibration-method", "magic", "entropy"),
        (["export", "m.ckpt", "--int8-scheme", "u8u8"], "--int8-scheme", "u8u8", "s8s8"),
        (["export", "m.ckpt", "-o", "o", "--heads", "logits,probs"], "--heads", "probs", "probabilities"),
        (["benchmark", "-m", "m.onnx", "--backends", "openvino"], "--backends", "openvino", "tensorrt"),
        (["benchmark", "-m", "m.onnx", "--precisions", "fp8"], "--precisions", "fp8", "bf16"),
        (["evaluate", "m.ckpt", "--batch-size", "many"], "--batch-size", "many", "integer"),
        (
            ["train", "--train-csv", "a.csv", "--val-csv", "b.csv", "--set", "trainer.precision=fp8"],
            "--set trainer.precision",
            "fp8",
            "32-true",
        ),
    ],
)
def test_a_bad_choice_names_the_option_the_value_and_what_is_allowed(argv, option, value, allowed, capsys):
    code, _, err = _run(argv, capsys)
    assert code == 1
    line = _one_error_line(err)
    for text in (option, repr(value), allowed):
        assert text in line, line
    assert "pydantic.dev" not in line and ".0" not in line


@pytest.mark.parametrize(
    ("cmd", "data", "typo", "known"),
    [
        (
            "train",
            {"data": {"train_csv": "a.csv", "val_csv": "b.csv"}, "optim": {"lrr": 0.1}},
            "optim.lrr",
            "lr",
        ),
        (
            "evaluate",
            {"checkpoint": "m.ckpt", "csv": "t.csv", "out_dir": "o", "batchsize": 4},
            "batchsize",
            "batch_size",
        ),
        ("export", {"checkpoint": "m.ckpt", "out_dir": "o", "exporterr": "dynamo"}, "exporterr", "exporter"),
        ("detect", {"inputs": ["a.tif"], "output": "m.tif", "tile_sise": 64}, "tile_sise", "tile_size"),
        ("benchmark", {"models": ["m.onnx"], "batchs": [1]}, "batchs", "batches"),
    ],
)
def test_an_unknown_yaml_key_suggests_the_closest_known_one(cmd, data, typo, known, tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    code, _, err = _run([cmd, "--config", str(path)], capsys)
    assert code == 1
    line = _one_error_line(err)
    assert f"{typo}: unknown key (did you mean {known!r}?)" in line and "configs/README.md" in line, line


def test_a_missing_required_value_names_the_option(capsys):
    code, _, err = _run(["export", "m.ckpt"], capsys)
    assert code == 1 and "give --out" in _one_error_line(err)
