"""Raster output: every map of one input appears whole and together, or not at all."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest
import rasterio
from rasterio._err import CPLE_FileIOError
from rasterio.io import DatasetWriter

from flair_deploy import atomic
from flair_deploy.errors import OutputError
from flair_deploy.inference import DetectConfig, run_detection
from flair_deploy.inference.raster import OutputPaths, OutputWriter, estimated_map_bytes, inspect_raster
from flair_deploy.inference.stitching import OutputChunk
from tests.fakes import EchoBackend

H = W = 40


@pytest.fixture
def source(write_geotiff):
    rng = np.random.default_rng(0)
    return write_geotiff(rng.integers(0, 255, (5, H, W)).astype(np.uint8), "ortho.tif")


def _paths(source, folder, *, extras=True):
    return OutputPaths(
        source,
        folder / "map.tif",
        folder / "map_proba.tif" if extras else None,
        folder / "map_confidence.tif" if extras else None,
    )


def _chunk(k):
    classes = np.tile(np.arange(W, dtype=np.uint8) % 3, (H, 1))
    return OutputChunk(0, classes, np.full((H, W), 200, np.uint8), np.zeros((k, H, W), np.uint8))


def _finished(paths):
    """The files a finished write leaves: the maps, the class map's PAM sidecar, the QGIS styles."""
    return [p.name for p in paths.all()] + ["map.tif.aux.xml"] + [p.stem + ".qml" for p in paths.all()]


def _writer(source, paths, desc):
    return OutputWriter(inspect_raster(source, desc), paths, desc, overviews=False, block=16)


def test_maps_appear_together_only_when_complete(source, tmp_path, tiny_description):
    paths = _paths(source, tmp_path / "maps")
    with _writer(source, paths, tiny_description) as writer:
        writer.write(_chunk(tiny_description.num_classes))
        # While writing, only hidden pid-named temporaries exist.
        names = sorted(p.name for p in paths.classes.parent.iterdir())
        assert names == sorted(atomic.temporary_path(p).name for p in paths.all())
        assert all(atomic.is_temporary(paths.classes.parent / n) for n in names)
    assert sorted(p.name for p in paths.classes.parent.iterdir()) == sorted(_finished(paths))
    with rasterio.open(paths.classes) as ds:
        codes = [c.code for c in tiny_description.classes]
        assert ds.read(1)[0, :3].tolist() == codes[:3]


def test_an_aborted_write_leaves_nothing_not_even_the_folder(source, tmp_path, tiny_description):
    paths = _paths(source, tmp_path / "maps")
    with pytest.raises(RuntimeError, match="interrupted"), _writer(source, paths, tiny_description) as w:
        w.write(_chunk(tiny_description.num_classes))
        raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ortho.tif"]


def test_overwrite_removes_the_stale_aux_sidecar_of_the_old_map(source, tmp_path, tiny_description):
    paths = _paths(source, tmp_path, extras=False)
    paths.classes.write_bytes(b"old map")
    stale = paths.classes.with_name("map.tif.aux.xml")
    stale.write_text("<PAMDataset>statistics of the old map</PAMDataset>")
    with _writer(source, paths, tiny_description) as writer:
        writer.write(_chunk(tiny_description.num_classes))
    assert not stale.exists() or "old map" not in stale.read_text()
    with rasterio.open(paths.classes) as ds:
        assert ds.width == W


def test_a_full_disk_is_one_line_naming_the_map_and_leaves_nothing(
    source, tmp_path, tiny_description, monkeypatch
):
    class Usage:
        free = 10

    def full(self, *_a, **_k):
        monkeypatch.setattr(atomic.shutil, "disk_usage", lambda _p: Usage)
        raise CPLE_FileIOError(1, 3, "TIFFAppendToStrip:Write error at scanline 0")

    monkeypatch.setattr(DatasetWriter, "write", full)
    paths = _paths(source, tmp_path / "maps")
    with pytest.raises(OutputError) as info, _writer(source, paths, tiny_description) as writer:
        writer.write(_chunk(tiny_description.num_classes))
    msg = str(info.value)
    assert msg.startswith(f"cannot write {paths.classes}: TIFFAppendToStrip") and "\n" not in msg
    assert "(the disk is full); free some space" in msg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ortho.tif"]


