"""The sample dataset and sample orthophoto generators."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import rasterio

from flair_deploy.aerial import load_aerial_json
from flair_deploy.description import ModelDescription
from flair_deploy.errors import ConfigError, OutputError
from flair_deploy.sample import (
    SAMPLE_CLASS_CODES,
    make_sample_dataset,
    make_sample_ortho,
    render_scene,
    sample_tiles,
)
from flair_deploy.training.data import FlairPatchDataset, read_patch_csv


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    return make_sample_dataset(tmp_path_factory.mktemp("s") / "data", n_train=6, n_val=3, n_test=3, size=32)


def test_layout_csvs_and_description(sample):
    assert [len(read_patch_csv(p)) for p in (sample.train_csv, sample.val_csv, sample.test_csv)] == [6, 3, 3]
    first = sample.train_csv.read_text().splitlines()[0]
    assert first == "train/img/IMG_000000.tif,train/msk/MSK_000000.tif"  # relative to the CSV's folder
    desc = sample.description
    assert desc.bands == ("R", "G", "B", "NIR", "E") and desc.tile_size == 32 and desc.overlap == 8
    assert desc.num_classes == 19
    assert {c.code for c in desc.classes if c.active} == set(SAMPLE_CLASS_CODES)
    assert ModelDescription.load_sidecar(sample.root / "description.json") == desc


def test_patches_are_georeferenced_flair_geotiffs(sample):
    pairs = read_patch_csv(sample.test_csv)
    records = load_aerial_json(sample.aerial_json)
    for pair in pairs:
        with rasterio.open(pair.image) as img, rasterio.open(pair.mask) as msk:
            assert (img.count, img.dtypes[0], img.width) == (5, "uint8", 32)
            assert img.crs.to_epsg() == 2154 and img.res == pytest.approx((0.2, 0.2))
            assert img.transform == msk.transform and msk.count == 1
            # Plausible Lambert-93 position, and the aerial record's centroid is the patch centre.
            left, bottom, right, top = img.bounds
            assert 100_000 < left < 1_250_000 and 6_040_000 < bottom < 7_120_000
            rec = records[pair.image.stem]
            assert rec.x == pytest.approx((left + right) / 2) and rec.y == pytest.approx((bottom + top) / 2)
            assert set(np.unique(msk.read(1))) <= set(SAMPLE_CLASS_CODES)


def test_dataset_reads_with_the_patch_dataset(sample):
    records = load_aerial_json(sample.aerial_json)
    ds = FlairPatchDataset(
        read_patch_csv(sample.train_csv),
        description=sample.description,
        band_indexes=sample.band_indexes,
        aerial=records,
    )
    item = ds[0]
    assert item["image"].shape == (5, 32, 32) and item["metadata"].ndim == 1
    assert item["mask"].max() < sample.description.num_classes


def test_deterministic_for_a_seed(tmp_path):
    a = make_sample_dataset(tmp_path / "a", n_train=3, n_val=1, n_test=1, size=32, seed=7)
    b = make_sample_dataset(tmp_path / "b", n_train=3, n_val=1, n_test=1, size=32, seed=7)
    c = make_sample_dataset(tmp_path / "c", n_train=3, n_val=1, n_test=1, size=32, seed=8)
    assert _digest(a.root) == _digest(b.root) != _digest(c.root)


def test_refuses_to_overwrite(tmp_path):
    out = tmp_path / "data"
    make_sample_dataset(out, n_train=2, n_val=1, n_test=1, size=32, with_aerial=False)
    with pytest.raises(OutputError, match="not empty; pass overwrite=True"):
        make_sample_dataset(out, n_train=2, n_val=1, n_test=1, size=32)
    again = make_sample_dataset(out, n_train=3, n_val=1, n_test=1, size=32, overwrite=True)
    assert len(read_patch_csv(again.train_csv)) == 3 and again.aerial_json.is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["data"]  # no temporary folders left behind
    # overwrite never deletes a folder this generator did not write.
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(OutputError, match="not a flair-deploy sample dataset"):
        make_sample_dataset(foreign, n_train=2, n_val=1, n_test=1, size=32, overwrite=True)
    assert (foreign / "thesis.tex").read_text() == "precious"


def test_bad_parameters(tmp_path):
    with pytest.raises(ConfigError, match="multiple of 32"):
        make_sample_dataset(tmp_path / "x", size=50)
    with pytest.raises(ConfigError, match="n_val must be >= 1"):
        make_sample_dataset(tmp_path / "x", n_val=0)


def test_scene_classes_are_spectrally_distinct():
    # Learnability guard: a nearest-class-mean classifier on raw pixels is already nearly perfect.
    image, mask = render_scene(10_000, 3_000_000, 256, 256, seed=0)
    x = image.reshape(5, -1).T.astype(np.float32)
    y = mask.reshape(-1)
    codes = np.unique(y)
    assert len(codes) == len(SAMPLE_CLASS_CODES)
    means = np.stack([x[y == c].mean(0) for c in codes])
    pred = codes[np.argmin(((x[:, None, :] - means[None]) ** 2).sum(-1), axis=1)]
    assert (pred == y).mean() > 0.97


def test_scene_windows_agree():
    # Any window of the world renders the same geometry, which is what block-wise orthophotos rely on.
    _, big = render_scene(500, 2_000_000, 100, 120, seed=3)
    _, part = render_scene(537, 2_000_051, 40, 50, seed=3)
    np.testing.assert_array_equal(big[37:77, 51:101], part)


def test_sample_ortho(tmp_path):
    path = tmp_path / "ortho.tif"
    make_sample_ortho(
        path, width=200, height=150, block=64, nodata_border=10, origin=(650_000.1, 6_862_000.0)
    )
    with rasterio.open(path) as src:
        assert (src.count, src.width, src.height, src.dtypes[0]) == (5, 200, 150, "uint8")
        assert src.crs.to_epsg() == 2154 and src.res == pytest.approx((0.2, 0.2))
        assert (src.transform.c, src.transform.f) == pytest.approx((650_000.2, 6_862_000.0))  # snapped
        assert src.block_shapes[0] == (64, 64) and src.nodata == 0
        data = src.read()
        valid = src.dataset_mask()
    # Nodata: exactly the 10-px border is 0 on every band and masked; inside, R/G/B/NIR are never 0.
    inside = np.zeros((150, 200), bool)
    inside[10:-10, 10:-10] = True
    np.testing.assert_array_equal(valid > 0, inside)
    assert (data[:, ~inside] == 0).all() and (data[:4, inside] > 0).all()
    # Each block is the world's window at that place (the second block here: rows 0-63, cols 64-127).
    row0, col0 = round((7_200_000 - 6_862_000.0) / 0.2), round(650_000.1 / 0.2)
    expected, _ = render_scene(row0, col0 + 64, 64, 64, seed=0)
    np.testing.assert_array_equal(data[:, 10:64, 64:128], expected[:, 10:])
    assert [p.name for p in tmp_path.iterdir()] == ["ortho.tif"]
    with pytest.raises(OutputError, match="already exists"):
        make_sample_ortho(path, width=64, height=64)
    with pytest.raises(ConfigError, match="nodata_border"):
        make_sample_ortho(tmp_path / "o2.tif", width=64, height=64, nodata_border=32)


def test_sample_json_marker(sample):
    marker = json.loads((sample.root / "sample.json").read_text())
    assert marker["class_codes"] == list(SAMPLE_CLASS_CODES) and marker["size"] == 32


def test_sample_tiles_follow_the_model_bands_and_dtype(tiny_description):
    # What export parity and benchmarks feed a model: windows of the same world, bands picked by name.
    tiles = sample_tiles(tiny_description, 3, 32, seed=0)
    assert tiles.shape == (3, 5, 32, 32) and tiles.dtype == np.float32
    expected, _ = render_scene(7919, 104729, 32, 32, seed=0)
    np.testing.assert_array_equal(tiles[1], expected.astype(np.float32))
    nir_r = tiny_description.model_copy(update={"bands": ("NIR", "R"), "input_dtype": "uint16"})
    np.testing.assert_array_equal(sample_tiles(nir_r, 3, 32)[1], expected[[3, 0]].astype(np.float32) * 257)
    assert not np.array_equal(tiles, sample_tiles(tiny_description, 3, 32, seed=1))


def test_sample_module_needs_no_torch():
    # The runtime install (detect, benchmark on ONNX) has no torch but uses the sample world.
    import subprocess
    import sys

    code = "import sys, flair_deploy.sample; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
