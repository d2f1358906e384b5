"""QGIS Deepness and GeoDeep variants, checked with the tools' own code against our ``detect`` map.

Deepness's model classes (``ModelBase``, ``Segmentor``) import only numpy and onnxruntime, so they run
here from its source tree (Apache-2.0, ``/work/shared/third_party/qgis-plugin-deepness``, used in
place); its map processing imports QGIS and runs under the QGIS Python (``deepness_driver.py``).
GeoDeep is the package from the index. Each is skipped, with the reason, where it is absent.
"""

from __future__ import annotations

import json
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin

from flair_deploy.artifacts import read_onnx_props, save_checkpoint
from flair_deploy.choices import QgisTool
from flair_deploy.description import ArchitectureSpec, ModelDescription, Normalization, class_preset
from flair_deploy.errors import ConfigError
from flair_deploy.exports import ExportConfig, Head, export_model
from flair_deploy.exports.qgis_tools import deepness_issues, qgis_note, refusal, variant_path
from flair_deploy.flair_format import flair_statistics
from flair_deploy.models import build_model
from tests.gis_helpers import run_qgis_script
from tests.unit.exports.conftest import TILE, make_scenes

DEEPNESS_SRC = Path("/work/shared/third_party/qgis-plugin-deepness/src")
DRIVER = Path(__file__).with_name("deepness_driver.py")
# 64 + 3 * 48: a whole number of Deepness strides (tile 64, 25 % overlap). On other sizes Deepness
# extends its last tile row beyond the raster's top edge and reads zeros there (its
# calculate_extended_processing_extent), which changes the top rows; that is its edge rule, not ours.
DEEPNESS_GRID = 208


@pytest.fixture
def deepness(monkeypatch):
    """Deepness's source on ``sys.path`` for this test only (skipped where it is absent)."""
    if not (DEEPNESS_SRC / "deepness" / "processing" / "models" / "segmentor.py").exists():
        pytest.skip(f"QGIS Deepness source not found at {DEEPNESS_SRC}")
    monkeypatch.syspath_prepend(str(DEEPNESS_SRC))
    yield
    for name in [m for m in sys.modules if m == "deepness" or m.startswith("deepness.")]:
        del sys.modules[name]


def _write_raster(path: Path, image: np.ndarray, *, rgb: bool = False) -> Path:
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=image.shape[2],
        height=image.shape[1],
        count=image.shape[0],
        dtype="uint8",
        crs="EPSG:2154",
        transform=from_origin(650000, 6860000, 0.2, 0.2),
    ) as dst:
        dst.write(image.astype(np.uint8))
        if rgb:
            dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue]
    return path


@pytest.fixture(scope="module")
def rgb_data(tmp_path_factory):
    """A tiny trained R,G,B model and a 3-band raster of its scenes."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("rgb")
    mean, std = flair_statistics(("R", "G", "B"))
    desc = ModelDescription(
        name="tiny-rgb",
        bands=("R", "G", "B"),
        normalization=Normalization(mean=mean, std=std),
        tile_size=TILE,
        overlap=16,
        architecture=ArchitectureSpec(arch="unet", encoder="resnet18", encoder_depth=3),
        classes=class_preset("flair15"),
    )
    model = build_model(desc)
    images, labels = make_scenes(64, seed=1, size=32)
    x_all, y_all = torch.from_numpy(images[:, :3].copy()), torch.from_numpy(labels)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(30):
        idx = torch.randint(0, len(x_all), (8,))
        loss = torch.nn.functional.cross_entropy(model(x_all[idx]), y_all[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    ckpt = save_checkpoint(root / "rgb.ckpt", model, desc)
    scene, _ = make_scenes(1, seed=5, size=DEEPNESS_GRID)
    raster = _write_raster(root / "rgb.tif", scene[0, :3], rgb=True)
    return {"checkpoint": ckpt, "raster": raster}


@pytest.fixture(scope="module")
def five_band_raster(tmp_path_factory):
    scene, _ = make_scenes(1, seed=5, size=DEEPNESS_GRID)
    return _write_raster(tmp_path_factory.mktemp("five-raster") / "ortho.tif", scene[0])


@pytest.fixture(scope="module")
def five_band(export_data, tmp_path_factory):
    """A 5-band export as a QGIS user would not want it (dynamic H/W, three heads), with its Deepness variant."""
    heads = (Head.LOGITS, Head.PROBABILITIES, Head.CLASSES)
    return _export(
        export_data["checkpoint"],
        tmp_path_factory.mktemp("five"),
        dynamic_hw=True,
        heads=heads,
        qgis_tools=(QgisTool.DEEPNESS,),
    )


@pytest.fixture(scope="module")
def rgb_export(rgb_data, tmp_path_factory):
    """The R,G,B model's dynamic-H/W export (logits only) with both variants."""
    out = tmp_path_factory.mktemp("rgb-out")
    return _export(rgb_data["checkpoint"], out, dynamic_hw=True, qgis_tools=tuple(QgisTool))


