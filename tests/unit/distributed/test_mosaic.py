"""The mosaic of a job's class maps: ``mosaic.vrt`` and the merged ``mosaic.tif`` name their classes.

No Ray here: the maps are written as ``detect`` writes them (tags and colour table) and assembled by
:mod:`flair_deploy.distributed.mosaic` directly.
"""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

from flair_deploy.distributed.mosaic import merge_to_cog, write_mosaic_vrt
from flair_deploy.errors import InputDataError
from flair_deploy.maps import write_class_map_tags
from tests.gis_helpers import gdal_report, qgis_report


def _maps(write_geotiff, desc, *, indices=False):
    """Two side-by-side 32x24 class maps: the left one building and water, the right one nodata-edged."""
    left = np.full((24, 32), 1 if not indices else 0, np.uint8)
    left[12:] = 5 if not indices else 4
    right = np.full((24, 32), 6 if not indices else 5, np.uint8)
    right[:, 24:] = desc.nodata
    paths = []
    for i, (name, data) in enumerate([("a.tif", left), ("b.tif", right)]):
        path = write_geotiff(data, name, nodata=desc.nodata, origin=(650000.0 + i * 6.4, 6860000.0))
        with rasterio.open(path, "r+") as ds:
            write_class_map_tags(ds, desc, indices=indices)
        paths.append(path)
    return paths


@pytest.mark.parametrize("indices", [False, True])
def test_mosaic_vrt_and_cog_carry_names_colours_and_an_attribute_table(
    write_geotiff, tmp_path, tiny_description, indices
):
    maps = _maps(write_geotiff, tiny_description, indices=indices)
    vrt = write_mosaic_vrt(maps, tmp_path / "out" / "mosaic.vrt", tiny_description, indices=indices)
    cog = merge_to_cog(vrt, tmp_path / "out" / "mosaic.tif", tiny_description, indices=indices, block=16)
    water = 4 if indices else 5
    for path in (vrt, cog):
        (band,) = gdal_report(path)
        assert band["categories"][water] == "water" and band["categories"][255] == "nodata"
        assert [c[0] for c in band["rat_columns"]] == [
            "value",
            "code",
            "name",
            "red",
            "green",
            "blue",
            "alpha",
        ]
        assert band["rat_rows"][4] == [str(water), "5", "water", "21", "83", "174", "255"]
        assert "land-cover class" in band["description"]
        with rasterio.open(path) as ds:
            assert ds.nodata == 255 and ds.colormap(1)[water] == (21, 83, 174, 255)
            assert ds.colormap(1)[255][3] == 0  # nodata transparent
            assert ds.tags()[f"CLASS_{water}"] == "water"
            assert (ds.width, ds.height) == (64, 24)
    assert sorted(p.name for p in vrt.parent.iterdir()) == [
        "mosaic.qml",
        "mosaic.tif",
        "mosaic.tif.aux.xml",
        "mosaic.vrt",
    ]
    assert f'value="{water}"' in (tmp_path / "out" / "mosaic.qml").read_text()


def test_qgis_shows_the_vrt_and_the_cog_with_their_style(write_geotiff, tmp_path, tiny_description):
    maps = _maps(write_geotiff, tiny_description)
    vrt = write_mosaic_vrt(maps, tmp_path / "mosaic.vrt", tiny_description)
    cog = merge_to_cog(vrt, tmp_path / "mosaic.tif", tiny_description, block=16)
    for path in (vrt, cog):
        got = qgis_report(path)  # mosaic.qml serves both: QGIS looks for NAME.qml
        assert got["valid"] and got["renderer"] == "paletted" and got["nodata"] == 255
        # The style's entries, one per class: from the colour table alone QGIS would list all 256.
        assert len(got["classes"]) == tiny_description.num_classes
        assert got["classes"][0] == [1, "#db0e9a", 255, "building"]
        assert [5, "#1553ae", 255, "water"] in got["classes"]


def test_a_rerun_replaces_the_mosaic_and_drops_its_stale_sidecars(write_geotiff, tmp_path, tiny_description):
    maps = _maps(write_geotiff, tiny_description)
    out = tmp_path / "out"
    out.mkdir()
    for name in ("mosaic.vrt.aux.xml", "mosaic.tif.aux.xml", "mosaic.qml"):
        (out / name).write_text("of an older mosaic")
    vrt = write_mosaic_vrt(maps, out / "mosaic.vrt", tiny_description)
    merge_to_cog(vrt, out / "mosaic.tif", tiny_description, block=16)
    assert not (out / "mosaic.vrt.aux.xml").exists()
    assert "older" not in (out / "mosaic.qml").read_text() + (out / "mosaic.tif.aux.xml").read_text()


def test_maps_on_other_grids_are_one_line(write_geotiff, tmp_path, tiny_description):
    a = write_geotiff(np.ones((8, 8), np.uint8), "a.tif", nodata=255)
    b = write_geotiff(np.ones((8, 8), np.uint8), "b.tif", nodata=255, res=0.5)
    for path in (a, b):
        with rasterio.open(path, "r+") as ds:
            write_class_map_tags(ds, tiny_description)
    with pytest.raises(InputDataError, match=r"^b.tif has another CRS or pixel size than a.tif") as info:
        write_mosaic_vrt([a, b], tmp_path / "mosaic.vrt", tiny_description)
    assert "\n" not in str(info.value) and not (tmp_path / "mosaic.vrt").exists()
