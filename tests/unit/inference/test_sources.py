"""Assembling a model's bands from BD ORTHO products (RVB, IRC, elevation) as a VRT, and tile matching."""

import functools
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.enums import Resampling
from rasterio.transform import from_origin
from rasterio.warp import reproject

from flair_deploy.errors import ConfigError, InputDataError, OutputError
from flair_deploy.inference.sources import (
    FLAIR_ELEVATION_SCALE,
    BandSource,
    assemble_bands,
    bd_ortho_sources,
    match_tiles,
    tile_key,
)
from tests.gis_helpers import write_raster

ORTHOS = Path(__file__).resolve().parents[4] / "shared" / "data" / "orthos"
CIR_PATCH = ORTHOS / "Betula_spec._1_15679_WEFL_NLF.tif"
# The reference tile: 64 x 48 px at 0.2 m over Paris, Lambert-93.
X0, Y0, RES, W, H = 650000.0, 6865000.0, 0.2, 64, 48


_write = functools.partial(write_raster, origin=(X0, Y0), res=RES)


@pytest.fixture
def products(tmp_path):
    """RVB and IRC (NIR first) on the reference grid, and a coarser, slightly larger float32 height model."""
    rng = np.random.default_rng(0)
    rvb = rng.integers(1, 256, (3, H, W), dtype=np.uint8)
    irc = rng.integers(1, 256, (3, H, W), dtype=np.uint8)
    # 1 m pixels starting 2 m outside the tile on the west and north; heights in metres, some above 51 m
    # and below 0 so clipping to 0..255 is exercised.
    dem = rng.uniform(-5.0, 60.0, (14, 17)).astype(np.float32)
    return {
        "rvb": _write(tmp_path / "D075-2021-0650-6865-LA93-0M20-RVB-E080.tif", rvb),
        "irc": _write(tmp_path / "D075-2021-0650-6865-LA93-0M20-IRC-E080.tif", irc),
        "dem": _write(tmp_path / "height.tif", dem, origin=(X0 - 2.0, Y0 + 2.0), res=1.0),
        "arrays": (rvb, irc, dem),
    }


def _expected_elevation(dem_path: Path, scale: float, offset: float, *, crs="EPSG:2154") -> np.ndarray:
    """The independent reference: rasterio.warp.reproject onto the tile grid, scaled, rounded, clipped."""
    warped = np.zeros((H, W), np.float32)
    with rasterio.open(dem_path) as src:
        reproject(
            rasterio.band(src, 1),
            warped,
            dst_transform=from_origin(X0, Y0, RES, RES),
            dst_crs=crs,
            resampling=Resampling.bilinear,
        )
    return np.clip(np.floor(warped.astype(np.float64) * scale + offset + 0.5), 0, 255).astype(np.uint8)


def test_vrt_holds_rgb_from_rvb_nir_from_irc_and_the_scaled_warped_height(products, tmp_path):
    rvb, irc, _ = products["arrays"]
    sources = bd_ortho_sources(products["rvb"], products["irc"], products["dem"], elevation_offset=3.0)
    vrt = assemble_bands(sources, tmp_path / "tile.vrt")
    with rasterio.open(vrt) as ds:
        assert (ds.count, ds.width, ds.height, ds.dtypes) == (5, W, H, ("uint8",) * 5)
        assert ds.transform == from_origin(X0, Y0, RES, RES)
        assert ds.crs.to_epsg() == 2154
        got = ds.read()
    np.testing.assert_array_equal(got[:3], rvb)  # R, G, B pixel-exact
    np.testing.assert_array_equal(got[3], irc[0])  # NIR is IRC band 1
    expected = _expected_elevation(products["dem"], FLAIR_ELEVATION_SCALE, 3.0)
    np.testing.assert_array_equal(got[4], expected)
    assert {0, 255} <= set(np.unique(got[4]).tolist())  # clipped at both ends
    # The warped height lives next to the VRT under a name detect's folder listing does not take.
    assert (tmp_path / "tile.vrt.band5.warp.xml").is_file()
    assert not list(tmp_path.glob("*.band[1-4].warp.xml"))