def _fp32(result) -> Path:
    return result.onnx[result.description.provenance.precision]


def _export(checkpoint: Path, out: Path, **kw) -> object:
    cfg = ExportConfig(checkpoint=checkpoint, out_dir=out, parity_tiles=4, **kw)
    return export_model(cfg, progress=False)


def _detect_indices(model: Path, raster: Path, out: Path) -> np.ndarray:
    """Our ``detect`` map of *raster*, as 0-based logit indices."""
    from flair_deploy.inference.config import DetectConfig
    from flair_deploy.inference.detect import detect

    detect(DetectConfig(inputs=[raster], output=out, model=model, indices=True))
    with rasterio.open(out) as ds:
        return ds.read(1)


def _deepness_map(model: Path, raster: Path, out: Path) -> tuple[dict, np.ndarray | None]:
    """Deepness's class map (0-based indices, one plane per output), or None where it does not load."""
    if not (DEEPNESS_SRC / "deepness").is_dir():
        pytest.skip(f"QGIS Deepness source not found at {DEEPNESS_SRC}")
    ort_site = Path(sysconfig.get_paths()["purelib"])
    info = run_qgis_script(DRIVER, DEEPNESS_SRC, ort_site, model, raster, out)
    if "skip" in info:
        pytest.skip(info["skip"])
    return info, (np.load(out).astype(np.int64) - 1 if info["loads"] else None)


# ----------------------------------------------------------------------------- without QGIS
def test_deepness_model_classes_load_the_variant_and_give_our_classes(five_band, export_data, deepness):
    import onnxruntime as ort
    from deepness.processing.models.segmentor import Segmentor

    desc = five_band.description
    variant = five_band.qgis_variants[(desc.provenance.precision, QgisTool.DEEPNESS)]
    assert variant == variant_path(_fp32(five_band), QgisTool.DEEPNESS)
    model = Segmentor(str(variant))
    assert model.get_input_shape()[-2:] == [TILE, TILE]
    assert model.get_number_of_output_channels() == [desc.num_classes]
    assert model.outputs_names == [[c.name for c in desc.classes]]
    assert model.get_metadata_segmentation_threshold() == 0.0
    assert model.get_metadata_segmentation_small_segment() == 0
    assert model.get_metadata_tile_size() == TILE
    with rasterio.open(export_data["root"] / "IMG_0.tif") as ds:
        tiles = ds.read(window=((0, TILE), (0, TILE)))[None].transpose(0, 2, 3, 1)  # Deepness's NHWC uint8
    probabilities = model.process(tiles)[0]
    # Our own logits for the same raw values, from the verified FP32 artifact the variant came from.
    session = ort.InferenceSession(str(_fp32(five_band)), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"image": tiles.transpose(0, 3, 1, 2).astype(np.float32)})[0]
    active = np.asarray(desc.active_mask)
    want = np.where(active[None, :, None, None], logits, -np.inf).argmax(1)
    assert (probabilities.argmax(1) == want).mean() == 1.0
    assert not probabilities[:, ~active].any()  # untrained classes can never win Deepness's argmax
    assert five_band.qgis_agreement[(desc.provenance.precision, QgisTool.DEEPNESS)] >= 0.9999


def test_deepness_model_classes_reject_our_multi_head_export(five_band, deepness):
    from deepness.processing.models.segmentor import Segmentor

    # One class_names entry for four outputs (logits, probabilities, class_index, confidence).
    with pytest.raises(IndexError):
        Segmentor(str(_fp32(five_band)))


def test_deepness_standardisation_gives_raw_values_for_any_raster_type(deepness):
    from deepness.common.processing_parameters.standardization_parameters import StandardizationParameters
    from deepness.processing.models import preprocessing_utils as pre

    for dtype, top in (("uint8", 255), ("uint16", 65535), ("float32", 3000.0)):
        desc = ModelDescription(input_dtype=dtype, normalization=Normalization(max_value=float(top)))
        props = desc.deepness_props()
        params = StandardizationParameters(channels_number=desc.in_channels)
        params.set_mean_std(
            mean=json.loads(props["standardization_mean"]), std=json.loads(props["standardization_std"])
        )
        raw = np.linspace(0, top, 50).astype(dtype).reshape(1, 5, 10, 1).repeat(5, axis=3)
        fed = pre.standardize_values(pre.normalize_values_to_01(raw), params=params)
        np.testing.assert_allclose(fed, raw.astype(np.float32), rtol=1e-5, atol=1e-3)


