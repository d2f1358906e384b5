"""Block-aligned strip reads: the same tiles as TileReader, every block decoded once, bounded memory."""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time
import tracemalloc
from contextlib import closing
from xml.sax.saxutils import escape

import numpy as np
import pytest
import rasterio

from flair_deploy.errors import ConfigError, InputDataError
from flair_deploy.inference import reading
from flair_deploy.inference.chunks import plan_chunks
from flair_deploy.inference.raster import TileReader, inspect_raster
from flair_deploy.inference.reading import (
    TileRead,
    read_chunk_tiles,
    read_dtype,
    reader_bytes,
    strip_rows_for_blocks,
)
from flair_deploy.inference.tiling import TilingPlan, make_grid

T = 64


def _info(path, description, **kw):
    return inspect_raster(path, description, allow_gsd_mismatch=True, **kw)


def _grids(info):
    return {
        "blend": make_grid(info.width, info.height, TilingPlan.blend(T, 16)),
        "crop": make_grid(info.width, info.height, TilingPlan.crop(T, 16)),
    }


def _assert_same_as_tile_reader(info, grid, *, pad_mode="reflect", chunk=64, **kw):
    """Every chunk of a small chunk plan (edge chunks included) and the one-chunk plan, tile by tile."""
    plans = [
        plan_chunks(grid, chunk_width=chunk, chunk_height=chunk, block=32),
        plan_chunks(grid, chunk_width=1024, chunk_height=1024, block=32),
    ]
    reader = TileReader(info, pad_mode=pad_mode)
    counts = {"read": 0, "skipped": 0, "masked": 0}
    try:
        for plan in plans:
            for c in plan:
                with closing(read_chunk_tiles(info, grid, c, pad_mode=pad_mode, **kw)) as reads:
                    got = list(reads)
                assert [r.tile for r in got] == list(c.tile_grid_tiles(grid))
                for r in got:
                    ref = reader.read(r.tile)
                    if ref is None:
                        assert r.skipped and r.data is None and r.valid is None
                        counts["skipped"] += 1
                        continue
                    assert r.data is not None and r.data.dtype == np.dtype(read_dtype(info))
                    assert r.data.shape == ref[0].shape
                    np.testing.assert_array_equal(r.data.astype(np.float32), ref[0], strict=True)
                    valid = np.ones((T, T), bool) if r.valid is None else r.valid
                    np.testing.assert_array_equal(valid, ref[1], strict=True)
                    counts["read"] += 1
                    counts["masked"] += r.valid is not None
    finally:
        reader.close()
    return counts


@pytest.fixture
def ortho(write_geotiff):
    data = np.random.default_rng(0).integers(1, 255, (5, 200, 232)).astype(np.uint8)
    return write_geotiff(data, tiled=True, blockxsize=32, blockysize=32, compress="deflate")


@pytest.mark.parametrize("mode", ["blend", "crop"])
@pytest.mark.parametrize("pad_mode", ["reflect", "constant"])
def test_tiles_equal_tile_reader_on_a_tiled_uint8_raster(ortho, tiny_description, mode, pad_mode):
    info = _info(ortho, tiny_description)
    counts = _assert_same_as_tile_reader(info, _grids(info)[mode], pad_mode=pad_mode)
    assert counts["read"] > 50 and counts["skipped"] == 0
    # Blend tiles never leave the raster: no mask at all; crop tiles at the edges are padded.
    assert (counts["masked"] == 0) == (mode == "blend")


def test_tiles_equal_tile_reader_with_nodata_on_a_striped_uint16_raster(write_geotiff, tiny_description):
    data = np.random.default_rng(1).integers(1, 4000, (5, 180, 150)).astype(np.uint16)
    data[:, :90, :80] = 0  # whole tiles of nodata: skipped
    data[:, 120:124, 100:130] = 0  # a nodata stripe inside tiles
    data[2, 150, 10] = 0  # one band only: still valid
    path = write_geotiff(data, nodata=0, tiled=False, compress="deflate")
    info = _info(path, tiny_description)
    assert not info.all_valid
    for mode, grid in _grids(info).items():
        counts = _assert_same_as_tile_reader(info, grid, pad_mode="reflect", chunk=96)
        assert counts["skipped"] > 0 and counts["masked"] > 0, mode


def test_tiles_equal_tile_reader_on_int16_with_reordered_bands(write_geotiff, tiny_description):
    data = np.random.default_rng(2).integers(-3000, 3000, (6, 130, 140)).astype(np.int16)
    path = write_geotiff(data, tiled=True, blockxsize=16, blockysize=16)
    info = _info(path, tiny_description, bands=[6, 2, 4, 1, 3])
    _assert_same_as_tile_reader(info, _grids(info)["crop"], pad_mode="constant")


