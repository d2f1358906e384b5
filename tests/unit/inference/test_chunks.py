import json
import pickle

import numpy as np
import pytest

from flair_deploy.errors import ConfigError
from flair_deploy.inference.chunks import (
    Chunk,
    chunk_bytes,
    chunk_width_for_budget,
    plan_chunks,
)
from flair_deploy.inference.stitching import blend_window
from flair_deploy.inference.tiling import TilingPlan, make_grid


def _grid(mode="blend", w=1000, h=700, tile=128, overlap=32, margin=32):
    plan = TilingPlan.blend(tile, overlap) if mode == "blend" else TilingPlan.crop(tile, margin)
    return make_grid(w, h, plan)


@pytest.mark.parametrize("mode", ["blend", "crop"])
def test_chunks_partition_the_raster_on_block_edges(mode):
    grid = _grid(mode)
    plan = plan_chunks(grid, chunk_width=256, chunk_height=192, block=64)
    cover = np.zeros((grid.height, grid.width), dtype=int)
    for c in plan:
        o = c.output
        cover[o.row0 : o.row1, o.col0 : o.col1] += 1
        assert o.row0 % 64 == 0 and o.col0 % 64 == 0
        assert (o.row1 % 64 == 0 or o.row1 == grid.height) and (o.col1 % 64 == 0 or o.col1 == grid.width)
    assert (cover == 1).all()
    assert [c.index for c in plan] == list(range(len(plan)))


@pytest.mark.parametrize("mode", ["blend", "crop"])
def test_chunk_tiles_are_exactly_those_keeping_its_pixels(mode):
    grid = _grid(mode)
    plan = plan_chunks(grid, chunk_width=320, chunk_height=256, block=64)
    for c in plan:
        o = c.output
        want = {
            t.index
            for t in grid
            if t.row.keep_start < o.row1
            and t.row.keep_stop > o.row0
            and t.col.keep_start < o.col1
            and t.col.keep_stop > o.col0
        }
        got = [t.index for t in c.tile_grid_tiles(grid)]
        assert got == sorted(want)  # row-major, global indices
        windows = [t.read_window(grid.width, grid.height) for t in c.tile_grid_tiles(grid)]
        assert c.read.col0 == min(w[0] for w in windows) and c.read.row0 == min(w[1] for w in windows)
        assert c.read.col1 == max(w[0] + w[2] for w in windows)
        assert c.read.row1 == max(w[1] + w[3] for w in windows)
        assert c.read.row0 <= o.row0 and c.read.row1 >= o.row1  # the halo contains the chunk


def test_single_chunk_has_no_overhead_and_boundaries_cost_tiles():
    grid = _grid()
    whole = plan_chunks(grid, chunk_width=1024, chunk_height=1024, block=64)
    assert len(whole) == 1 and whole.tiles == len(grid) and whole.overhead == 0.0
    split = plan_chunks(grid, chunk_width=512, chunk_height=1024, block=64)
    assert len(split) == 2 and split.tiles > len(grid) and split.overhead > 0


def test_chunk_is_a_plain_value():
    plan = plan_chunks(_grid(), chunk_width=256, chunk_height=256, block=64)
    c = plan.chunks[3]
    assert pickle.loads(pickle.dumps(c)) == c
    assert Chunk.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    assert c.id == f"r{c.chunk_row:04d}c{c.chunk_col:04d}"


def test_chunk_size_must_follow_blocks():
    with pytest.raises(ConfigError, match="multiple of the output block size 64"):
        plan_chunks(_grid(), chunk_width=100, chunk_height=128, block=64)


def test_budget_gives_block_multiples_and_refuses_too_small():
    kw = {
        "width": 100_000,
        "tile": 512,
        "active_classes": 15,
        "num_classes": 19,
        "mode": "blend",
        "block": 256,
    }
    w = chunk_width_for_budget(256 * 2**20, **kw)
    assert w % 256 == 0 and chunk_bytes(w, **{k: v for k, v in kw.items() if k != "width"}) <= 256 * 2**20
    assert chunk_width_for_budget(2**40, **kw) == 100_096  # never wider than the raster (rounded to blocks)
    with pytest.raises(ConfigError, match="cannot hold one 256-px-wide chunk"):
        chunk_width_for_budget(2**20, **kw)