def test_aligned_larger_source_is_read_through_a_window_not_warped(products, tmp_path):
    rvb, _, _ = products["arrays"]
    big = np.zeros((1, H + 20, W + 30), np.uint8)
    big[0, 7 : 7 + H, 5 : 5 + W] = rvb[1]
    wide = _write(tmp_path / "wide.tif", big, origin=(X0 - 5 * RES, Y0 + 7 * RES))
    vrt = assemble_bands([BandSource(products["rvb"], 1), BandSource(wide, 1)], tmp_path / "w.vrt")
    with rasterio.open(vrt) as ds:
        np.testing.assert_array_equal(ds.read(2), rvb[1])
    assert not list(tmp_path.glob("*.warp.xml"))


def test_imagery_on_another_grid_defaults_to_nearest(products, tmp_path):
    rvb, _, _ = products["arrays"]
    # Half-resolution imagery, 0.4 m: nearest repeats each pixel twice in both directions.
    coarse = rvb[:1, ::2, ::2].copy()
    path = _write(tmp_path / "coarse.tif", coarse, res=0.4)
    vrt = assemble_bands([BandSource(products["rvb"], 1), BandSource(path, 1)], tmp_path / "c.vrt")
    with rasterio.open(vrt) as ds:
        np.testing.assert_array_equal(ds.read(2), np.repeat(np.repeat(coarse[0], 2, 0), 2, 1))


def test_another_crs_is_refused_unless_reproject_then_warped(products, tmp_path):
    from rasterio.warp import transform

    # A height model in UTM 31N covering the tile with a margin.
    xs, ys = transform("EPSG:2154", "EPSG:32631", [X0 - 10, X0 + 30], [Y0 + 10, Y0 - 30])
    dem = np.random.default_rng(1).uniform(0, 40, (60, 60)).astype(np.float32)
    utm = _write(tmp_path / "utm.tif", dem, origin=(min(xs), max(ys)), res=1.0, crs="EPSG:32631")
    sources = [BandSource(products["rvb"], 1), BandSource.elevation(utm)]
    with pytest.raises(
        InputDataError, match=r"EPSG:32631.*EPSG:2154; pass --reproject \(reproject=True\)"
    ) as err:
        assemble_bands(sources, tmp_path / "u.vrt")
    assert "\n" not in str(err.value)
    vrt = assemble_bands(sources, tmp_path / "u.vrt", reproject=True)
    with rasterio.open(vrt) as ds:
        got = ds.read(2)
    np.testing.assert_array_equal(got, _expected_elevation(utm, FLAIR_ELEVATION_SCALE, 0.0))


def test_reference_nodata_is_kept_and_source_nodata_left_unwritten(tmp_path):
    rvb = np.full((3, H, W), 100, np.uint8)
    rvb[:, :4, :] = 0
    ref = _write(tmp_path / "rvb.tif", rvb, nodata=0)
    dem = np.full((H, W), 10.0, np.float32)
    dem[10, 10] = -99999.0
    dem[:2] = -99999.0  # nodata in every source on rows 0-1, in the imagery only on rows 2-3
    height = _write(tmp_path / "h.tif", dem, nodata=-99999.0)
    vrt = assemble_bands(
        [*(BandSource(ref, b) for b in (1, 2, 3)), BandSource.elevation(height)], tmp_path / "n.vrt"
    )
    with rasterio.open(vrt) as ds:
        assert ds.nodatavals == (0.0,) * 4
        e = ds.read(4)
        mask = ds.dataset_mask()
    assert e[10, 10] == 0 and e[20, 20] == 50
    # GDAL's rule, which detect follows: a pixel is nodata when every band is.
    assert not mask[:2].any() and mask[2:].all()


def test_uncovered_extent_is_one_line_saying_by_how_much(products, tmp_path):
    small = _write(tmp_path / "small.tif", np.ones((5, 10), np.float32), origin=(X0 + 1.5, Y0), res=1.0)
    with pytest.raises(
        InputDataError,
        match=r"small.tif does not cover .*short by 1.5 m west, 4.6 m south, 1.3 m east \(source bounds",
    ) as err:
        assemble_bands([BandSource(products["rvb"], 1), BandSource.elevation(small)], tmp_path / "s.vrt")
    assert "\n" not in str(err.value)


