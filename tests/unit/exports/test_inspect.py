"""`read_description` / `flair-deploy inspect` give back everything detect needs, from the file alone."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from flair_deploy.description import ModelDescription, Precision
from flair_deploy.errors import ModelDescriptionError
from flair_deploy.exports.inspect import read_description


def test_inspect_json_in_a_fresh_process_round_trips(exported):
    path = exported.onnx[Precision.INT8]
    out = subprocess.run(
        [sys.executable, "-m", "flair_deploy", "inspect", str(path), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    desc = ModelDescription.from_dict(json.loads(out.stdout))
    assert desc == read_description(path)
    # What detect needs: band order, normalisation, classes and their codes/colours/active flags,
    # tile, overlap, gsd, nodata, metadata spec (none here), precision.
    assert desc.bands == ("R", "G", "B", "NIR", "E")
    assert desc.tile_size == 64 and desc.overlap == 16 and desc.gsd == 0.2 and desc.nodata == 255
    assert sum(desc.active_mask) == 15 and desc.classes[0].color == "#db0e9a"
    assert desc.provenance.precision is Precision.INT8


def test_inspect_rich_output_and_checkpoint(export_data, capsys, monkeypatch):
    # In-process (the fresh-process round trip is the JSON test above): same command, no second
    # interpreter importing torch.
    from flair_deploy.cli import main

    monkeypatch.setenv("COLUMNS", "160")
    try:
        main(["inspect", str(export_data["checkpoint"])])
    except SystemExit as exc:
        assert not exc.code, capsys.readouterr().err
    out = capsys.readouterr().out
    for text in ("R, G, B, NIR, E", "19 logits, 15 active", "clear cut", "64 px / 16 px", "0.2 m/px"):
        assert text in out


def test_unknown_file_type_is_an_error(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"x")
    with pytest.raises(ModelDescriptionError, match=r"unknown model file type '\.bin'"):
        read_description(path)
    with pytest.raises(ModelDescriptionError, match="does not exist"):
        read_description(tmp_path / "missing.onnx")