@pytest.mark.parametrize("nodata", [None, float("nan")])
def test_non_finite_floats_are_invalid_and_zero(write_geotiff, tiny_description, nodata):
    rng = np.random.default_rng(3)
    data = rng.uniform(-5, 255, (5, 150, 170)).astype(np.float32)
    data[1, 10, 20] = np.nan
    data[0, 60, 61] = np.inf
    data[4, 99, 5] = -np.inf
    data[:, 86:, 106:] = np.nan  # a corner with no finite pixel: its tiles are skipped
    path = write_geotiff(data, nodata=nodata, tiled=True, blockxsize=32, blockysize=32)
    info = _info(path, tiny_description)
    for mode, grid in _grids(info).items():
        counts = _assert_same_as_tile_reader(info, grid)
        assert counts["skipped"] > 0 and counts["masked"] > 0, mode
    c = plan_chunks(_grids(info)["blend"], chunk_width=1024, chunk_height=1024, block=32).chunks[0]
    with closing(read_chunk_tiles(info, _grids(info)["blend"], c)) as reads:
        for r in reads:
            assert r.data is None or (r.data.dtype == np.float32 and np.isfinite(r.data).all())


def test_an_alpha_band_and_a_mask_band_are_validity(write_geotiff, tiny_description):
    rng = np.random.default_rng(4)
    data = rng.integers(1, 255, (5, 140, 120)).astype(np.uint8)
    alpha = np.full((140, 120), 255, np.uint8)
    alpha[30:70, 10:100] = 0
    alpha[76:, :] = 0  # the last tile row: skipped
    # GDAL's alpha is the last band of an RGBA raster: the model's five bands map onto R, G, B.
    rgba = np.concatenate([data[:3], alpha[None]])
    with_alpha = write_geotiff(
        rgba, "alpha.tif", photometric="RGB", alpha="YES", tiled=True, blockxsize=32, blockysize=32
    )
    with_mask = write_geotiff(data, "mask.tif", tiled=True, blockxsize=32, blockysize=32)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(with_mask, "r+") as ds:
        ds.write_mask(alpha)
    for path, bands in ((with_alpha, [1, 2, 3, 1, 2]), (with_mask, None)):
        info = _info(path, tiny_description, bands=bands)
        assert not info.all_valid, path.name
        counts = _assert_same_as_tile_reader(info, _grids(info)["blend"], chunk=32)
        assert counts["masked"] > 0 and counts["skipped"] > 0, path.name


@pytest.mark.parametrize("mode", ["blend", "crop"])
def test_a_raster_smaller_than_one_tile(write_geotiff, tiny_description, mode):
    data = np.random.default_rng(5).integers(0, 255, (5, 40, 50)).astype(np.uint8)
    info = _info(write_geotiff(data), tiny_description)
    for pad_mode in ("reflect", "constant"):
        counts = _assert_same_as_tile_reader(info, _grids(info)[mode], pad_mode=pad_mode)
        assert counts["read"] and counts["masked"] == counts["read"]


def test_a_vrt_mosaic(write_geotiff, tiny_description, tmp_path):
    rng = np.random.default_rng(6)
    left = write_geotiff(rng.integers(0, 255, (5, 120, 90)).astype(np.uint8), "left.tif")
    right = write_geotiff(rng.integers(0, 255, (5, 120, 80)).astype(np.uint8), "right.tif")
    with rasterio.open(left) as ds:
        geo, wkt = ", ".join(str(v) for v in ds.transform.to_gdal()), escape(ds.crs.to_wkt())
    bands = "".join(
        f'<VRTRasterBand dataType="Byte" band="{b}">'
        + "".join(
            f'<SimpleSource><SourceFilename relativeToVRT="0">{p}</SourceFilename><SourceBand>{b}</SourceBand>'
            f'<SrcRect xOff="0" yOff="0" xSize="{w}" ySize="120"/>'
            f'<DstRect xOff="{x}" yOff="0" xSize="{w}" ySize="120"/></SimpleSource>'
            for p, x, w in ((left, 0, 90), (right, 90, 80))
        )
        + "</VRTRasterBand>"
        for b in range(1, 6)
    )
    vrt = tmp_path / "mosaic.vrt"
    vrt.write_text(
        f'<VRTDataset rasterXSize="170" rasterYSize="120"><SRS>{wkt}</SRS>'
        f"<GeoTransform>{geo}</GeoTransform>{bands}</VRTDataset>"
    )
    info = _info(vrt, tiny_description)
    for grid in _grids(info).values():
        assert _assert_same_as_tile_reader(info, grid)["read"]


