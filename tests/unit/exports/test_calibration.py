"""Calibration / parity tiles: sampling across inputs, band checks, one-line errors."""

from __future__ import annotations

import numpy as np
import pytest

from flair_deploy.errors import ConfigError, InputDataError
from flair_deploy.exports.calibration import read_tiles, synthetic_tiles
from flair_deploy.exports.precision import resolve_node_patterns


def _img(rng, bands=5, size=128):
    return rng.integers(0, 255, (bands, size, size), dtype=np.uint8)


def test_tiles_are_spread_across_all_rasters_and_reproducible(tiny_description, write_geotiff):
    rng = np.random.default_rng(0)
    paths = [write_geotiff(_img(rng), f"r{i}.tif") for i in range(3)]
    a = read_tiles(paths, tiny_description, count=6)
    b = read_tiles(paths, tiny_description, count=6)
    assert a.images.shape == (6, 5, 64, 64) and a.images.dtype == np.float32
    assert a.sha256 == b.sha256
    # Raw values, exactly as stored (the graph normalises): each tile is a window of one raster.
    sources = [[p for p in paths if _contains(p, tile)] for tile in a.images]
    assert all(len(s) == 1 for s in sources)
    assert {s[0] for s in sources} == set(paths), "every input contributes tiles"
    assert read_tiles(paths, tiny_description, count=6, seed=1).sha256 != a.sha256


def _contains(path, tile):
    import rasterio

    with rasterio.open(path) as ds:
        data = ds.read().astype(np.float32)
    for r in range(65):
        for c in range(65):
            if np.array_equal(data[:, r : r + 64, c : c + 64], tile):
                return True
    return False


def test_too_few_tiles_is_one_line(tiny_description, write_geotiff):
    path = write_geotiff(_img(np.random.default_rng(0)))
    with pytest.raises(InputDataError, match=r"give only 4 tiles of 64 px \(1 rasters\), 100 needed") as info:
        read_tiles([path], tiny_description, count=100)
    assert "\n" not in str(info.value)


def test_wrong_band_count_is_one_line(tiny_description, write_geotiff):
    path = write_geotiff(_img(np.random.default_rng(0), bands=3))
    with pytest.raises(InputDataError, match=r"has 3 bands but the model expects 5 \(R, G, B, NIR, E\)"):
        read_tiles([path], tiny_description, count=1)


def test_rgb_model_reads_first_bands_of_flair_rasters(tiny_description, write_geotiff):
    from flair_deploy.description import Normalization

    rgb = tiny_description.model_copy(
        update={"bands": ("R", "G", "B"), "normalization": Normalization(mean=(1, 2, 3), std=(1, 1, 1))}
    )
    data = _img(np.random.default_rng(0), size=64)
    tiles = read_tiles([write_geotiff(data)], rgb, count=1)
    np.testing.assert_array_equal(tiles.images[0], data[:3])


def test_csv_with_header_and_masks(tiny_description, write_geotiff, tmp_path):
    rng = np.random.default_rng(0)
    write_geotiff(_img(rng, size=64), "IMG_1.tif")
    write_geotiff(np.full((1, 64, 64), 15, np.uint8), "MSK_1.tif")  # 15 = clear cut: inactive in flair15
    csv = tmp_path / "val.csv"
    csv.write_text("img,msk\nIMG_1.tif,MSK_1.tif\n")
    tiles = read_tiles([csv], tiny_description, count=1, with_masks=True)
    assert tiles.masks is not None and np.all(tiles.masks == 14)  # mask code 15 → logit index 14


def test_missing_source_and_small_raster(tiny_description, write_geotiff, tmp_path):
    with pytest.raises(InputDataError, match="does not exist"):
        read_tiles([tmp_path / "nope.tif"], tiny_description, count=1)
    small = write_geotiff(_img(np.random.default_rng(0), size=32), "small.tif")
    with pytest.raises(InputDataError, match="smaller than one 64-px tile"):
        read_tiles([small], tiny_description, count=1)


def test_synthetic_tiles_have_structure(tiny_description):
    tiles = synthetic_tiles(tiny_description, 2, seed=3)
    assert tiles.images.shape == (2, 5, 64, 64)
    assert tiles.images.min() >= 0 and tiles.images.max() <= 255
    # Regions, not white noise: neighbouring pixels are strongly correlated.
    img = tiles.images[0, 0]
    assert np.corrcoef(img[:, :-1].ravel(), img[:, 1:].ravel())[0, 1] > 0.5


def test_keep_fp32_pattern_matching_nothing_is_an_error():
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["image"], ["logits"], name="only")],
        "g",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph)
    assert resolve_node_patterns(model, ["on*"]) == ["only"]
    with pytest.raises(ConfigError, match="'decoder' matches no node"):
        resolve_node_patterns(model, ["decoder"])
