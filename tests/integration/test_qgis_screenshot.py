"""docs/tools/qgis_screenshot.py: the docs' QGIS figure can be remade, and its legend is right.

QGIS renders a small class map over an RGB orthophoto; the legend must show the classes present in
their exact FLAIR colours and no others. Skipped, saying why, where QGIS is not installed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio

from flair_deploy.maps import qgis_style_path, write_class_map_pam, write_class_map_tags, write_qgis_style
from tests.gis_helpers import run_qgis_python

SCRIPT = Path(__file__).resolve().parents[2] / "docs" / "tools" / "qgis_screenshot.py"


def _colours(png: Path) -> set[tuple[int, int, int]]:
    from PIL import Image

    rgb = np.asarray(Image.open(png).convert("RGB")).reshape(-1, 3)
    return {tuple(int(v) for v in c) for c in np.unique(rgb, axis=0)}


def test_the_screenshot_shows_the_map_with_a_legend_of_its_classes(write_geotiff, tmp_path, tiny_description):
    rng = np.random.default_rng(0)
    ortho = write_geotiff(rng.integers(60, 200, (3, 64, 64)).astype(np.uint8), "ortho.tif")
    classes = np.full((64, 64), 5, np.uint8)  # water...
    classes[:, :32] = 1  # ...and building
    classes[:8] = 255  # a nodata strip
    path = write_geotiff(classes, "map.tif", nodata=255)
    with rasterio.open(path, "r+") as ds:
        write_class_map_tags(ds, tiny_description)
    write_class_map_pam(path, tiny_description)
    write_qgis_style(qgis_style_path(path), tiny_description)
    out = tmp_path / "shot.png"
    done = run_qgis_python([str(SCRIPT), str(path), "--ortho", str(ortho), "-o", str(out), "--dpi", "60"])
    assert done.returncode == 0, done.stderr
    assert out.stat().st_size < 300_000
    colours = _colours(out)
    building, water, coniferous = (0xDB, 0x0E, 0x9A), (0x15, 0x53, 0xAE), (0x19, 0x4A, 0x26)
    # Legend swatches in the classes' own colours (the map itself is drawn translucent over the ortho).
    assert building in colours and water in colours
    assert coniferous not in colours  # absent from the map, so not in the legend


def test_a_map_without_its_style_is_refused_in_one_line(write_geotiff, tmp_path):
    path = write_geotiff(np.ones((8, 8), np.uint8), "map.tif", nodata=255)
    done = run_qgis_python([str(SCRIPT), str(path), "-o", str(tmp_path / "x.png")])
    assert done.returncode == 1 and not (tmp_path / "x.png").exists()
    assert done.stderr.strip().splitlines()[-1] == (
        f"no map.qml beside {path}: render maps written by flair-deploy detect"
    )