def test_estimate_grows_with_the_outputs(source, tmp_path, tiny_description):
    info = inspect_raster(source, tiny_description)
    small = estimated_map_bytes(info, _paths(source, tmp_path, extras=False), tiny_description, cog=False)
    big = estimated_map_bytes(info, _paths(source, tmp_path), tiny_description, cog=True)
    assert 0 < small < big


def test_detect_refuses_a_disk_too_small_before_any_output(source, tmp_path, tiny_description, monkeypatch):
    class Usage:
        free = 0

    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda _p: Usage)
    out = tmp_path / "maps" / "map.tif"
    with (
        EchoBackend(tiny_description) as b,
        pytest.raises(OutputError, match="not enough space for the class maps"),
    ):
        run_detection(b, DetectConfig(inputs=(source,), output=out, overviews=False, block_size=16))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ortho.tif"]


def test_detect_removes_temporaries_of_dead_runs_but_not_of_running_ones(source, tmp_path, tiny_description):
    out = tmp_path / "map.tif"
    dead = atomic.temporary_path(out, pid=2**22 + 12345)
    running = atomic.temporary_path(out, pid=os.getppid())  # another live process is writing it
    dead.write_bytes(b"left over")
    running.write_bytes(b"in progress")
    with EchoBackend(tiny_description) as b:
        run_detection(b, DetectConfig(inputs=(source,), output=out, overviews=False, block_size=16))
    assert out.is_file() and not dead.exists() and running.exists()


def test_cog_conversion_leaves_only_the_maps(source, tmp_path, tiny_description):
    paths = _paths(source, tmp_path / "maps")
    info = inspect_raster(source, tiny_description)
    with OutputWriter(info, paths, tiny_description, block=16, cog=True) as writer:
        writer.write(_chunk(tiny_description.num_classes))
    assert sorted(p.name for p in paths.classes.parent.iterdir()) == sorted(_finished(paths))
    with rasterio.open(paths.classes) as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"


