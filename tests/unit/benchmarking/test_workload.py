"""What a benchmark feeds the model (``benchmarking/workload.py``): raster tiles and the FLOP per tile."""

from __future__ import annotations

import numpy as np
import pytest

from flair_deploy.benchmarking.workload import UNET_RESNET34_GFLOP_512, gflop_per_tile, raster_tiles
from flair_deploy.description import ArchitectureSpec
from flair_deploy.errors import InputDataError


def test_raster_tiles_are_spread_over_the_raster_and_repeat_when_short(write_geotiff, tiny_description):
    # Each 32-px tile of a 96x64 raster holds its own index in every band: 3 x 2 = 6 distinct tiles.
    data = np.kron(np.arange(6, dtype=np.uint8).reshape(2, 3), np.ones((32, 32), np.uint8))
    path = write_geotiff(np.repeat(data[None], 5, axis=0))
    tiles = raster_tiles(path, tiny_description, 6, 32)
    assert tiles.shape == (6, 5, 32, 32) and tiles.dtype == np.float32
    assert sorted(int(t[0, 0, 0]) for t in tiles) == list(range(6))  # every place once
    assert all((t == t[0, 0, 0]).all() for t in tiles)  # whole tiles, no straddling
    more = raster_tiles(path, tiny_description, 9, 32)
    assert len(more) == 9 and (more[:6] == tiles).all() and (more[6:] == tiles[:3]).all()


@pytest.mark.parametrize(
    ("shape", "size", "match"),
    [((3, 64, 64), 32, "3 bands but the model takes 5"), ((5, 20, 64), 32, "smaller than one 32-px tile")],
)
def test_raster_tiles_refuse_what_cannot_feed_the_model(write_geotiff, tiny_description, shape, size, match):
    path = write_geotiff(np.zeros(shape, np.uint8))
    with pytest.raises(InputDataError, match=match) as exc:
        raster_tiles(path, tiny_description, 4, size)
    assert "\n" not in str(exc.value)


def test_an_unreadable_raster_is_one_line(tmp_path, tiny_description):
    bad = tmp_path / "notes.tif"
    bad.write_text("not a raster")
    with pytest.raises(InputDataError, match="cannot read raster"):
        raster_tiles(bad, tiny_description, 1, 32)


def test_flair_reference_model_cost_scales_with_the_pixel_count(tiny_description):
    ref = tiny_description.model_copy(
        update={"architecture": ArchitectureSpec(arch="unet", encoder="resnet34", encoder_depth=5)}
    )
    assert gflop_per_tile(ref, 512) == pytest.approx(UNET_RESNET34_GFLOP_512)
    assert gflop_per_tile(ref, 256) == pytest.approx(UNET_RESNET34_GFLOP_512 / 4)
