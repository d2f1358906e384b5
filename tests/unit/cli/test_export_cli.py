"""`flair-deploy export` / `inspect` on the command line: help that teaches, one-line errors."""

from __future__ import annotations

import os
import sys

import pytest
import torch

from flair_deploy.artifacts import save_checkpoint
from flair_deploy.cli import main


def run(capsys, *args):
    with pytest.raises(SystemExit) as info:
        main(list(args))
    out = capsys.readouterr()
    return info.value.code, out.out, out.err


def one_line_error(err: str) -> str:
    # Progress lines (✓ step) may precede the error on stderr; the error itself is one line.
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    assert err.rstrip().endswith(errors[0]), "nothing may follow the error line"
    return errors[0]


def test_help_teaches(capsys):
    code, out, _ = run(capsys, "export", "--help")
    assert code == 0
    for text in (
        "--calibration",
        "--preset",
        "--heads",
        "--no-verify",
        "Examples",
        "parity",
        "--for",
        "deepness",
    ):
        assert text in out


@pytest.fixture
def igns_weights(tmp_path, tiny_description):
    from flair_deploy.models import build_model

    sd = {
        k.removeprefix("net."): v
        for k, v in build_model(tiny_description).state_dict().items()
        if k.startswith("net.")
    }
    path = tmp_path / "ign_weights.pth"
    torch.save(sd, path)
    return path


@pytest.fixture
def export_data(tmp_path, tiny_description):
    """An untrained, self-describing checkpoint: these tests all stop before exporting."""
    from flair_deploy.models import build_model

    path = save_checkpoint(tmp_path / "tiny.ckpt", build_model(tiny_description), tiny_description)
    return {"checkpoint": path}


def test_unknown_layout(capsys, tmp_path):
    path = tmp_path / "odd.pth"
    torch.save({"foo.weight": torch.zeros(1)}, path)
    code, _, err = run(capsys, "export", str(path), "--out", str(tmp_path / "o"))
    assert code == 1
    assert "unknown checkpoint key layout" in one_line_error(err)


def test_ign_weights_without_description(capsys, igns_weights, tmp_path):
    code, _, err = run(capsys, "export", str(igns_weights), "--out", str(tmp_path / "o"))
    assert code == 1 and "--preset" in one_line_error(err)


def test_class_count_mismatch(capsys, igns_weights, tmp_path):
    code, _, err = run(
        capsys,
        "export",
        str(igns_weights),
        "--out",
        str(tmp_path / "o"),
        "--classes-preset",
        "flair13",
        "--encoder",
        "resnet18",
    )
    assert code == 1
    assert "class-count mismatch" in one_line_error(err)
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_out(capsys, export_data, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code, _, err = run(capsys, "export", str(export_data["checkpoint"]), "--out", str(locked))
    finally:
        locked.chmod(0o700)
    assert code == 1 and "not writable" in one_line_error(err)


def test_unwritable_out_when_out_is_a_file(capsys, export_data, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run(capsys, "export", str(export_data["checkpoint"]), "--out", str(blocker / "sub"))
    assert code == 1 and "cannot create output folder" in one_line_error(err)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--int8"], "int8 needs calibration data"),
        (["--heads", "classes"], "lack 'logits'"),
        (["--calibration-method", "magic"], "'--calibration-method': 'magic' is not one of"),
        (["--preset", "flair-inc-rgb-12cl-resnet34-unet", "--bands", "R,G,B"], "not both"),
        (["--for", "geodeep"], "GeoDeep feeds 3 bands only"),
        (["--for", "qfield"], "qfield"),
    ],
)
def test_bad_options_are_one_line(capsys, export_data, tmp_path, extra, message):
    code, _, err = run(capsys, "export", str(export_data["checkpoint"]), "--out", str(tmp_path / "o"), *extra)
    assert code == 1 and message in one_line_error(err)


def test_tensorrt_without_tensorrt_or_gpu(capsys, export_data, tmp_path, monkeypatch):
    import importlib

    real = importlib.import_module

    def no_trt(name, *a, **k):
        if name == "tensorrt":
            raise ImportError("No module named 'tensorrt'")
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", no_trt)
    out = tmp_path / "o"
    code, _, err = run(capsys, "export", str(export_data["checkpoint"]), "--out", str(out), "--tensorrt")
    assert code == 1
    assert "pip install 'flair-deploy[tensorrt]'" in one_line_error(err)
    assert not list(out.glob("*.onnx")), "no artifact before the precondition check"


def test_inspect_missing_file(capsys, tmp_path):
    code, _, err = run(capsys, "inspect", str(tmp_path / "nope.onnx"))
    assert code == 1 and "does not exist" in one_line_error(err)
