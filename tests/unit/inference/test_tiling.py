import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flair_deploy.errors import ConfigError
from flair_deploy.inference.tiling import TilingPlan, blend_axis, crop_axis, make_grid


@settings(max_examples=300, deadline=None)
@given(
    length=st.integers(1, 700),
    tile=st.sampled_from([32, 64, 96, 128]),
    frac=st.floats(0, 0.49),
)
def test_blend_axis_covers_every_pixel_and_never_reads_outside(length, tile, frac):
    overlap = int(tile * frac)
    tiles = blend_axis(length, tile, overlap)
    covered = np.zeros(length, dtype=int)
    for t in tiles:
        covered[t.keep_start : t.keep_stop] += 1
        if length >= tile:
            # No padding at all: shifted last tiles instead of zero/reflect fill.
            assert t.start >= 0 and t.start + tile <= length
    assert covered.min() >= 1
    starts = [t.start for t in tiles]
    assert starts == sorted(set(starts))
    assert tiles[0].start == 0


@settings(max_examples=300, deadline=None)
@given(
    length=st.integers(1, 700),
    tile=st.sampled_from([32, 64, 128]),
    frac=st.floats(0, 0.49),
    anchor=st.sampled_from(["start", "end"]),
)
def test_crop_axis_keeps_partition_the_raster(length, tile, frac, anchor):
    margin = int(tile * frac)
    tiles = crop_axis(length, tile, margin, anchor=anchor)
    owner = np.zeros(length, dtype=int)
    for t in tiles:
        owner[t.keep_start : t.keep_stop] += 1
        # The kept pixels are inside the tile's core (never in its cropped margin).
        assert t.start + margin <= t.keep_start and t.keep_stop <= t.start + tile - margin
    assert (owner == 1).all()


def test_crop_axis_matches_the_worked_example_of_the_anchor_report():
    # flair1-anchor §2.2: W = 1000, P = 512, m = 128 -> cores [0,256) [256,512) [512,768) [744,1000),
    # the shifted last patch wins on 744..768.
    tiles = crop_axis(1000, 512, 128)
    assert [t.start for t in tiles] == [-128, 128, 384, 616]
    assert [(t.keep_start, t.keep_stop) for t in tiles] == [(0, 256), (256, 512), (512, 744), (744, 1000)]


def test_crop_rows_are_anchored_at_the_bottom_like_ign_y_loop():
    rows = crop_axis(1000, 512, 128, anchor="end")
    # Mirror of the column layout: grid from the south edge, the north-most (shifted) patch wins.
    assert [(t.keep_start, t.keep_stop) for t in rows] == [(0, 256), (256, 488), (488, 744), (744, 1000)]


def test_grid_is_row_major_and_sized_by_the_modes():
    g = make_grid(300, 200, TilingPlan.blend(64, 16))
    idx = [(t.row_index, t.col_index) for t in g]
    assert idx == sorted(idx) and len(idx) == len(g)
    assert g.tile(5) == list(g)[5]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"overlap": 64}, "overlap"), ({"overlap": -1}, "overlap")],
)
def test_inconsistent_overlap_is_refused(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        blend_axis(300, 64, **kwargs)


def test_crop_margin_must_leave_a_core():
    with pytest.raises(ConfigError, match="margin"):
        crop_axis(300, 64, 32)


def test_tile_reads_are_clipped_to_the_raster_and_padding_restores_the_tile_size():
    # Crop grid: patches start at -margin and may end past the raster; reads never leave it.
    w, h, tile = 70, 50, 32
    for t in make_grid(w, h, TilingPlan.crop(tile, 8)):
        c0, r0, cw, rh = t.read_window(w, h)
        assert min(c0, r0) >= 0 and c0 + cw <= w and r0 + rh <= h
        (top, bottom), (left, right) = t.padding(w, h)
        assert min(top, bottom, left, right) >= 0
        assert (top + rh + bottom, left + cw + right) == (tile, tile)
        assert (r0 - top, c0 - left) == (t.row.start, t.col.start)  # padding sits where the tile overhangs
    # A blend raster smaller than one tile: one tile at the origin, padded only past the far edges.
    (t,) = list(make_grid(20, 30, TilingPlan.blend(tile, 8)))
    assert t.read_window(20, 30) == (0, 0, 20, 30)
    assert t.padding(20, 30) == ((0, 2), (0, 12))
    assert t.centre() == (16.0, 16.0)


# ---------------------------------------------------------------------- the plan value
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tile": 64, "mode": "blend", "overlap": 32}, "overlap 32 px leaves no tile centre in 64-px tiles"),
        ({"tile": 64, "mode": "crop", "margin": 40}, "margin 40 px leaves no core in 64-px tiles"),
        ({"tile": 64, "mode": "blend", "overlap": 16, "border": 8}, "blend border 8 px leaves no ramp"),
        ({"tile": 64, "mode": "blend", "overlap": 0, "border": 2}, "a blend border needs an overlap"),
        ({"tile": 64, "mode": "blend", "margin": 8}, "margin applies to stitching='crop' only"),
        ({"tile": 64, "mode": "crop", "overlap": 8}, "overlap applies to stitching='blend' only"),
        ({"tile": 0, "mode": "blend"}, "tile size 0 px must be positive"),
    ],
)
def test_a_plan_is_validated_once_with_one_message_per_rule(kwargs, message, tiny_description):
    from flair_deploy.errors import ConfigError
    from flair_deploy.inference.config import load_detect_config

    with pytest.raises(ConfigError, match=message):
        TilingPlan(**kwargs)
    # detect's config applies the same rule, with the same words, before any model is loaded.
    fields = {"tile": "tile_size", "mode": "stitching", "overlap": "overlap", "margin": "margin"}
    cfg = {fields.get(k, "blend_border"): v for k, v in kwargs.items()}
    if cfg.get("tile_size") == 0:
        return  # pydantic's own bound (gt=0) answers first there
    with pytest.raises(ConfigError, match=message):
        load_detect_config(flags={"inputs": ["a.tif"], "output": "o.tif", **cfg})


def test_plan_tiling_takes_unset_values_from_the_model_and_the_grid_carries_the_plan(tiny_description):
    from flair_deploy.errors import ConfigError
    from flair_deploy.inference.tiling import plan_tiling

    plan = plan_tiling(tiny_description)
    assert plan == TilingPlan.blend(64, 16, 2)  # the model's tile and overlap, border overlap // 8
    assert plan_tiling(tiny_description, stitching="crop") == TilingPlan.crop(64, 16)
    grid = make_grid(200, 100, plan)
    assert grid.plan is plan and grid.size == 64 and grid.mode == "blend"
    with pytest.raises(ConfigError, match="not a multiple of the network's output stride 32"):
        plan_tiling(tiny_description, tile=80)
