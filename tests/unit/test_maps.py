"""Class-map helpers: colour tables, tags readable through rasterio, PNG previews, QGIS styles."""

from __future__ import annotations

import errno
import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import rasterio

from flair_deploy.errors import InputDataError, OutputError
from flair_deploy.maps import (
    NODATA_RGBA,
    class_name_tags,
    colormap,
    render_preview_png,
    write_class_map_tags,
    write_qgis_style,
)


def test_colormap_by_code_and_by_index(tiny_description):
    by_code = colormap(tiny_description)
    assert by_code[1] == (0xDB, 0x0E, 0x9A, 255)  # building, as published for FLAIR #1
    assert by_code[19] == (0, 0, 0, 255)
    assert by_code[255] == NODATA_RGBA
    assert 0 not in by_code
    by_index = colormap(tiny_description, indices=True)
    assert by_index[0] == by_code[1] and by_index[18] == by_code[19]
    assert len(by_index) == tiny_description.num_classes + 1


def test_class_name_tags_name_every_value_and_mark_untrained(tiny_description):
    tags = class_name_tags(tiny_description)
    assert tags["CLASS_1"] == "building"
    assert tags["CLASS_15"] == "clear cut (untrained)"  # inactive in the flair15 preset
    assert json.loads(tags["CLASS_NAMES"])["5"] == "water"
    assert class_name_tags(tiny_description, indices=True)["CLASS_4"] == "water"


def test_written_tags_and_colour_table_are_visible_through_rasterio(tiny_description, write_geotiff):
    data = np.full((8, 8), 255, dtype=np.uint8)
    data[:4] = 5
    path = write_geotiff(data, "map.tif", nodata=255)
    with rasterio.open(path, "r+") as ds:
        write_class_map_tags(ds, tiny_description)
    with rasterio.open(path) as ds:
        assert ds.colormap(1)[5] == (0x15, 0x53, 0xAE, 255)
        assert ds.colormap(1)[255] == NODATA_RGBA
        assert ds.tags()["CLASS_5"] == "water"
        assert "FLAIR class code" in ds.descriptions[0]
        assert ds.colorinterp[0] == rasterio.enums.ColorInterp.palette


def test_preview_png_is_written_downsampled_with_nodata(tiny_description, tmp_path):
    m = np.ones((600, 900), dtype=np.uint8)
    m[:, 450:] = 5
    m[:100] = 255
    out = render_preview_png(m, tiny_description, tmp_path / "p.png", max_size=300, title="demo")
    import matplotlib.image

    img = matplotlib.image.imread(out)
    assert img.shape[1] > 300 and img.shape[0] >= 200  # 300x200 map + legend panel
    assert not list(tmp_path.glob("*.part"))
    with pytest.raises(OutputError, match="--overwrite"):
        render_preview_png(m, tiny_description, out)
    render_preview_png(m, tiny_description, out, overwrite=True, legend=False)


