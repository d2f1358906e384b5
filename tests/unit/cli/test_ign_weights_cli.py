"""IGN's configs describe IGN-layout weights in `export`, `detect`, `evaluate` and `benchmark`.

The weights are what a user trains with IGN's code: a Lightning checkpoint (``model.seg_model.*`` and
``criterion.weight``) with a 15-entry class table, so 15 logits, on three bands with the user's own
statistics. No preset matches them.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import torch

from flair_deploy.artifacts import save_checkpoint
from flair_deploy.cli import main
from flair_deploy.description import ArchitectureSpec, ClassInfo, ModelDescription, Normalization
from flair_deploy.models import build_model

pytest.importorskip("onnx")

MEAN, STD = [101.0, 99.5, 98.25], [41.0, 38.5, 36.75]
#: IGN's table: code → [weight, name]; class 15 got weight 0 (never trained).
CLASSES = {c: [0 if c == 15 else 1, f"class {c}"] for c in range(1, 16)}


def _run(argv, capsys):
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return code, out.out, out.err


def _error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def ign_run(tmp_path_factory):
    """An IGN-layout Lightning checkpoint of a 15-logit, 3-band U-Net/ResNet-18 and its IGN configs."""
    folder = tmp_path_factory.mktemp("ign")
    truth = ModelDescription(
        name="truth",
        bands=("R", "G", "B"),
        normalization=Normalization(mean=tuple(MEAN), std=tuple(STD)),
        classes=tuple(ClassInfo(code=c, name=f"class {c}") for c in range(1, 16)),
        tile_size=64,
        overlap=16,
        architecture=ArchitectureSpec(arch="unet", encoder="resnet18"),
    )
    torch.manual_seed(0)
    net = build_model(truth).net.state_dict()
    state = {f"model.seg_model.{k}": v for k, v in net.items()}
    state["criterion.weight"] = torch.tensor([float(w) for w, _ in CLASSES.values()])
    ckpt = folder / "ckpt-epoch=07-val_loss=0.61_my-model.ckpt"
    torch.save({"state_dict": state, "epoch": 7}, ckpt)
    described = save_checkpoint(folder / "described.ckpt", build_model(truth), truth)

    classes = "\n".join(f"    {c}: [{w}, '{n}']" for c, (w, n) in CLASSES.items())
    train_cfg = folder / "flair-1-config.yaml"
    train_cfg.write_text(
        "paths:\n  out_folder: runs\n  out_model_name: my-model\n  train_csv: train.csv\n  val_csv: val.csv\n"
        "model_framework:\n  model_provider: SegmentationModelsPytorch\n"
        "  SegmentationModelsPytorch:\n    encoder_decoder: resnet18_unet\n"
        f"channels: [1, 2, 3]\nnorm_type: custom\nnorm_means: {MEAN}\nnorm_stds: {STD}\n"
        f"num_epochs: 3\nbatch_size: 4\nuse_weights: true\nclasses:\n{classes}\n"
    )
    rng = np.random.default_rng(0)
    raster = folder / "ortho.tif"
    profile = {
        "driver": "GTiff",
        "width": 150,
        "height": 130,
        "count": 3,
        "dtype": "uint8",
        "crs": "EPSG:2154",
    }
    with rasterio.open(
        raster, "w", **profile, transform=rasterio.Affine(0.2, 0, 650000, 0, -0.2, 6860000)
    ) as ds:
        ds.write(rng.integers(0, 256, (3, 130, 150), dtype=np.uint8))
    return {"folder": folder, "ckpt": ckpt, "described": described, "train_cfg": train_cfg, "raster": raster}


def _detect_config(run, path, *, n_classes=15, channels="[1, 2, 3]", means=MEAN, stds=STD):
    path.write_text(
        f"output_path: {path.parent}\noutput_name: {path.stem}-map\ninput_img_path: {run['raster']}\n"
        f"channels: {channels}\nimg_pixels_detection: 64\nmargin: 16\noutput_type: argmax\n"
        f"n_classes: {n_classes}\nmodel_weights: {run['ckpt']}\n"
        "model_framework:\n  model_provider: SegmentationModelsPytorch\n"
        "  SegmentationModelsPytorch:\n    encoder_decoder: resnet18_unet\n"
        f"batch_size: 4\nuse_gpu: false\nnorma_task:\n  - norm_type: custom\n"
        f"    norm_means: {means}\n    norm_stds: {stds}\n"
    )
    return path


def test_a_15_logit_ign_checkpoint_exports_with_its_train_config_and_maps_as_pytorch(ign_run, capsys):
    models = ign_run["folder"] / "models"
    code, _out, err = _run(
        [
            "export",
            str(ign_run["ckpt"]),
            "-c",
            str(ign_run["train_cfg"]),
            "--out",
            str(models),
            "--name",
            "my-model",
            "--tile",
            "64",
            "--parity-tiles",
            "4",
            "-q",
        ],
        capsys,
    )
    assert code == 0, err
    assert "its other keys are not used by export" in err  # num_epochs, paths, ... are reported
    onnx_path = models / "my-model.fp32.onnx"
    from flair_deploy.artifacts import read_description

    desc = read_description(onnx_path)
    assert desc.num_classes == 15 and [c.code for c in desc.classes] == list(range(1, 16))
    assert desc.active_mask == (True,) * 14 + (False,)  # IGN's weight 0
    assert desc.bands == ("R", "G", "B") and list(desc.normalization.mean) == MEAN
    parity = json.loads((models / "my-model.parity.json").read_text())
    assert parity["passed"] and parity["variants"][0]["agreement"] >= 0.99999

    # The map of the ONNX (onnxruntime) equals the map of the IGN checkpoint (PyTorch, described by the
    # detect config): the same argmax on >= 99.999 % of the pixels.
    maps = {}
    for name, argv in {
        "onnx": ["-m", str(onnx_path)],
        "ckpt": ["-c", str(_detect_config(ign_run, ign_run["folder"] / "detect.yaml"))],
    }.items():
        out_map = ign_run["folder"] / f"{name}.tif"
        # The ONNX with the stitching IGN's detect config asks for: crop, its margin, 0-based indices.
        crop = ["--stitching", "crop", "--margin", "16", "--indices", "--tile", "64"]
        args = ["detect", str(ign_run["raster"]), *argv, "-o", str(out_map), *crop, "-q"]
        if name == "ckpt":  # IGN's detect config: crop with its margin and 0-based indices
            args = ["detect", *argv, "-o", str(out_map), "-q"]
        code, _, err = _run(args, capsys)
        assert code == 0, err
        with rasterio.open(out_map) as ds:
            maps[name] = ds.read(1)
    agreement = float((maps["onnx"] == maps["ckpt"]).mean())
    assert agreement >= 0.99999, agreement
    assert 14 not in np.unique(maps["onnx"])  # index 14 = code 15, the inactive class: never predicted

    # The same through benchmark: the checkpoint described by the config, the ONNX by itself.
    report = ign_run["folder"] / "bench.json"
    code, _, err = _run(
        [
            "benchmark",
            "-m",
            str(ign_run["ckpt"]),
            "-m",
            str(onnx_path),
            "-c",
            str(ign_run["train_cfg"]),
            "--backends",
            "torch,onnxruntime",
            "--precisions",
            "fp32",
            "--batch",
            "1",
            "--tile",
            "64",
            "--json",
            str(report),
            "--min-time",
            "0",
            "--min-iters",
            "2",
            "--warmup",
            "1",
            "--parity-tiles",
            "2",
        ],
        capsys,
    )
    assert code == 0, err
    rows = json.loads(report.read_text())["rows"]
    ok = {r["backend"] for r in rows if r["status"] == "ok"}
    assert ok == {"torch", "onnxruntime"}, rows
    assert all(r["argmax_agreement"] is None or r["argmax_agreement"] >= 0.99999 for r in rows)


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"n_classes": 19}, "has 15 logits but"),
        ({"channels": "[1, 2, 3, 4]", "means": [*MEAN, 1.0], "stds": [*STD, 1.0]}, "takes 3 bands but"),
        ({"means": MEAN[:2]}, "norma_task[0].norm_means has 2 values for 3 channels"),
    ],
)
def test_a_detect_config_that_disagrees_with_the_weights_is_one_line(
    ign_run, tmp_path, change, needle, capsys
):
    cfg = _detect_config(ign_run, tmp_path / "bad.yaml", **change)
    code, _, err = _run(["detect", "-c", str(cfg), "-q"], capsys)
    line = _error_line(err)
    assert code == 1 and needle in line
    key = "n_classes" if "logits" in needle else ("channels" if "bands" in needle else "norma_task")
    assert key in line  # names the key of the file
    assert not list(tmp_path.glob("bad-map*"))


def test_a_config_that_disagrees_with_a_self_describing_model_names_the_key(ign_run, tmp_path, capsys):
    cfg = _detect_config(ign_run, tmp_path / "d.yaml", n_classes=19)
    code, _, err = _run(["detect", "-c", str(cfg), "-m", str(ign_run["described"]), "-q"], capsys)
    line = _error_line(err)
    assert code == 1 and "describes itself and disagrees" in line and "n_classes gives classes 19" in line


def test_a_preset_that_disagrees_with_the_config_names_the_key(ign_run, capsys, tmp_path):
    code, _, err = _run(
        [
            "export",
            str(ign_run["ckpt"]),
            "-c",
            str(ign_run["train_cfg"]),
            "--preset",
            "flair-inc-rgbie-15cl-resnet34-unet",
            "--out",
            str(tmp_path / "m"),
        ],
        capsys,
    )
    line = _error_line(err)
    assert code == 1 and "channels gives bands ['R', 'G', 'B']" in line and "--preset" in line
    assert not (tmp_path / "m").exists()