def _reference_blend(grid, probs_of, overlap, border, box, tiles):
    """Sum of w·p over the given tiles, in their order, restricted to *box* (float32, like the stitcher)."""
    k = 3
    acc = np.zeros((k, box.height, box.width), np.float32)
    wsum = np.zeros((box.height, box.width), np.float32)
    for t in tiles:
        wr = blend_window(t.size, overlap, border, inner_start=t.row.inner_start, inner_stop=t.row.inner_stop)
        wc = blend_window(t.size, overlap, border, inner_start=t.col.inner_start, inner_stop=t.col.inner_stop)
        w = np.outer(wr, wc)
        p = probs_of(t)
        r0, r1 = max(t.row.start, box.row0), min(t.row.start + t.size, box.row1)
        c0, c1 = max(t.col.start, box.col0), min(t.col.start + t.size, box.col1)
        if r0 >= r1 or c0 >= c1:
            continue
        tr, tc = slice(r0 - t.row.start, r1 - t.row.start), slice(c0 - t.col.start, c1 - t.col.start)
        br, bc = slice(r0 - box.row0, r1 - box.row0), slice(c0 - box.col0, c1 - box.col0)
        acc[:, br, bc] += p[:, tr, tc] * w[tr, tc]
        wsum[br, bc] += w[tr, tc]
    return acc, wsum


def test_blend_does_not_depend_on_the_chunking():
    grid = _grid(w=700, h=520, tile=128, overlap=48)
    rng = np.random.default_rng(0)
    cache = {}

    def probs_of(t):
        if t.index not in cache:
            cache[t.index] = rng.random((3, t.size, t.size), dtype=np.float32)
        return cache[t.index]

    full = plan_chunks(grid, chunk_width=768, chunk_height=576, block=64).chunks[0]
    acc_all, w_all = _reference_blend(grid, probs_of, 48, 6, full.output, list(full.tile_grid_tiles(grid)))
    for c in plan_chunks(grid, chunk_width=192, chunk_height=128, block=64):
        acc, w = _reference_blend(grid, probs_of, 48, 6, c.output, list(c.tile_grid_tiles(grid)))
        o = c.output
        np.testing.assert_array_equal(acc, acc_all[:, o.row0 : o.row1, o.col0 : o.col1])
        np.testing.assert_array_equal(w, w_all[o.row0 : o.row1, o.col0 : o.col1])


# ---------------------------------------------------------------------- chunked detection
@pytest.fixture
def context_backend(tiny_description):
    from tests.fakes import ContextBackend

    return ContextBackend(tiny_description)


def _detect(backend, src, out, **kw):
    from flair_deploy.inference import DetectConfig, run_detection

    cfg = DetectConfig(inputs=(src,), output=out, overviews=False, block_size=32, **kw)
    with backend:
        summary = run_detection(backend, cfg)
    return summary


def _read_all(path):
    import rasterio

    with rasterio.open(path) as ds:
        return ds.read()


def _plan(width_blocks, height_blocks):
    def plan(grid, *, block, **_):
        h = height_blocks * block if height_blocks else -(-grid.height // block) * block
        return plan_chunks(grid, chunk_width=width_blocks * block, chunk_height=h, block=block)

    return plan


@pytest.mark.parametrize(
    ("stitching", "extra"),
    [("blend", {"probabilities": True, "confidence": True}), ("crop", {"confidence": True}), ("crop", {})],
)
@pytest.mark.parametrize(("width_blocks", "height_blocks"), [(3, None), (2, 3)])
def test_map_does_not_depend_on_the_chunking(
    write_geotiff, tmp_path, context_backend, monkeypatch, stitching, extra, width_blocks, height_blocks
):
    from flair_deploy.inference import pipeline

    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, (5, 26, 51)).astype(np.float32)
    noise = rng.integers(0, 30, (5, 200, 400))
    data = (np.kron(base, np.ones((8, 8), np.float32))[:, :200, :400] + noise).clip(0, 255).astype(np.uint8)
    src = write_geotiff(data, "ortho.tif")
    whole = _detect(context_backend, src, tmp_path / "whole.tif", stitching=stitching, chunk_mb=1024, **extra)
    monkeypatch.setattr(pipeline, "default_chunk_plan", _plan(width_blocks, height_blocks))
    parts = _detect(context_backend, src, tmp_path / "parts.tif", stitching=stitching, **extra)
    assert parts.tiles == whole.tiles
    # Blend tiles straddling a chunk edge are computed by both chunks; crop cores here fall on block edges.
    assert parts.tiles_inferred > whole.tiles_inferred if stitching == "blend" else True
    for suffix in ("", "_proba", "_confidence"):
        a, b = tmp_path / f"whole{suffix}.tif", tmp_path / f"parts{suffix}.tif"
        assert a.exists() == b.exists()
        if a.exists():
            np.testing.assert_array_equal(_read_all(a), _read_all(b))


def test_the_memory_budget_cuts_wide_rasters_into_strips(write_geotiff, tmp_path, context_backend):
    data = np.random.default_rng(2).integers(0, 256, (5, 100, 600)).astype(np.uint8)
    src = write_geotiff(data, "ortho.tif")
    whole = _detect(context_backend, src, tmp_path / "whole.tif", chunk_mb=1024)
    strips = _detect(context_backend, src, tmp_path / "strips.tif", chunk_mb=1)
    assert strips.tiles_inferred > whole.tiles_inferred
    np.testing.assert_array_equal(_read_all(tmp_path / "whole.tif"), _read_all(tmp_path / "strips.tif"))