def test_strip_heights_follow_the_input_blocks():
    assert strip_rows_for_blocks(512) == 512
    assert strip_rows_for_blocks(256) == 256
    assert strip_rows_for_blocks(1) == 256  # striped files: groups of rows
    assert strip_rows_for_blocks(100) == 300  # whole blocks, at least 256 rows
    assert strip_rows_for_blocks(1024) == 1024
    assert strip_rows_for_blocks(20000) == 256  # one-strip files cannot be aligned to
    with pytest.raises(ValueError):
        strip_rows_for_blocks(0)


@pytest.fixture
def strips(monkeypatch):
    """Record every strip read: ``(row0, row1)`` in call order."""
    seen: list[tuple[int, int]] = []
    lock = threading.Lock()
    read = reading._read_strip

    def spy(src, info, box, r0, r1, dtype):
        with lock:
            seen.append((r0, r1))
        return read(src, info, box, r0, r1, dtype)

    monkeypatch.setattr(reading, "_read_strip", spy)
    return seen


def test_each_row_is_decoded_once_per_chunk_in_block_aligned_strips(
    write_geotiff, tiny_description, strips, monkeypatch
):
    monkeypatch.setattr(reading, "MIN_STRIP_ROWS", 64)  # 48-row blocks: 96-row strips
    data = np.random.default_rng(7).integers(0, 255, (5, 300, 100)).astype(np.uint8)
    path = write_geotiff(data, tiled=True, blockxsize=48, blockysize=48, compress="deflate")
    info = _info(path, tiny_description)
    grid = _grids(info)["blend"]
    for c in plan_chunks(grid, chunk_width=64, chunk_height=128, block=32):
        strips.clear()
        with closing(read_chunk_tiles(info, grid, c, threads=2, prefetch_rows=3)) as reads:
            assert sum(1 for _ in reads) == c.tiles
        rows = sorted(strips)
        assert rows[0][0] == c.read.row0 and rows[-1][1] == c.read.row1
        assert all(a[1] == b[0] for a, b in itertools.pairwise(rows))  # no row twice
        assert all(r0 % 96 == 0 for r0, _ in rows[1:])
        assert sum(r1 - r0 for r0, r1 in rows) == c.read.height


def test_reads_run_at_most_prefetch_rows_ahead(write_geotiff, tiny_description, strips, monkeypatch):
    monkeypatch.setattr(reading, "MIN_STRIP_ROWS", 16)
    data = np.random.default_rng(8).integers(0, 255, (5, 320, 64)).astype(np.uint8)
    path = write_geotiff(data, tiled=True, blockxsize=16, blockysize=16)
    info = _info(path, tiny_description)
    grid = _grids(info)["blend"]
    c = plan_chunks(grid, chunk_width=64, chunk_height=1024, block=32).chunks[0]
    with closing(read_chunk_tiles(info, grid, c, threads=2, prefetch_rows=2)) as reads:
        next(reads)
        time.sleep(0.2)  # give the threads every chance to run ahead
        # The first tile row (64 rows) needs 4 strips of 16 rows; 2 more may be read ahead.
        assert len(strips) <= 4 + 2
        assert sum(1 for _ in reads) == c.tiles - 1
    assert len(strips) == 320 // 16


def test_memory_is_bounded_by_reader_bytes_whatever_the_height(write_geotiff, tiny_description, monkeypatch):
    monkeypatch.setattr(reading, "MIN_STRIP_ROWS", 32)
    rng = np.random.default_rng(9)
    peaks, budgets = [], []
    for h in (256, 2048):
        data = rng.integers(0, 255, (5, h, 320)).astype(np.uint8)
        path = write_geotiff(data, f"tall{h}.tif", tiled=True, blockxsize=32, blockysize=32)
        info = _info(path, tiny_description)
        grid = _grids(info)["blend"]
        c = plan_chunks(grid, chunk_width=1024, chunk_height=2048, block=32).chunks[0]
        budgets.append(reader_bytes(info, c, T, prefetch_rows=2))
        tracemalloc.start()
        try:
            with closing(read_chunk_tiles(info, grid, c, prefetch_rows=2)) as reads:
                for _ in reads:
                    pass
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
    assert budgets[0] == budgets[1]
    # The arrays stay within reader_bytes; the slack is Python's own objects (handles, threads, futures).
    assert all(p <= b + 64 * 1024 for p, b in zip(peaks, budgets, strict=True)), (peaks, budgets)
    assert peaks[1] < data.nbytes / 4  # far from the tall raster's size


