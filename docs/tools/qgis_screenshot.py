r"""Render a flair-deploy class map in QGIS, headless, over its orthophoto, with a legend: one PNG.

Run it with the Python that has QGIS (Debian/Ubuntu: ``apt-get install python3-qgis``), not the
project's venv::

    QT_QPA_PLATFORM=offscreen /usr/bin/python3 docs/tools/qgis_screenshot.py MAP.tif \
        --ortho ORTHO.tif -o docs/images/qgis-landcover.png

QGIS opens ``MAP.tif`` as a user would: it applies ``MAP.qml`` (the style ``detect`` writes beside the
map) by itself, and this script only checks that it did (a paletted renderer) and draws the map at
``--opacity`` over the orthophoto. The print layout has the map, a legend of the classes present in
the map (class names from the style, drawn from an opaque copy of the layer so that the swatches are
the classes' exact colours), a scale bar and a title. The PNG is reduced to 256 colours (the legend's
colours kept exact) so that it stays small enough for a repository.

See docs/qgis.md for the commands that made the committed screenshot.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("map", type=Path, help="class map written by flair-deploy detect (with its .qml beside)")
    p.add_argument("--ortho", type=Path, help="orthophoto to draw underneath (RGB bands 1-3)")
    p.add_argument("-o", "--out", type=Path, required=True, help="PNG to write")
    p.add_argument("--opacity", type=float, default=0.6, help="class map opacity over the orthophoto")
    p.add_argument("--title", default=None, help="title above the map (default: the map's file name)")
    p.add_argument("--map-mm", type=float, default=150.0, help="side of the map frame in the layout, mm")
    p.add_argument("--dpi", type=float, default=120.0, help="export resolution")
    p.add_argument("--colours", type=int, default=256, help="palette size of the PNG (0: full colour)")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    """Render the map and write the PNG; return the exit status (1 with one line on stderr)."""
    args = _parse(argv)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from osgeo import gdal
    from qgis.core import (
        QgsApplication,
        QgsLayoutExporter,
        QgsLayoutItemLabel,
        QgsLayoutItemLegend,
        QgsLayoutItemMap,
        QgsLayoutItemScaleBar,
        QgsLayoutPoint,
        QgsLayoutSize,
        QgsLegendRenderer,
        QgsLegendStyle,
        QgsMapLayerLegendUtils,
        QgsPrintLayout,
        QgsProject,
        QgsRasterLayer,
        QgsUnitTypes,
    )
    from qgis.PyQt.QtCore import QSize, Qt
    from qgis.PyQt.QtGui import QColor, QFont

    app = QgsApplication([], False)
    app.initQgis()
    project = QgsProject.instance()

    style = args.map.with_suffix(".qml")
    if not style.is_file():
        print(
            f"no {style.name} beside {args.map}: render maps written by flair-deploy detect", file=sys.stderr
        )
        return 1
    classes = QgsRasterLayer(str(args.map), "land cover")
    if not classes.isValid():
        print(f"QGIS cannot open {args.map}", file=sys.stderr)
        return 1
    renderer = classes.renderer()
    if renderer.type() != "paletted":
        print(
            f"{args.map} opened with a {renderer.type()} renderer, not paletted: is its .qml beside it?",
            file=sys.stderr,
        )
        return 1
    classes.setOpacity(args.opacity)
    # The legend is drawn from a second, opaque copy of the map (not drawn in the frame): a legend of
    # the translucent layer would show the classes' colours blended with white.
    key = QgsRasterLayer(str(args.map), "land cover")
    layers = [classes]
    ortho = None
    if args.ortho is not None:
        ortho = QgsRasterLayer(str(args.ortho), "orthophoto")
        if not ortho.isValid():
            print(f"QGIS cannot open {args.ortho}", file=sys.stderr)
            return 1
        layers.append(ortho)
    project.addMapLayers([*layers, key])
    # QGIS's project CRS is the first layer's; both layers are drawn in the class map's CRS.
    project.setCrs(classes.crs())

    # The classes present in the map: the legend lists those only (a map rarely holds all 19).
    dataset = gdal.Open(str(args.map))  # kept referenced: GDAL frees a band with its dataset
    counts = dataset.GetRasterBand(1).GetHistogram(-0.5, 255.5, 256, False, False)
    present = {v for v, n in enumerate(counts) if n}
    dataset = None

    extent = classes.extent()
    aspect = extent.height() / extent.width()
    map_w, map_h = args.map_mm, args.map_mm * aspect
    margin, legend_w, title_h = 6.0, 62.0, 12.0
    page_w, page_h = margin * 3 + map_w + legend_w, margin * 2 + title_h + map_h + 14.0

    layout = QgsPrintLayout(project)
    layout.initializeDefaults()
    layout.pageCollection().page(0).setPageSize(QgsLayoutSize(page_w, page_h, QgsUnitTypes.LayoutMillimeters))

    title = QgsLayoutItemLabel(layout)
    title.setText(args.title or args.map.name)
    title.setFont(QFont("DejaVu Sans", 14))
    layout.addLayoutItem(title)
    title.attemptMove(QgsLayoutPoint(margin, margin, QgsUnitTypes.LayoutMillimeters))
    title.attemptResize(QgsLayoutSize(map_w + legend_w, title_h, QgsUnitTypes.LayoutMillimeters))

    frame = QgsLayoutItemMap(layout)
    frame.setLayers(layers)
    frame.setKeepLayerSet(True)
    frame.setFrameEnabled(True)
    layout.addLayoutItem(frame)
    frame.attemptMove(QgsLayoutPoint(margin, margin + title_h, QgsUnitTypes.LayoutMillimeters))
    frame.attemptResize(QgsLayoutSize(map_w, map_h, QgsUnitTypes.LayoutMillimeters))
    frame.setExtent(extent)

    legend = QgsLayoutItemLegend(layout)
    legend.setTitle("Land cover")
    legend.setLinkedMap(frame)
    legend.setAutoUpdateModel(False)
    root = legend.model().rootGroup()
    for layer in layers:
        root.removeLayer(layer)  # the orthophoto's legend would be three bands, not classes
    node = root.findLayer(key.id())
    # The layer's legend: a band title node, then one node per palette entry, labelled by the style.
    # Keep the entries of the classes present, in the style's order.
    labels = {c.label for c in renderer.classes() if c.value in present}
    nodes = legend.model().layerOriginalLegendNodes(node)
    order = [i for i, n in enumerate(nodes) if n.data(Qt.DisplayRole) in labels]
    QgsMapLayerLegendUtils.setLegendNodeOrder(node, order)
    legend.model().refreshLayerLegend(node)
    QgsLegendRenderer.setNodeLegendStyle(node, QgsLegendStyle.Hidden)  # no layer name: the title says it
    legend.setBackgroundColor(QColor(255, 255, 255))
    layout.addLayoutItem(legend)
    legend.attemptMove(QgsLayoutPoint(margin * 2 + map_w, margin + title_h, QgsUnitTypes.LayoutMillimeters))
    legend.setResizeToContents(True)
    legend.adjustBoxSize()

    bar = QgsLayoutItemScaleBar(layout)
    bar.setStyle("Single Box")
    bar.setLinkedMap(frame)
    bar.applyDefaultSize()
    bar.setUnitLabel("m")
    layout.addLayoutItem(bar)
    bar.attemptMove(QgsLayoutPoint(margin, margin + title_h + map_h + 3.0, QgsUnitTypes.LayoutMillimeters))

    with tempfile.TemporaryDirectory() as tmp:
        full = Path(tmp) / "full.png"
        # The page as an image, saved by Qt: exportToImage would also try to georeference the PNG.
        page = QgsLayoutExporter(layout).renderPageToImage(0, QSize(), args.dpi)
        if page.isNull() or not page.save(str(full)):
            print("QGIS could not render the layout", file=sys.stderr)
            return 1
        from PIL import Image

        image = Image.open(full).convert("RGB")
        if args.colours:
            # The legend's colours stay exact: they are put in the palette, beside the colours
            # median-cut picks for the rest (mostly the blended map).
            exact = [(0, 0, 0), (255, 255, 255)]
            exact += [
                (c.color.red(), c.color.green(), c.color.blue())
                for c in renderer.classes()
                if c.value in present
            ]
            picked = image.quantize(colors=max(2, args.colours - len(exact)), method=Image.Quantize.MEDIANCUT)
            palette = picked.getpalette()[: 3 * (args.colours - len(exact))]
            palette += [v for rgb in exact for v in rgb]
            target = Image.new("P", (1, 1))
            target.putpalette(palette)
            image = image.quantize(palette=target, dither=Image.Dither.NONE)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        image.save(args.out, optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KiB, {image.width}x{image.height} px)")
    # exitQgis() crashes some headless builds on the way out; everything is written by now.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