def test_detect_on_a_disk_that_fills_up_is_one_line_and_leaves_nothing(
    source, tmp_path, tiny_description, monkeypatch
):
    def full(self, *_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")  # as rasterio raises it when GDAL sees ENOSPC

    monkeypatch.setattr(DatasetWriter, "write", full)
    out = tmp_path / "maps" / "map.tif"
    with EchoBackend(tiny_description) as b, pytest.raises(OutputError) as info:
        run_detection(b, DetectConfig(inputs=(source,), output=out, overviews=False, block_size=16))
    assert str(info.value) == (
        f"cannot write {out}: No space left on device; free some space or choose another output folder"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ortho.tif"]


@pytest.mark.parametrize("cog", [False, True])
def test_overviews_built_on_all_cores_equal_a_serial_build(
    write_geotiff, tmp_path, tiny_description, cog, monkeypatch
):
    from flair_deploy.inference import raster

    size, k = 512, tiny_description.num_classes
    src = write_geotiff(np.zeros((5, size, size), np.uint8), "big.tif")
    info = inspect_raster(src, tiny_description)
    rng = np.random.default_rng(3)
    active = [i for i, c in enumerate(tiny_description.classes) if c.active]
    classes = np.repeat(np.repeat(rng.choice(active, (size // 8, size // 8)), 8, 0), 8, 1).astype(np.uint8)
    noisy = rng.random(classes.shape) < 0.2
    classes[noisy] = rng.choice(active, int(noisy.sum()))
    classes[:40, :300] = 255  # NO_CLASS: nodata in every map
    chunk = OutputChunk(
        0,
        classes,
        rng.integers(0, 256, (size, size), np.uint8),
        rng.integers(0, 256, (k, size, size), np.uint8),
    )
    threads_seen = []
    build = DatasetWriter.build_overviews

    def spy(self, *args, **kwargs):
        threads_seen.append(rasterio.env.getenv().get("GDAL_NUM_THREADS"))
        return build(self, *args, **kwargs)

    monkeypatch.setattr(DatasetWriter, "build_overviews", spy)
    maps = {}
    for threads in ("1", "ALL_CPUS"):
        monkeypatch.setattr(raster, "_GDAL_THREADS", threads)
        paths = _paths(src, tmp_path / threads)
        with OutputWriter(info, paths, tiny_description, block=128, cog=cog) as writer:
            writer.write(chunk)
        maps[threads] = paths
    if not cog:
        assert threads_seen == ["1"] * 3 + ["ALL_CPUS"] * 3
    for serial, threaded in zip(maps["1"].all(), maps["ALL_CPUS"].all(), strict=True):
        with rasterio.open(serial) as a, rasterio.open(threaded) as b:
            levels = a.overviews(1)
            assert levels == b.overviews(1) and len(levels) >= 2
        for level in range(len(levels)):
            with (
                rasterio.open(serial, overview_level=level) as a,
                rasterio.open(threaded, overview_level=level) as b,
            ):
                np.testing.assert_array_equal(a.read(), b.read(), strict=True)
                np.testing.assert_array_equal(a.read_masks(), b.read_masks(), strict=True)


# ---------------------------------------------------------------------- what GDAL and QGIS see
@pytest.mark.parametrize("cog", [False, True])
def test_class_map_names_its_classes_to_gdal_with_its_style_beside_it(
    source, tmp_path, tiny_description, cog
):
    from tests.gis_helpers import gdal_report

    paths = _paths(source, tmp_path / "maps", extras=False)
    info = inspect_raster(source, tiny_description)
    with OutputWriter(info, paths, tiny_description, block=16, cog=cog, overviews=True) as writer:
        writer.write(_chunk(tiny_description.num_classes))
    (band,) = gdal_report(paths.classes)
    assert band["categories"][1] == "building" and band["categories"][255] == "nodata"
    assert [c[0] for c in band["rat_columns"]] == ["value", "code", "name", "red", "green", "blue", "alpha"]
    assert band["rat_rows"][0] == ["1", "1", "building", "219", "14", "154", "255"]
    style = paths.classes.with_name("map.qml")
    assert 'label="building"' in style.read_text()
    with rasterio.open(paths.classes) as ds:
        assert ds.colormap(1)[1] == (219, 14, 154, 255) and ds.nodata == 255
        assert ds.tags()["CLASS_1"] == "building"


def test_qgis_loads_a_written_map_as_paletted_named_classes(source, tmp_path, tiny_description):
    from tests.gis_helpers import qgis_report

    paths = _paths(source, tmp_path, extras=False)
    with _writer(source, paths, tiny_description) as writer:
        writer.write(_chunk(tiny_description.num_classes))
    got = qgis_report(paths.classes)  # QGIS applies map.qml, the same-named style, by itself
    assert got["valid"] and got["renderer"] == "paletted" and got["nodata"] == 255
    assert got["classes"][:2] == [[1, "#db0e9a", 255, "building"], [2, "#938e7b", 255, "pervious surface"]]


def test_an_indices_map_names_its_0_based_values_to_gdal_and_qgis(source, tmp_path, tiny_description):
    from tests.gis_helpers import gdal_report, qgis_report

    paths = _paths(source, tmp_path, extras=False)
    info = inspect_raster(source, tiny_description)
    with OutputWriter(info, paths, tiny_description, indices=True, overviews=False, block=16) as writer:
        writer.write(_chunk(tiny_description.num_classes))
    (band,) = gdal_report(paths.classes)
    assert band["categories"][:2] == ["building", "pervious surface"] and band["categories"][255] == "nodata"
    assert band["rat_rows"][0] == ["0", "1", "building", "219", "14", "154", "255"]  # value 0, code 1
    got = qgis_report(paths.classes)
    assert got["renderer"] == "paletted" and got["classes"][0] == [0, "#db0e9a", 255, "building"]
    assert len(got["classes"]) == tiny_description.num_classes  # the style's palette, not the 256 entries
    assert [4, "#1553ae", 255, "water"] in got["classes"]


@pytest.mark.parametrize("cog", [False, True])
def test_gdal_reports_the_band_descriptions_of_probabilities_and_confidence(
    source, tmp_path, tiny_description, cog
):
    from tests.gis_helpers import gdal_report

    paths = _paths(source, tmp_path)
    info = inspect_raster(source, tiny_description)
    with OutputWriter(info, paths, tiny_description, block=16, cog=cog, overviews=False) as writer:
        writer.write(_chunk(tiny_description.num_classes))
    proba = [b["description"] for b in gdal_report(paths.probabilities)]
    assert len(proba) == tiny_description.num_classes
    assert proba[0] == "P(building) x 255 (code 1, index 0)"
    assert proba[4] == "P(water) x 255 (code 5, index 4)"
    assert [b["description"] for b in gdal_report(paths.confidence)] == ["confidence: P(chosen class) x 255"]


def _proba_descriptions(paths):
    with rasterio.open(paths.probabilities) as ds:
        return list(ds.descriptions)


def test_qgis_shows_probability_bands_by_class_and_both_maps_as_a_percent_ramp(
    source, tmp_path, tiny_description
):
    from tests.gis_helpers import qgis_report

    paths = _paths(source, tmp_path)
    with _writer(source, paths, tiny_description) as writer:
        writer.write(_chunk(tiny_description.num_classes))
    proba = qgis_report(paths.probabilities)
    k = tiny_description.num_classes
    assert proba["valid"]
    # QGIS names each band by its class (and adds the nodata mask as one more, alpha, band).
    assert proba["bands"][:k] == [f"Band {i + 1:02d}: {d}" for i, d in enumerate(_proba_descriptions(paths))]
    assert proba["bands"][4] == "Band 05: P(water) x 255 (code 5, index 4)"
    # Its style draws one class's band (not an RGB composite of three classes' probabilities).
    assert proba["renderer"] == "singlebandpseudocolor" and proba["classes"][-1][3] == "100 %"
    conf = qgis_report(paths.confidence)  # map_confidence.qml, applied by QGIS by itself
    assert conf["renderer"] == "singlebandpseudocolor"
    assert [c[0] for c in conf["classes"]] == [0, 64, 128, 191, 255]
    assert [c[3] for c in conf["classes"]] == ["0 %", "25 %", "50 %", "75 %", "100 %"]
    assert conf["classes"][0][1] == "#d7191c" and conf["classes"][-1][1] == "#1a9641"
    assert "confidence" in conf["bands"][0]


def test_overwrite_removes_stale_sidecars_of_every_replaced_output(source, tmp_path, tiny_description):
    paths = _paths(source, tmp_path)
    stale = [
        "map.tif.ovr",
        "map.tif.msk",
        "map_proba.tif.aux.xml",
        "map_proba.tif.ovr",
        "map_confidence.tif.msk",
    ]
    for p in paths.all():
        p.write_bytes(b"old map")
    for name in [*stale, "map.qml", "map.tif.aux.xml", "map_proba.qml", "map_confidence.qml"]:
        (tmp_path / name).write_text("of the old map")
    with _writer(source, paths, tiny_description) as writer:
        writer.write(_chunk(tiny_description.num_classes))
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([*_finished(paths), "ortho.tif"])
    assert "old map" not in (tmp_path / "map.qml").read_text()
    assert "old map" not in (tmp_path / "map.tif.aux.xml").read_text()
    for style in ("map_proba.qml", "map_confidence.qml"):
        assert "old map" not in (tmp_path / style).read_text()


def test_an_aborted_overwrite_leaves_the_old_map_and_its_sidecars(source, tmp_path, tiny_description):
    paths = _paths(source, tmp_path, extras=False)
    old = {"map.tif": "old map", "map.qml": "old style", "map.tif.aux.xml": "old pam"}
    for name, text in old.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(RuntimeError, match="interrupted"), _writer(source, paths, tiny_description) as w:
        w.write(_chunk(tiny_description.num_classes))
        raise RuntimeError("interrupted")
    assert {p.name: p.read_text() for p in tmp_path.iterdir() if p.name != "ortho.tif"} == old


def test_intermediate_maps_can_go_without_sidecars(source, tmp_path, tiny_description):
    paths = _paths(source, tmp_path / "chunks", extras=False)
    info = inspect_raster(source, tiny_description)
    with OutputWriter(info, paths, tiny_description, overviews=False, block=16, sidecars=False) as writer:
        writer.write(_chunk(tiny_description.num_classes))
    assert [p.name for p in paths.classes.parent.iterdir()] == ["map.tif"]