def test_reader_bytes_grows_with_the_chunk_width_and_the_masks(ortho, tiny_description):
    info = _info(ortho, tiny_description)
    grid = _grids(info)["blend"]
    narrow, wide = (
        plan_chunks(grid, chunk_width=w, chunk_height=1024, block=32).chunks[0] for w in (64, 1024)
    )
    assert reader_bytes(info, narrow, T, strip_rows=256) < reader_bytes(info, wide, T, strip_rows=256)
    masked = dataclasses.replace(info, all_valid=False)
    assert reader_bytes(masked, wide, T, strip_rows=256) > reader_bytes(info, wide, T, strip_rows=256)
    assert reader_bytes(info, wide, T, prefetch_rows=4) > reader_bytes(info, wide, T, prefetch_rows=2)


def test_closing_early_stops_the_threads_and_closes_the_handles(ortho, tiny_description, monkeypatch):
    opened = []
    real_open = rasterio.open

    def tracking_open(*args, **kwargs):
        ds = real_open(*args, **kwargs)
        opened.append(ds)
        return ds

    monkeypatch.setattr(reading.rasterio, "open", tracking_open)
    monkeypatch.setattr(reading, "MIN_STRIP_ROWS", 32)
    info = _info(ortho, tiny_description)
    grid = _grids(info)["blend"]
    c = plan_chunks(grid, chunk_width=1024, chunk_height=1024, block=32).chunks[0]
    with closing(read_chunk_tiles(info, grid, c, threads=2, prefetch_rows=4)) as reads:
        first = next(reads)
    assert isinstance(first, TileRead) and first.read_s > 0
    assert opened and all(ds.closed for ds in opened)
    assert not [t for t in threading.enumerate() if t.name.startswith("flair-strip-reader")]


def test_abort_stops_the_tiles(ortho, tiny_description):
    info = _info(ortho, tiny_description)
    grid = _grids(info)["blend"]
    c = plan_chunks(grid, chunk_width=1024, chunk_height=1024, block=32).chunks[0]
    abort = threading.Event()
    with closing(read_chunk_tiles(info, grid, c, abort=abort)) as reads:
        next(reads)
        abort.set()
        assert list(reads) == []


def test_timings_add_up_per_tile(ortho, tiny_description):
    info = _info(ortho, tiny_description)
    grid = _grids(info)["blend"]
    c = plan_chunks(grid, chunk_width=1024, chunk_height=1024, block=32).chunks[0]
    with closing(read_chunk_tiles(info, grid, c)) as reads:
        got = list(reads)
    assert all(r.read_s >= 0 and r.prep_s >= 0 for r in got)
    assert sum(r.read_s for r in got) > 0
    # Tiles are read-only: most are views of a band their neighbours share.
    assert all(r.data is not None and not r.data.flags.writeable for r in got)


def test_an_unreadable_strip_is_one_line_naming_the_file_and_window(write_geotiff, tiny_description):
    data = np.random.default_rng(10).integers(0, 255, (5, 128, 128)).astype(np.uint8)
    src = write_geotiff(data, "ortho.tif", tiled=True, blockxsize=32, blockysize=32, compress="deflate")
    raw = bytearray(src.read_bytes())
    for i in range(len(raw) - 4000, len(raw) - 100):
        raw[i] = (raw[i] * 7 + 13) % 256
    src.write_bytes(bytes(raw))
    info = _info(src, tiny_description)
    grid = _grids(info)["blend"]
    c = plan_chunks(grid, chunk_width=1024, chunk_height=1024, block=32).chunks[0]
    with pytest.raises(InputDataError) as caught, closing(read_chunk_tiles(info, grid, c)) as reads:
        list(reads)
    msg = str(caught.value)
    assert "ortho.tif" in msg and "window col 0, row" in msg and "\n" not in msg


def test_bad_arguments_are_refused_on_the_call(ortho, tiny_description):
    info = _info(ortho, tiny_description)
    grid = _grids(info)["blend"]
    c = plan_chunks(grid, chunk_width=1024, chunk_height=1024, block=32).chunks[0]
    with pytest.raises(ConfigError, match="threads is 0"):
        read_chunk_tiles(info, grid, c, threads=0)
    with pytest.raises(ConfigError, match="prefetch_rows is -1"):
        read_chunk_tiles(info, grid, c, prefetch_rows=-1)