def test_refusals_are_one_line(products, tmp_path, tiny_description):
    rvb = products["rvb"]
    cases = [
        (
            InputDataError,
            "band 4 of .*RVB-E080.tif, which has bands 1..3",
            [BandSource(rvb, 4)],
            {"model": None},
        ),
        (
            InputDataError,
            "missing.tif does not exist",
            [BandSource(rvb, 1), BandSource(tmp_path / "missing.tif")],
            {},
        ),
        (
            ConfigError,
            "got 4 band source.*'tiny' takes 5 \\(R, G, B, NIR, E\\)",
            bd_ortho_sources(rvb, rvb),
            {"model": tiny_description},
        ),
        (ConfigError, "got no band source", [], {"model": None}),
    ]
    for error, pattern, sources, kw in cases:
        with pytest.raises(error, match=pattern) as err:
            assemble_bands(sources, tmp_path / "r.vrt", **kw)
        assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="resampling 'bicubic'; expected one of nearest"):
        BandSource(rvb, 1, resampling="bicubic")
    with pytest.raises(ConfigError, match="band 0; expected a 1-based"):
        BandSource(rvb, 0)
    assemble_bands([BandSource(rvb, 1)], tmp_path / "r.vrt")
    with pytest.raises(OutputError, match="exists"):
        assemble_bands([BandSource(rvb, 1)], tmp_path / "r.vrt")
    assemble_bands([BandSource(rvb, 1)], tmp_path / "r.vrt", overwrite=True)


def test_vrt_passes_detect_input_checks(products, tmp_path, tiny_description):
    from flair_deploy.inference.raster import inspect_raster

    vrt = assemble_bands(
        bd_ortho_sources(products["rvb"], products["irc"], products["dem"]), tmp_path / "t.vrt"
    )
    info = inspect_raster(vrt, tiny_description)
    assert (info.width, info.height, info.bands, info.dtype) == (W, H, (1, 2, 3, 4, 5), "uint8")


def _jp2_available() -> bool:
    from rasterio.drivers import raster_driver_extensions

    return raster_driver_extensions().get("jp2") == "JP2OpenJPEG"


@pytest.mark.skipif(
    not _jp2_available(), reason="this GDAL has no JP2OpenJPEG driver to read BD ORTHO .jp2 tiles"
)
def test_jpeg2000_rvb_source(products, tmp_path):
    rvb, irc, _ = products["arrays"]
    jp2 = _write(
        tmp_path / "D075-2021-0650-6865-LA93-0M20-RVB-E080.jp2",
        rvb,
        driver="JP2OpenJPEG",
        REVERSIBLE="YES",
        QUALITY=100,
    )
    vrt = assemble_bands(bd_ortho_sources(jp2, products["irc"]), tmp_path / "j.vrt")
    with rasterio.open(vrt) as ds:
        got = ds.read()
    np.testing.assert_array_equal(got[:3], rvb)  # lossless JPEG 2000
    np.testing.assert_array_equal(got[3], irc[0])


@pytest.mark.skipif(
    not CIR_PATCH.is_file(), reason=f"real sample {CIR_PATCH.name} is absent (see ../shared/data)"
)
def test_real_colour_infrared_patch_reordered_to_flair_bands(tmp_path):
    # TreeSatAI's CIR patch holds NIR, G, B, R: R, G, B, NIR are its bands 4, 2, 3, 1.
    with rasterio.open(CIR_PATCH) as src:
        data, crs, (left, top) = src.read(), src.crs, (src.bounds.left, src.bounds.top)
    dem = np.linspace(0.0, 30.0, 40 * 40, dtype=np.float32).reshape(40, 40)
    height = _write(tmp_path / "h.tif", dem, origin=(left - 1.0, top + 1.0), res=2.0, crs=crs)
    sources = [*(BandSource(CIR_PATCH, b) for b in (4, 2, 3, 1)), BandSource.elevation(height)]
    vrt = assemble_bands(sources, tmp_path / "cir.vrt")
    with rasterio.open(vrt) as ds:
        got = ds.read()
    np.testing.assert_array_equal(got[:4], data[[3, 1, 2, 0]])
    assert got[4].max() > got[4].min()


