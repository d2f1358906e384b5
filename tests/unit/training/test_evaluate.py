"""End-to-end evaluation on tiny synthetic patches with a checkpoint whose predictions are known."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import rasterio
import torch

from flair_deploy.artifacts import save_checkpoint
from flair_deploy.description import ArchitectureSpec, ModelDescription
from flair_deploy.errors import CheckpointError, InputDataError, OutputError
from flair_deploy.models import build_model
from flair_deploy.training.evaluate import evaluate

BUILDING, WATER, CLEAR_CUT = 0, 4, 14  # logit indices (codes 1, 5, 15; clear cut is inactive in flair15)


@pytest.fixture
def small_description(tiny_description):
    """The tiny description with a shallow encoder and narrow decoder: these tests are about I/O."""
    arch = ArchitectureSpec(arch="unet", encoder="resnet18", encoder_depth=3, decoder_channels=(32, 16, 8))
    return ModelDescription.from_dict({**tiny_description.to_dict(), "architecture": arch.model_dump()})


@pytest.fixture
def constant_checkpoint(small_description, tmp_path):
    """A self-describing Lightning-like checkpoint that predicts 'building' everywhere.

    The inactive 'clear cut' logit is made the largest: evaluation must mask it out.
    """
    model = build_model(small_description)
    sd = model.state_dict()
    sd["net.segmentation_head.0.weight"].zero_()
    bias = torch.zeros_like(sd["net.segmentation_head.0.bias"])
    bias[BUILDING] = 10.0
    bias[CLEAR_CUT] = 100.0
    sd["net.segmentation_head.0.bias"] = bias
    model.load_state_dict(sd)
    return save_checkpoint(tmp_path / "model.ckpt", model, small_description)


@pytest.fixture
def patch_csv(write_geotiff, tmp_path):
    """Two 64-px patches (with their masks) listed in a FLAIR CSV with relative paths."""
    rows = []
    for i in range(2):
        image = np.random.randint(0, 255, (5, 64, 64), dtype=np.uint8)
        mask = np.full((64, 64), 1, dtype=np.uint8)  # building
        mask[32:] = 5  # water
        mask[:, :8] = 15  # clear cut: an untrained class in the ground truth
        img = write_geotiff(image, f"IMG_{i:06d}.tif", origin=(650000.0 + 100 * i, 6860000.0))
        msk = write_geotiff(mask, f"MSK_{i:06d}.tif")
        rows.append([img.name, msk.name])
    path = tmp_path / "test.csv"
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


def test_evaluate_writes_reports_and_georeferenced_predictions(constant_checkpoint, patch_csv, tmp_path):
    out = tmp_path / "eval"
    result = evaluate(
        constant_checkpoint, patch_csv, out, batch_size=2, save_predictions=True, progress=False
    )

    # Known predictions: everything is "building". Active GT: building and water 32x56 px each per patch.
    present = result.metrics["present"]
    assert present.per_class_iou["building"] == pytest.approx(0.5)
    assert present.per_class_iou["water"] == 0.0
    assert present.averaged_over == ("building", "water")
    assert present.miou == pytest.approx(0.25)
    assert result.metrics["ign"].miou == pytest.approx(0.5 / 15)  # 15 active classes, absent ones = 0
    assert result.metrics["challenge"].classes[-1] == "other"
    assert result.confusion_matrix.sum() == 2 * 64 * 64
    assert result.confusion_matrix[:, CLEAR_CUT].sum() == 0  # inactive logit never predicted

    report = json.loads((out / "metrics.json").read_text())
    assert set(report["conventions"]) == {"present", "ign", "challenge"}
    for conv in ("present", "ign", "challenge"):
        block = report["conventions"][conv]
        assert {"miou", "overall_accuracy", "fscore", "precision", "recall", "per_class_iou", "note"} <= set(
            block
        )
    assert report["conventions"]["present"]["per_class_iou"]["coniferous"] is None

    with (out / "confusion_matrix.csv").open() as f:
        table = list(csv.reader(f))
    assert table[0][1:] == list(result.class_names)
    assert int(table[1 + CLEAR_CUT][1 + BUILDING]) == 2 * 8 * 64
    assert (out / "confusion_matrix.png").stat().st_size > 0

    pred = out / "predictions" / "PRED_IMG_000001.tif"
    with rasterio.open(pred) as ds, rasterio.open(tmp_path / "IMG_000001.tif") as src:
        assert ds.crs == src.crs and ds.transform == src.transform
        assert ds.dtypes[0] == "uint8" and ds.nodata == 255
        assert ds.colormap(1)[1][:3] == (0xDB, 0x0E, 0x9A)
        assert ds.tags()["CLASS_1"] == "building"
        assert (ds.read(1) == 1).all()  # FLAIR code, not logit index
    assert (out / "predictions" / "classes.qml").exists()
    assert not list(out.glob(".*part*"))
    # GDAL (and so QGIS) names the classes of each prediction: category names and an attribute table
    from tests.gis_helpers import gdal_report

    (band,) = gdal_report(pred)
    assert band["categories"][1] == "building" and band["rat_rows"][0][1:3] == ["1", "building"]


def test_evaluate_refuses_to_overwrite_then_overwrites(constant_checkpoint, patch_csv, tmp_path):
    out = tmp_path / "eval"
    evaluate(constant_checkpoint, patch_csv, out, progress=False)
    before = (out / "metrics.json").stat().st_mtime_ns
    with pytest.raises(OutputError, match="--overwrite"):
        evaluate(constant_checkpoint, patch_csv, out, progress=False)
    assert (out / "metrics.json").stat().st_mtime_ns == before
    evaluate(constant_checkpoint, patch_csv, out, progress=False, overwrite=True)


def test_bad_mask_fails_without_partial_outputs(constant_checkpoint, write_geotiff, tmp_path):
    img = write_geotiff(np.zeros((5, 64, 64), dtype=np.uint8), "IMG_9.tif")
    msk = write_geotiff(np.full((64, 64), 42, dtype=np.uint8), "MSK_9.tif")
    listing = tmp_path / "bad.csv"
    listing.write_text(f"{img},{msk}\n")
    out = tmp_path / "eval"
    with pytest.raises(InputDataError, match="42"):
        evaluate(constant_checkpoint, listing, out, save_predictions=True, progress=False)
    assert not out.exists() or not any(out.iterdir())
    result = evaluate(constant_checkpoint, listing, out, ignore_unknown=True, progress=False)
    assert result.confusion_matrix.sum() == 0


def test_bare_state_dict_needs_a_description(small_description, patch_csv, tmp_path):
    path = tmp_path / "bare.pt"
    torch.save(build_model(small_description).state_dict(), path)
    with pytest.raises(CheckpointError, match="no model description"):
        evaluate(path, patch_csv, tmp_path / "e", progress=False)
    result = evaluate(path, patch_csv, tmp_path / "e", description=small_description, progress=False)
    assert result.patches == 2


def test_cli_prints_tables_and_writes_outputs(constant_checkpoint, patch_csv, tmp_path, capsys):
    from flair_deploy.cli import main

    out = tmp_path / "cli"
    args = [
        "evaluate",
        str(constant_checkpoint),
        "--csv",
        str(patch_csv),
        "--out",
        str(out),
        "--batch-size",
        "2",
    ]
    try:
        main(args)
    except SystemExit as exc:  # the CLI shell may exit 0 explicitly
        assert exc.code in (0, None)
    text = capsys.readouterr().out
    assert "building" in text and "50.0" in text  # building IoU, in percent
    assert "challenge" in text and "other (codes 13-19 folded)" in text
    assert (out / "metrics.json").exists()


@pytest.mark.parametrize("problem", ["missing csv", "corrupt checkpoint", "bad bands"])
def test_cli_bad_input_is_one_line_and_exit_1(problem, constant_checkpoint, patch_csv, tmp_path, capsys):
    from flair_deploy.cli import main

    ckpt, listing, extra = constant_checkpoint, patch_csv, []
    if problem == "missing csv":
        listing = tmp_path / "nope.csv"
    elif problem == "corrupt checkpoint":
        ckpt = tmp_path / "broken.ckpt"
        ckpt.write_bytes(b"not a checkpoint at all")
    else:
        extra = ["--bands", "1,x"]
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", str(ckpt), "--csv", str(listing), "--out", str(tmp_path / "o"), *extra])
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_full_disk_while_writing_predictions_is_one_line_and_leaves_nothing(
    constant_checkpoint, patch_csv, tmp_path, monkeypatch
):
    from rasterio._err import CPLE_FileIOError
    from rasterio.io import DatasetWriter

    from flair_deploy import atomic

    class Usage:
        free = 10

    calls = []

    def full(self, *_a, **_k):
        calls.append(1)
        if len(calls) > 1:  # the first map is written, the second finds the disk full
            monkeypatch.setattr(atomic.shutil, "disk_usage", lambda _p: Usage)
            raise CPLE_FileIOError(1, 3, "TIFFAppendToStrip:Write error at scanline 0")
        return original(self, *_a, **_k)

    original = DatasetWriter.write
    monkeypatch.setattr(DatasetWriter, "write", full)
    out = tmp_path / "eval"
    with pytest.raises(OutputError) as info:
        evaluate(constant_checkpoint, patch_csv, out, save_predictions=True, progress=False)
    msg = str(info.value)
    assert "PRED_IMG_000001.tif" in msg and "the disk is full" in msg and "\n" not in msg
    assert not out.exists(), "a failed evaluation leaves nothing behind"
