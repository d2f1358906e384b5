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
    # Two patches of exactly one tile each: two windows, whatever the seed.
    rng = np.random.default_rng(0)
    paths = [write_geotiff(_img(rng, size=64), f"p{i}.tif") for i in range(2)]
    with pytest.raises(
        InputDataError, match=r"give only 2 distinct 64-px windows free of nodata \(2 rasters\), 3 needed"
    ) as info:
        read_tiles(paths, tiny_description, count=3)
    assert "\n" not in str(info.value)


@pytest.fixture
def ortho_2048(write_geotiff):
    """A 2048² 5-band ortho whose west 900 columns are nodata (0 in every band)."""
    data = np.random.default_rng(7).integers(1, 256, (5, 2048, 2048), dtype=np.uint8)
    data[:, :, :900] = 0
    return write_geotiff(data, "ortho2048.tif", nodata=0)


def test_a_2048_ortho_gives_as_many_512_windows_as_asked_seeded_and_off_nodata(ortho_2048):
    from flair_deploy.exports.calibration import _positions

    def hundred(seed):
        return list(_positions(ortho_2048, 2048, 2048, 512, np.random.default_rng(seed), 100))

    windows = hundred(0)
    assert len(set(windows)) == 100  # not the 16 (here 6 valid) non-overlapping tiles
    assert all(col >= 900 and row + 512 <= 2048 and col + 512 <= 2048 for row, col in windows)
    assert hundred(0) == windows and hundred(1) != windows


def test_windows_of_a_wide_raster_lie_on_a_lattice_and_never_touch_nodata(write_geotiff):
    from flair_deploy.exports.calibration import _positions

    data = np.full((5, 64, 8200), 7, np.uint8)
    data[:, 30, 4000] = 0  # one nodata pixel
    path = write_geotiff(data, "wide.tif", nodata=0)
    windows = list(_positions(path, 64, 8200, 64, np.random.default_rng(0), 10_000))
    assert {row for row, _ in windows} == {0}
    assert all(col % 3 == 0 for _, col in windows)  # ceil(8200 / 4096) = 3 px lattice
    assert all(not col <= 4000 < col + 64 for _, col in windows)
    assert len(windows) > 2500


def test_calibration_windows_of_a_2048_ortho_avoid_nodata_and_are_reproducible(tiny_description, ortho_2048):
    # End to end with 128-px windows (the 512-px case above differs only in memory).
    a = read_tiles([ortho_2048], tiny_description, count=100, tile_size=128, seed=3)
    assert a.images.shape == (100, 5, 128, 128)
    assert np.all(a.images.max(axis=1) > 0), "a window covers nodata"
    assert read_tiles([ortho_2048], tiny_description, count=100, tile_size=128, seed=3).sha256 == a.sha256
    assert read_tiles([ortho_2048], tiny_description, count=100, tile_size=128, seed=4).sha256 != a.sha256


def test_a_mostly_nodata_raster_runs_short_in_one_line(tiny_description, write_geotiff):
    data = np.zeros((5, 200, 200), np.uint8)
    data[:, :70, :70] = 9  # room for 7 x 7 = 49 windows of 64 px
    path = write_geotiff(data, "hole.tif", nodata=0)
    tiles = read_tiles([path], tiny_description, count=49)
    assert np.all(tiles.images == 9)
    with pytest.raises(InputDataError, match=r"give only 49 distinct 64-px windows free of nodata"):
        read_tiles([path], tiny_description, count=50)


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
