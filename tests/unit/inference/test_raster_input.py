"""Engine bad input: non-finite pixels, unreadable windows, non-raster output names, oversized tiles."""

import numpy as np
import pytest
import rasterio

from flair_deploy.errors import ConfigError, InputDataError
from flair_deploy.inference import DetectConfig, run_detection
from flair_deploy.inference.raster import plan_outputs


@pytest.fixture
def backend(tiny_description):
    from tests.fakes import ContextBackend

    return ContextBackend(tiny_description)


def _detect(backend, src, out, **kw):
    cfg = DetectConfig(inputs=(src,), output=out, overviews=False, block_size=32, **kw)
    with backend:
        return run_detection(backend, cfg)


@pytest.mark.parametrize("nodata", [None, float("nan")])
def test_nan_and_inf_pixels_are_nodata_and_never_reach_the_network(
    write_geotiff, tmp_path, backend, nodata, tiny_description
):
    rng = np.random.default_rng(0)
    data = rng.uniform(0, 255, (5, 96, 96)).astype(np.float32)
    clean = write_geotiff(data.copy(), "clean.tif")
    data[2, 10, 20] = np.nan
    data[0, 50, 60] = np.inf
    data[4, 70, 5] = -np.inf
    dirty = write_geotiff(data, "dirty.tif", nodata=nodata)
    seen = []
    infer = backend._infer

    def spy(images, metadata):
        seen.append(bool(np.isfinite(images).all()))
        return infer(images, metadata)

    backend._infer = spy
    _detect(backend, clean, tmp_path / "clean_map.tif", allow_gsd_mismatch=True)
    _detect(backend, dirty, tmp_path / "dirty_map.tif", allow_gsd_mismatch=True)
    assert seen and all(seen)
    with rasterio.open(tmp_path / "clean_map.tif") as a, rasterio.open(tmp_path / "dirty_map.tif") as b:
        ref, got = a.read(1), b.read(1)
    bad = np.zeros(ref.shape, bool)
    bad[10, 20] = bad[50, 60] = bad[70, 5] = True
    assert (got[bad] == tiny_description.nodata).all()
    # Away from the bad pixels the maps agree except where the zeroed pixel is in the model's context.
    far = ~np.pad(bad, 3)[3:-3, 3:-3]
    for dy in range(-3, 4):
        for dx in range(-3, 4):
            far &= ~np.roll(np.roll(bad, dy, 0), dx, 1)
    assert (got[far] == ref[far]).mean() > 0.99


def test_an_unreadable_window_is_one_line_and_leaves_no_output(write_geotiff, tmp_path, backend):
    data = np.random.default_rng(1).integers(0, 255, (5, 128, 128)).astype(np.uint8)
    src = write_geotiff(data, "ortho.tif", tiled=True, blockxsize=32, blockysize=32, compress="deflate")
    raw = bytearray(src.read_bytes())
    # Garble the compressed blocks near the end of the file (the header stays readable).
    for i in range(len(raw) - 4000, len(raw) - 100):
        raw[i] = (raw[i] * 7 + 13) % 256
    src.write_bytes(bytes(raw))
    out = tmp_path / "map.tif"
    with pytest.raises(InputDataError) as info:
        _detect(backend, src, out)
    msg = str(info.value)
    assert "ortho.tif" in msg and "window col" in msg and "\n" not in msg
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".map.tif")]


def _vrt_xml(sources, width, height, transform, crs_wkt, bands=5):
    geo = ", ".join(str(v) for v in transform.to_gdal())
    band_xml = []
    for b in range(1, bands + 1):
        srcs = "".join(
            f'<SimpleSource><SourceFilename relativeToVRT="0">{path}</SourceFilename>'
            f"<SourceBand>{b}</SourceBand>"
            f'<SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>'
            f'<DstRect xOff="{x}" yOff="0" xSize="{w}" ySize="{h}"/></SimpleSource>'
            for path, x, w, h in sources
        )
        band_xml.append(f'<VRTRasterBand dataType="Byte" band="{b}">{srcs}</VRTRasterBand>')
    return (
        f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}"><SRS>{crs_wkt}</SRS>'
        f"<GeoTransform>{geo}</GeoTransform>{''.join(band_xml)}</VRTDataset>"
    )


def test_a_vrt_with_a_missing_source_is_one_line(write_geotiff, tmp_path, backend):
    from xml.sax.saxutils import escape

    data = np.random.default_rng(2).integers(0, 255, (5, 64, 64)).astype(np.uint8)
    part = write_geotiff(data, "part.tif")
    with rasterio.open(part) as ds:
        transform, wkt = ds.transform, escape(ds.crs.to_wkt())
    vrt = tmp_path / "mosaic.vrt"
    vrt.write_text(
        _vrt_xml([(part, 0, 64, 64), (tmp_path / "gone.tif", 64, 64, 64)], 128, 64, transform, wkt)
    )
    out = tmp_path / "map.tif"
    with pytest.raises(InputDataError) as info:
        _detect(backend, vrt, out)
    msg = str(info.value)
    assert "mosaic.vrt" in msg and "window col" in msg and "\n" not in msg
    assert not out.exists()


def test_a_non_raster_output_name_is_refused_not_made_a_folder(tmp_path):
    src = tmp_path / "ortho.tif"
    with pytest.raises(ConfigError, match="class maps are GeoTIFFs"):
        plan_outputs([src], tmp_path / "map.png")
    assert not (tmp_path / "map.png").exists()
    (tmp_path / "maps.d").mkdir()
    assert plan_outputs([src], tmp_path / "maps.d")[0].classes == tmp_path / "maps.d" / "ortho_classes.tif"


def test_a_tile_that_cannot_fit_memory_is_refused_up_front(write_geotiff, tmp_path, backend):
    data = np.random.default_rng(3).integers(0, 255, (5, 64, 64)).astype(np.uint8)
    src = write_geotiff(data, "ortho.tif")
    with pytest.raises(ConfigError, match=r"--tile 100032 .* GiB .* available"):
        _detect(backend, src, tmp_path / "map.tif", tile_size=100032)
    assert [p.name for p in tmp_path.iterdir()] == ["ortho.tif"]