def test_preview_rejects_bad_maps(tiny_description, tmp_path):
    with pytest.raises(InputDataError, match="2-D"):
        render_preview_png(np.zeros((2, 2, 2), dtype=np.uint8), tiny_description, tmp_path / "x.png")
    with pytest.raises(InputDataError, match="0-255"):
        render_preview_png(np.full((2, 2), 300), tiny_description, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_qgis_style_lists_classes_with_names(tiny_description, tmp_path):
    path = write_qgis_style(tmp_path / "map.qml", tiny_description)
    root = ET.fromstring(path.read_text().split("\n", 1)[1])
    entries = root.findall("./pipe/rasterrenderer/colorPalette/paletteEntry")
    assert root.find("./pipe/rasterrenderer").get("type") == "paletted"
    assert len(entries) == tiny_description.num_classes
    assert entries[0].attrib == {"value": "1", "color": "#db0e9a", "alpha": "255", "label": "building"}


def test_full_disk_is_one_line_and_leaves_nothing(tiny_description, tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    def full(self, fname, *_a, **_k):
        open(fname, "wb").write(b"half a png")  # noqa: SIM115 - a partial write, then the failure
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", full)
    out = tmp_path / "sub" / "p.png"
    with pytest.raises(OutputError) as info:
        render_preview_png(np.ones((4, 4), np.uint8), tiny_description, out)
    assert str(info.value).startswith(f"cannot write {out}: No space left on device")
    assert "\n" not in str(info.value)
    assert list(out.parent.iterdir()) == []


def test_style_goes_into_a_new_folder(tiny_description, tmp_path):
    path = write_qgis_style(tmp_path / "new" / "map.qml", tiny_description)
    assert path.is_file() and [p.name for p in path.parent.iterdir()] == ["map.qml"]


# ---------------------------------------------------------------------- what GDAL and QGIS report
def gdal_report(path):
    """What GDAL itself reports for each band of *path*: description, category names, RAT rows.

    rasterio has no API for category names or attribute tables, and there is no ``gdalinfo`` or
    ``osgeo`` here: the GDAL library rasterio ships is called directly.
    """
    import ctypes
    import glob
    import os

    libs = glob.glob(os.path.join(os.path.dirname(rasterio.__file__), "..", "rasterio.libs", "libgdal*.so*"))
    if not libs:
        pytest.skip("rasterio's bundled libgdal was not found (rasterio built against a system GDAL)")
    lib = ctypes.CDLL(libs[0])
    v, i, s = ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p
    for name, res, args in [
        ("GDALOpen", v, [s, i]),
        ("GDALClose", None, [v]),
        ("GDALGetRasterCount", i, [v]),
        ("GDALGetRasterBand", v, [v, i]),
        ("GDALGetDescription", s, [v]),
        ("GDALGetRasterCategoryNames", ctypes.POINTER(s), [v]),
        ("GDALGetDefaultRAT", v, [v]),
        ("GDALRATGetColumnCount", i, [v]),
        ("GDALRATGetRowCount", i, [v]),
        ("GDALRATGetNameOfCol", s, [v, i]),
        ("GDALRATGetTypeOfCol", i, [v, i]),
        ("GDALRATGetUsageOfCol", i, [v, i]),
        ("GDALRATGetValueAsString", s, [v, i, i]),
    ]:
        f = getattr(lib, name)
        f.restype, f.argtypes = res, args
    ds = lib.GDALOpen(str(path).encode(), 0)
    assert ds, f"GDAL cannot open {path}"
    bands = []
    try:
        for b in range(1, lib.GDALGetRasterCount(ds) + 1):
            band = lib.GDALGetRasterBand(ds, b)
            # First, as gdalinfo does: the GTiff driver reads the .aux.xml lazily, on its first call
            # that needs it, and GetCategoryNames alone does not trigger that read.
            description = lib.GDALGetDescription(band).decode()
            names, cats = [], lib.GDALGetRasterCategoryNames(band)
            while cats and cats[len(names)] is not None:
                names.append(cats[len(names)].decode())
            rat = lib.GDALGetDefaultRAT(band)
            columns, rows = [], []
            if rat:
                n = lib.GDALRATGetColumnCount(rat)
                columns = [
                    (lib.GDALRATGetNameOfCol(rat, c).decode(), lib.GDALRATGetTypeOfCol(rat, c),
                     lib.GDALRATGetUsageOfCol(rat, c))
                    for c in range(n)
                ]  # fmt: skip
                rows = [
                    [lib.GDALRATGetValueAsString(rat, r, c).decode() for c in range(n)]
                    for r in range(lib.GDALRATGetRowCount(rat))
                ]
            bands.append(
                {"description": description, "categories": names,
                 "rat_columns": columns, "rat_rows": rows}
            )  # fmt: skip
    finally:
        lib.GDALClose(ds)
    return bands


def test_category_names_cover_every_value_up_to_nodata(tiny_description):
    from flair_deploy.maps import category_names

    names = category_names(tiny_description)
    assert len(names) == 256 and names[0] == "" and names[1] == "building" and names[19] == "other"
    assert names[255] == "nodata" and names[20:255] == [""] * 235
    by_index = category_names(tiny_description, indices=True)
    assert by_index[0] == "building" and by_index[18] == "other" and by_index[19] == ""


def test_gdal_reads_category_names_and_attribute_table_from_the_sidecar(tiny_description, write_geotiff):
    from flair_deploy.maps import RAT_FIELDS, write_class_map_pam

    path = write_geotiff(np.full((8, 8), 5, dtype=np.uint8), "map.tif", nodata=255)
    aux = write_class_map_pam(path, tiny_description, indices=True)
    assert aux.name == "map.tif.aux.xml"
    (band,) = gdal_report(path)
    assert band["categories"][:2] == ["building", "pervious surface"] and band["categories"][255] == "nodata"
    # GDAL's enums: GFT_Integer 0, GFT_String 2; GFU_Generic 0, Name 2, MinMax 5, Red..Alpha 6..9.
    assert band["rat_columns"] == list(RAT_FIELDS)
    assert [c[2] for c in band["rat_columns"]] == [5, 0, 2, 6, 7, 8, 9]
    assert len(band["rat_rows"]) == tiny_description.num_classes
    assert band["rat_rows"][0] == ["0", "1", "building", "219", "14", "154", "255"]
    assert band["rat_rows"][4][:3] == ["4", "5", "water"]


def test_sidecar_keeps_what_gdal_put_there_and_replaces_only_ours(tiny_description, write_geotiff):
    from flair_deploy.maps import write_class_map_pam

    path = write_geotiff(np.full((8, 8), 5, dtype=np.uint8), "map.tif", nodata=255)
    aux = path.with_name("map.tif.aux.xml")
    aux.write_text(
        '<PAMDataset><PAMRasterBand band="1"><Metadata><MDI key="STATISTICS_MAXIMUM">5</MDI></Metadata>'
        "<CategoryNames><Category>old</Category></CategoryNames></PAMRasterBand></PAMDataset>"
    )
    write_class_map_pam(path, tiny_description)
    write_class_map_pam(path, tiny_description)  # twice: still one table, one list of names
    root = ET.fromstring(aux.read_text())
    assert root.find(".//MDI[@key='STATISTICS_MAXIMUM']").text == "5"
    assert (
        len(root.findall(".//CategoryNames")) == 1 and len(root.findall(".//GDALRasterAttributeTable")) == 1
    )
    assert "old" not in aux.read_text()
    with rasterio.open(path) as ds:
        assert ds.tags(1)["STATISTICS_MAXIMUM"] == "5"  # GDAL still reads the sidecar


def test_a_sidecar_that_is_not_pam_is_one_line(tiny_description, tmp_path):
    from flair_deploy.maps import class_map_pam

    with pytest.raises(InputDataError, match=r"^the class map's \.aux\.xml is not XML .*delete it"):
        class_map_pam(tiny_description, existing="<PAMDataset")
    with pytest.raises(InputDataError, match="not <PAMDataset>"):
        class_map_pam(tiny_description, existing="<html/>")


def test_qgis_style_makes_nodata_transparent(tiny_description):
    from flair_deploy.maps import qgis_style

    root = ET.fromstring(qgis_style(tiny_description).split("\n", 1)[1])
    entry = root.find("./pipe/rasterrenderer/rasterTransparency/singleValuePixelList/pixelListEntry")
    assert entry.attrib == {"min": "255", "max": "255", "percentTransparent": "100"}
    assert root.find("./pipe/rasterrenderer").get("nodataColor") == ""
    values = [e.get("value") for e in root.iter("paletteEntry")]
    assert "255" not in values


_QGIS_CHECK = """
import json, os, sys
from qgis.core import QgsApplication, QgsRasterLayer
app = QgsApplication([], False)
app.initQgis()
layer = QgsRasterLayer(sys.argv[1], "map")
renderer = layer.renderer()
provider = layer.dataProvider()
print(json.dumps({
    "valid": layer.isValid(),
    "renderer": renderer.type(),
    "classes": [[c.value, c.color.name(), c.color.alpha(), c.label] for c in renderer.classes()]
    if renderer.type() == "paletted" else [],
    "nodata": provider.sourceNoDataValue(1) if provider.sourceHasNoDataValue(1) else None,
}), flush=True)
# QgsApplication.exitQgis() crashes some headless builds on the way out: the answer is printed.
os._exit(0)
"""


def qgis_report(path):
    """Load *path* in a headless QGIS (system python's ``qgis.core``) and describe its rendering."""
    from tests.unit._qgis import run_qgis_python

    return run_qgis_python(_QGIS_CHECK, path)


def test_qgis_opens_a_map_with_our_style_as_named_coloured_classes(tiny_description, write_geotiff):
    from flair_deploy.maps import qgis_style_path, write_class_map_pam

    data = np.full((8, 8), 255, dtype=np.uint8)
    data[:4] = 5
    path = write_geotiff(data, "map.tif", nodata=255)
    with rasterio.open(path, "r+") as ds:
        write_class_map_tags(ds, tiny_description)
    write_class_map_pam(path, tiny_description)
    write_qgis_style(qgis_style_path(path), tiny_description)
    got = qgis_report(path)
    assert got["valid"] and got["renderer"] == "paletted" and got["nodata"] == 255
    assert len(got["classes"]) == tiny_description.num_classes
    assert got["classes"][0] == [1, "#db0e9a", 255, "building"]
    assert [5, "#1553ae", 255, "water"] in got["classes"]
