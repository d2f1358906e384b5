"""What GDAL and QGIS themselves report for a raster: shared by the map tests.

:func:`gdal_report` calls the GDAL library rasterio ships (rasterio has no API for category names or
attribute tables, and the venv has no ``osgeo``). :func:`qgis_report` loads the raster in a headless
QGIS (the system python's ``qgis.core``, Debian's ``python3-qgis``) and skips the test, saying why,
where QGIS is not installed.
"""

from __future__ import annotations

import ctypes
import glob
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import rasterio

__all__ = ["QGIS_PYTHON", "gdal_report", "qgis_report", "run_qgis_python", "run_qgis_script", "write_raster"]


def gdal_report(path: Path) -> list[dict[str, Any]]:
    """Per band of *path*, as GDAL reports it: description, category names, attribute-table columns
    ``(name, type, usage)`` and rows (as strings)."""
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


QGIS_PYTHON = "/usr/bin/python3"

_QGIS_CHECK = """
import json, os, sys
from qgis.core import QgsApplication, QgsRasterLayer
app = QgsApplication([], False)
app.initQgis()
layer = QgsRasterLayer(sys.argv[1], "map")
renderer = layer.renderer()
provider = layer.dataProvider()
kind = renderer.type() if renderer else None
classes = []
if kind == "paletted":
    classes = [[c.value, c.color.name(), c.color.alpha(), c.label] for c in renderer.classes()]
elif kind == "singlebandpseudocolor":
    ramp = renderer.shader().rasterShaderFunction()
    classes = [[i.value, i.color.name(), i.color.alpha(), i.label] for i in ramp.colorRampItemList()]
print(json.dumps({
    "valid": layer.isValid(),
    "renderer": kind,
    "classes": classes,
    "bands": [layer.bandName(b) for b in range(1, layer.bandCount() + 1)],
    "nodata": provider.sourceNoDataValue(1) if provider.sourceHasNoDataValue(1) else None,
}), flush=True)
# QgsApplication.exitQgis() crashes some headless builds on the way out: the answer is printed.
os._exit(0)
"""


def run_qgis_python(args: list[str], *, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the system Python that has QGIS, headless; skip the test, saying why, without QGIS."""
    probe = subprocess.run([QGIS_PYTHON, "-c", "import qgis.core"], capture_output=True, check=False)
    if probe.returncode != 0:
        why = f"QGIS is not installed ({QGIS_PYTHON} cannot import qgis.core; apt-get install python3-qgis)"
        if os.environ.get("FLAIR_DEPLOY_REQUIRE_QGIS") == "1":  # CI installs QGIS: a skip would hide a gap
            pytest.fail(why)
        pytest.skip(why)
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    env.pop("PYTHONPATH", None)  # the venv's packages are not QGIS's
    return subprocess.run(
        [QGIS_PYTHON, *args], capture_output=True, text=True, env=env, timeout=timeout, check=False
    )


def qgis_report(path: Path) -> dict[str, Any]:
    """Load *path* in a headless QGIS and describe how it renders it.

    Returns:
        ``valid``; ``renderer`` (QGIS's renderer type: ``paletted`` for a class map with its style,
        ``singlebandpseudocolor``...); ``classes`` (``[value, colour, alpha, label]`` per palette entry
        or colour-ramp item); ``bands`` (QGIS's band names, descriptions included); ``nodata``.
    """
    done = run_qgis_python(["-c", _QGIS_CHECK, str(path)])
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def run_qgis_script(script: Path, *args: object, timeout: float = 300) -> Any:
    """Run a script file with the QGIS Python headless and return its last stdout line, parsed as JSON.

    Skips (or fails, see :func:`run_qgis_python`) where QGIS is absent.
    """
    done = run_qgis_python([str(script), *map(str, args)], timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def write_raster(
    path: Path,
    data: Any,
    *,
    origin: tuple[float, float],
    res: float,
    crs: str = "EPSG:2154",
    nodata: float | None = None,
    **profile: Any,
) -> Path:
    """Write *data* (``(bands, rows, cols)`` or one ``(rows, cols)`` band) as a GeoTIFF on a north-up grid.

    *origin* is the top-left corner, *res* the square pixel size; further creation options in *profile*.
    """
    from rasterio.transform import from_origin

    data = data if data.ndim == 3 else data[None]
    prof = {
        "driver": "GTiff",
        "width": data.shape[2],
        "height": data.shape[1],
        "count": data.shape[0],
        "dtype": data.dtype.name,
        "crs": crs,
        "transform": from_origin(*origin, res, res),
        "nodata": nodata,
        **profile,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **prof) as dst:
        dst.write(data)
    return path