def test_export_says_why_a_default_export_is_not_for_deepness(five_band):
    note = qgis_note(_fp32(five_band), ())
    assert note is not None and note.startswith(_fp32(five_band).name)
    assert "dynamic" in note and "first output is 'logits'" in note and "4 outputs" in note
    assert "--for deepness" in note
    assert qgis_note(_fp32(five_band), (QgisTool.DEEPNESS,)) is None
    assert deepness_issues(variant_path(_fp32(five_band), QgisTool.DEEPNESS)) == []


def test_geodeep_refuses_a_5_band_model_before_any_work(export_data, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=r"--for geodeep refused .*GeoDeep feeds 3 bands only.*5 bands"):
        _export(export_data["checkpoint"], out, qgis_tools=(QgisTool.GEODEEP,))
    assert not out.exists() or not any(out.iterdir())


def test_geodeep_refuses_float_rasters():
    desc = ModelDescription(
        bands=("R", "G", "B"),
        normalization=Normalization(mean=(0.0,) * 3, std=(1.0,) * 3),
        input_dtype="float32",
    )
    assert "min-max" in (refusal(desc, QgisTool.GEODEEP) or "")
    assert refusal(desc, QgisTool.DEEPNESS) is None


def test_geodeep_variant_maps_like_detect(rgb_export, rgb_data, tmp_path):
    geodeep = pytest.importorskip("geodeep", reason="geodeep is not installed (pip install geodeep)")
    variant = variant_path(_fp32(rgb_export), QgisTool.GEODEEP)
    props = read_onnx_props(variant)
    assert props["flair_deploy.qgis_variant"] == "geodeep"
    assert json.loads(props["standardization_std"]) == [
        1.0,
        1.0,
        1.0,
    ]  # GeoDeep's 0-1 input, also right in Deepness
    mask = geodeep.run(str(rgb_data["raster"]), str(variant), output_type="raw")
    ours = _detect_indices(_fp32(rgb_export), rgb_data["raster"], tmp_path / "map.tif")
    assert mask.shape == ours.shape
    assert (mask == ours).mean() >= 0.99
    # The Deepness variant of an R,G,B uint8 model is the same graph: GeoDeep maps it alike.
    same = geodeep.run(
        str(rgb_data["raster"]), str(variant_path(_fp32(rgb_export), QgisTool.DEEPNESS)), "raw"
    )
    assert (same == mask).all()


def test_our_runtimes_refuse_a_variant(rgb_export, rgb_data, tmp_path):
    from flair_deploy.errors import FlairDeployError

    with pytest.raises(FlairDeployError, match="no logits output"):
        _detect_indices(
            variant_path(_fp32(rgb_export), QgisTool.GEODEEP), rgb_data["raster"], tmp_path / "m.tif"
        )


# ----------------------------------------------------------------------------- QGIS (headless)
def test_qgis_deepness_fails_on_our_multi_head_export_and_maps_its_variant_like_detect(
    five_band, five_band_raster, tmp_path
):
    raster = five_band_raster
    info, _ = _deepness_map(_fp32(five_band), raster, tmp_path / "default.npy")
    assert not info["loads"] and info["error"].startswith("IndexError")
    variant = variant_path(_fp32(five_band), QgisTool.DEEPNESS)
    info, deepness_map = _deepness_map(variant, raster, tmp_path / "variant.npy")
    assert info["loads"] and info["message"] == "MapProcessingResultSuccess"
    assert (
        info["tile"] == TILE
        and info["outputs"] == 1
        and info["median_blur"] == 1
        and info["threshold"] == 0.0
    )
    ours = _detect_indices(_fp32(five_band), raster, tmp_path / "map.tif")
    assert deepness_map.shape == (1, *ours.shape)
    assert (deepness_map[0] == ours).mean() >= 0.99


def test_qgis_deepness_fails_on_dynamic_hw_and_maps_both_rgb_variants(rgb_export, rgb_data, tmp_path):
    info, _ = _deepness_map(_fp32(rgb_export), rgb_data["raster"], tmp_path / "default.npy")
    assert not info["loads"] and "is 'width', not an integer" in info["error"]
    ours = _detect_indices(_fp32(rgb_export), rgb_data["raster"], tmp_path / "map.tif")
    for tool in QgisTool:
        variant = variant_path(_fp32(rgb_export), tool)
        info, deepness_map = _deepness_map(variant, rgb_data["raster"], tmp_path / f"{tool.value}.npy")
        assert info["loads"] and info["median_blur"] == 1, tool
        assert (deepness_map[0] == ours).mean() >= 0.99, tool