def _touch(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")


def test_tile_key_reads_the_kilometre_corner_of_ign_names():
    assert tile_key("D075-2021-0650-6865-LA93-0M20-RVB-E080.jp2") == (650, 6865)
    assert tile_key("D075-2021-0650-6865-LA93-0M20-IRC-E080.jp2") == (650, 6865)
    assert tile_key("75-2021-0655-6860-LA93-0M20-E080.jp2") == (655, 6860)
    assert tile_key("RGEALTI_FXX_0650_6865_MNT_LAMB93_IGN69.asc") == (650, 6865)
    assert tile_key("ortho.tif") is None


def test_match_tiles_pairs_products_by_corner(tmp_path):
    corners = [(650, 6865), (655, 6865), (650, 6860)]
    _touch(tmp_path / "rvb", *(f"D075-2021-{x:04d}-{y:04d}-LA93-0M20-RVB-E080.jp2" for x, y in corners))
    _touch(tmp_path / "irc", *(f"D075-2021-{x:04d}-{y:04d}-LA93-0M20-IRC-E080.jp2" for x, y in corners))
    _touch(
        tmp_path / "dem",
        *(f"RGEALTI_FXX_{x:04d}_{y:04d}_MNT_LAMB93_IGN69.asc" for x, y in corners),
        "README.txt",
    )
    tiles = match_tiles(tmp_path / "rvb", tmp_path / "irc", tmp_path / "dem")
    assert [t.key for t in tiles] == sorted(corners)
    first = tiles[0]
    assert first.rvb.name == "D075-2021-0650-6860-LA93-0M20-RVB-E080.jp2"
    assert first.irc.name == "D075-2021-0650-6860-LA93-0M20-IRC-E080.jp2"
    assert first.dem is not None and first.dem.name == "RGEALTI_FXX_0650_6860_MNT_LAMB93_IGN69.asc"
    assert all(t.dem is None for t in match_tiles(tmp_path / "rvb", tmp_path / "irc"))


def test_match_tiles_refuses_unmatched_and_unnamed_tiles(tmp_path):
    _touch(tmp_path / "rvb", *(f"D075-2021-{x:04d}-6865-LA93-0M20-RVB-E080.jp2" for x in range(640, 665, 5)))
    _touch(tmp_path / "irc", "D075-2021-0650-6865-LA93-0M20-IRC-E080.jp2")
    with pytest.raises(
        InputDataError, match=r"IRC lacks 4 \(0640-6865, 0645-6865, 0655-6865 and 1 more\)"
    ) as err:
        match_tiles(tmp_path / "rvb", tmp_path / "irc")
    assert "\n" not in str(err.value)
    _touch(tmp_path / "irc", "mosaic.tif")
    with pytest.raises(InputDataError, match=r"without an IGN tile corner in their name \(mosaic.tif\)"):
        match_tiles(tmp_path / "rvb", tmp_path / "irc")
    with pytest.raises(InputDataError, match="is not a folder"):
        match_tiles(tmp_path / "rvb", tmp_path / "nowhere")


def test_detect_maps_the_assembled_vrt(products, tmp_path, tiny_description):
    from flair_deploy.inference import DetectConfig, run_detection
    from tests.fakes import ContextBackend

    vrt = assemble_bands(
        bd_ortho_sources(products["rvb"], products["irc"], products["dem"]), tmp_path / "t.vrt"
    )
    out = tmp_path / "map.tif"
    with ContextBackend(tiny_description) as backend:
        run_detection(backend, DetectConfig(inputs=(vrt,), output=out, overviews=False, block_size=32))
    with rasterio.open(out) as ds:
        assert (ds.width, ds.height, ds.transform) == (W, H, from_origin(X0, Y0, RES, RES))


def test_band_spec_reads_path_band_scale_and_offset():
    from flair_deploy.inference.sources import parse_band_spec

    assert parse_band_spec("rvb.jp2:3") == BandSource(Path("rvb.jp2"), 3)
    assert parse_band_spec("h.tif*5") == BandSource(Path("h.tif"), 1, 5.0)
    assert parse_band_spec("h.tif:1*5-10") == BandSource(Path("h.tif"), 1, 5.0, -10.0)
    assert parse_band_spec("h.tif*0.05+2.5e1") == BandSource(Path("h.tif"), 1, 0.05, 25.0)
    assert parse_band_spec("C:/data/ortho.tif:2") == BandSource(Path("C:/data/ortho.tif"), 2)
    with pytest.raises(ConfigError, match="1-based band number"):
        parse_band_spec("rvb.jp2:0")


def test_plan_band_inputs_pairs_folders_and_shares_one_elevation_mosaic(tmp_path):
    from flair_deploy.inference.sources import plan_band_inputs

    corners = [(650, 6865), (655, 6865)]
    _touch(tmp_path / "rvb", *(f"D075-2021-{x:04d}-{y:04d}-LA93-0M20-RVB-E080.jp2" for x, y in corners))
    _touch(tmp_path / "irc", *(f"D075-2021-{x:04d}-{y:04d}-LA93-0M20-IRC-E080.jp2" for x, y in corners))
    _touch(tmp_path, "heights.vrt")
    plan = plan_band_inputs(
        rvb=tmp_path / "rvb", irc=tmp_path / "irc", elevation=tmp_path / "heights.vrt", elevation_scale=2.0
    )
    assert [p.name for p in plan] == [
        "D075-2021-0650-6865-LA93-0M20-RVB-E080",
        "D075-2021-0655-6865-LA93-0M20-RVB-E080",
    ]
    first = plan[0].sources
    assert [(s.path.parent.name, s.band) for s in first[:4]] == [
        ("rvb", 1),
        ("rvb", 2),
        ("rvb", 3),
        ("irc", 1),
    ]
    assert first[4] == BandSource(tmp_path / "heights.vrt", 1, 2.0, 0.0, "bilinear")
    with pytest.raises(ConfigError, match="either --band"):
        plan_band_inputs(rvb=tmp_path / "rvb", irc=tmp_path / "irc", bands=["a.tif"])


def test_assembled_inputs_leave_nothing_behind_even_on_failure(products, tmp_path):
    from flair_deploy.inference.sources import BandInput, assembled_inputs

    good = BandInput("t", bd_ortho_sources(products["rvb"], products["irc"], products["dem"]))
    beside = tmp_path / "new" / "deeper" / "map.tif"
    with assembled_inputs([good], beside) as vrts:
        assert vrts[0].name == "t.vrt" and vrts[0].parent.name.startswith(".map.tif.bands.")
        assert len(list(vrts[0].parent.iterdir())) == 2  # the VRT and the warp of the height model
    assert not (tmp_path / "new").exists()
    bad = BandInput("u", (BandSource(products["rvb"], 1), BandSource(products["rvb"], 9)))
    with pytest.raises(InputDataError, match="band 9"), assembled_inputs([good, bad], beside):
        pass
    assert not (tmp_path / "new").exists()
    with pytest.raises(RuntimeError), assembled_inputs([good], beside):
        raise RuntimeError("detect failed")
    assert not (tmp_path / "new").exists()


def test_find_partner_by_corner_then_by_name(tmp_path):
    from flair_deploy.inference.sources import find_partner

    _touch(tmp_path / "irc", "D075-2021-0650-6865-LA93-0M20-IRC-E080.jp2", "IMG_7_IRC.tif", "notes.txt")
    rvb = tmp_path / "D075-2021-0650-6865-LA93-0M20-RVB-E080.jp2"
    assert find_partner(rvb, tmp_path / "irc", "IRC").name == "D075-2021-0650-6865-LA93-0M20-IRC-E080.jp2"
    assert find_partner(tmp_path / "IMG_7_RVB.tif", tmp_path / "irc", "IRC").name == "IMG_7_IRC.tif"
    assert find_partner(rvb, tmp_path / "irc" / "IMG_7_IRC.tif", "elevation").name == "IMG_7_IRC.tif"
    with pytest.raises(InputDataError, match="has no tile at 0655-6865"):
        find_partner(tmp_path / "D075-2021-0655-6865-LA93-0M20-RVB-E080.jp2", tmp_path / "irc", "IRC")
    with pytest.raises(InputDataError, match=r"holds no raster named like IMG_8_RVB\.tif"):
        find_partner(tmp_path / "IMG_8_RVB.tif", tmp_path / "irc", "IRC")
