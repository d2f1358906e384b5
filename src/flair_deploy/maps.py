"""Class maps made readable: colour tables, class-name tags, PNG previews and QGIS styles.

Every class map flair-deploy writes (evaluation predictions, ``detect`` outputs) is a single-band
uint8 raster whose values are either FLAIR **codes** (the default, as in the FLAIR masks) or logit
**indices** (``indices=True``, as IGN's predict writes them), with the description's ``nodata``
(255) where there is no prediction. The helpers here make such a map self-explanatory wherever it
is opened:

* :func:`write_class_map_tags` embeds a GDAL colour table (QGIS renders it as a paletted layer and
  ``gdalinfo`` lists it), a band description and tags naming every class;
* :func:`write_class_map_pam` puts GDAL category names and a raster attribute table (value, code,
  name, colour) into the map's ``.aux.xml`` sidecar, where GDAL's GeoTIFF driver keeps them (it has
  no place for them inside the TIFF), so ``gdalinfo`` and QGIS name the classes;
* :func:`write_qgis_style` writes a ``.qml`` paletted style with class names as labels (QGIS loads
  ``NAME.qml`` automatically for ``NAME.tif``); :func:`probability_style` is the style of the
  confidence and probability maps (a red-to-green ramp over one band);
* :func:`render_preview_png` draws a PNG quick-look with a legend.

All helpers are pure functions of a :class:`~flair_deploy.description.ModelDescription`.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from flair_deploy._optional import require
from flair_deploy.atomic import atomic_path
from flair_deploy.description import ModelDescription
from flair_deploy.errors import InputDataError

__all__ = [
    "NODATA_RGBA",
    "PROBABILITY_RAMP",
    "RAT_FIELDS",
    "RGBA",
    "category_names",
    "class_band_elements",
    "class_map_pam",
    "class_name_tags",
    "colormap",
    "colour_lut",
    "qgis_style",
    "qgis_style_path",
    "render_preview_png",
    "write_class_map_pam",
    "write_class_map_tags",
    "write_qgis_style",
]

RGBA = tuple[int, int, int, int]
#: Colour of nodata in colour tables: fully transparent.
NODATA_RGBA: RGBA = (0, 0, 0, 0)
# Nodata is drawn light grey in previews so that "no prediction" is visible on any background.
_PREVIEW_NODATA_RGBA: RGBA = (217, 217, 217, 255)
_PREVIEW_NODATA_HEX = "#d9d9d9"


def _values(description: ModelDescription, *, indices: bool) -> list[tuple[int, int]]:
    """Return ``(map value, logit index)`` for every class."""
    return [(i if indices else c.code, i) for i, c in enumerate(description.classes)]


def colormap(description: ModelDescription, *, indices: bool = False) -> dict[int, RGBA]:
    """Return the class map's colour table: map value → ``(r, g, b, a)``.

    Args:
        description: The model description (classes and nodata value).
        indices: Key by logit index (0..K-1) instead of FLAIR class code.

    Returns:
        One opaque entry per class and a transparent entry for ``description.nodata``, as
        ``rasterio``'s ``write_colormap`` takes it.
    """
    table: dict[int, RGBA] = {}
    for value, i in _values(description, indices=indices):
        table[value] = (*description.classes[i].rgb(), 255)
    table[description.nodata] = NODATA_RGBA
    return table


def colour_lut(description: ModelDescription, *, indices: bool = False) -> NDArray[np.uint8]:
    """Return a ``(256, 4)`` uint8 RGBA lookup table (unknown values and nodata transparent)."""
    lut = np.zeros((256, 4), dtype=np.uint8)
    for value, rgba in colormap(description, indices=indices).items():
        lut[value] = rgba
    return lut


def class_name_tags(description: ModelDescription, *, indices: bool = False) -> dict[str, str]:
    """Return GDAL metadata tags that name the classes of a class map.

    ``gdalinfo`` shows them under "Metadata". Keys:

    * ``CLASS_<value>``: the class name for each map value (inactive classes marked "(untrained)");
    * ``CLASS_NAMES``: JSON object ``{"<value>": "<name>"}`` for programs;
    * ``CLASS_VALUES``: ``"FLAIR class codes"`` or ``"logit indices"``;
    * ``NODATA_MEANING``: what the nodata value stands for;
    * ``MODEL``: the model name.

    Args:
        description: The model description.
        indices: Whether the map stores logit indices rather than class codes.
    """
    tags: dict[str, str] = {}
    names: dict[str, str] = {}
    for value, i in _values(description, indices=indices):
        cls = description.classes[i]
        names[str(value)] = cls.name
        tags[f"CLASS_{value}"] = cls.name if cls.active else f"{cls.name} (untrained)"
    tags["CLASS_NAMES"] = json.dumps(names, ensure_ascii=False)
    tags["CLASS_VALUES"] = "logit indices" if indices else "FLAIR class codes"
    tags["NODATA_MEANING"] = f"{description.nodata} = no prediction (input nodata or outside the image)"
    tags["MODEL"] = description.name
    return tags


def write_class_map_tags(dataset: Any, description: ModelDescription, *, indices: bool = False) -> None:
    """Embed the colour table, band description and class-name tags in an open class map.

    Args:
        dataset: A ``rasterio`` dataset open for writing (``"w"`` or ``"r+"``), uint8, band 1 the map.
        description: The model description.
        indices: Whether the map stores logit indices rather than class codes.
    """
    dataset.write_colormap(1, colormap(description, indices=indices))
    what = "logit index" if indices else "FLAIR class code"
    dataset.set_band_description(1, f"land-cover class ({what}; {description.nodata} = nodata)")
    dataset.update_tags(**class_name_tags(description, indices=indices))


def render_preview_png(
    class_map: NDArray[np.integer[Any]],
    description: ModelDescription,
    path: Path,
    *,
    indices: bool = False,
    legend: bool = True,
    max_size: int = 2048,
    title: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a PNG quick-look of a class map, with a legend of the classes it contains.

    Large maps are downsampled by striding (nearest neighbour, so no invented classes) until the
    longer side is at most *max_size*; small maps are enlarged by an integer factor to stay legible.
    Nodata is drawn light grey. The file is written under a temporary name and renamed when complete.

    Args:
        class_map: ``(H, W)`` integer map of class codes (or logit indices with ``indices=True``).
        description: The model description (colours, names, nodata).
        path: Output ``.png`` path.
        indices: Whether *class_map* holds logit indices rather than class codes.
        legend: Draw a legend of the classes present.
        max_size: Longest side of the map in the image, in pixels.
        title: Optional title above the legend.
        overwrite: Replace an existing file.

    Returns:
        *path*.

    Raises:
        InputDataError: If the map is not 2-D or holds values outside 0-255.
        OutputError: If *path* exists without *overwrite*, or cannot be written (disk full,
            folder not writable); missing folders are created.
    """
    arr = np.asarray(class_map)
    if arr.ndim != 2 or arr.size == 0:
        raise InputDataError(f"class map must be a non-empty 2-D array, got shape {arr.shape}")
    if arr.min() < 0 or arr.max() > 255:
        raise InputDataError(
            f"class map values must lie in 0-255, got {int(arr.min())}..{int(arr.max())}; "
            "give class codes or logit indices"
        )
    arr = arr.astype(np.uint8, copy=False)
    step = max(1, math.ceil(max(arr.shape) / max_size))
    small = arr[::step, ::step]
    grow = max(1, 384 // max(small.shape))
    if grow > 1:
        small = np.repeat(np.repeat(small, grow, axis=0), grow, axis=1)
    lut = colour_lut(description, indices=indices)
    lut[description.nodata] = _PREVIEW_NODATA_RGBA
    rgba = lut[small]

    # Object-oriented Agg API: no pyplot global state, safe in threads and headless machines.
    require("matplotlib", purpose="drawing the map preview")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    handles: list[Patch] = []
    if legend:
        counts = np.bincount(arr.ravel(), minlength=256)
        for value, i in _values(description, indices=indices):
            if counts[value]:
                cls = description.classes[i]
                label = cls.name if indices else f"{cls.code} {cls.name}"
                handles.append(Patch(facecolor=cls.color, edgecolor="black", linewidth=0.3, label=label))
        if counts[description.nodata]:
            handles.append(
                Patch(facecolor=_PREVIEW_NODATA_HEX, edgecolor="black", linewidth=0.3, label="nodata")
            )
    dpi = 100
    h, w = rgba.shape[:2]
    legend_w = 230 if handles else 0
    legend_h = 22 * (len(handles) + (2 if title else 1))
    fig_w, fig_h = w + legend_w, max(h, legend_h)
    fig = Figure(figsize=(fig_w / dpi, fig_h / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.0, 1.0 - h / fig_h, w / fig_w, h / fig_h))
    ax.imshow(rgba, interpolation="nearest")
    ax.set_axis_off()
    if handles:
        fig.legend(
            handles=handles,
            loc="upper left",
            bbox_to_anchor=(w / fig_w, 1.0),
            frameon=False,
            fontsize=9,
            title=title,
            title_fontsize=10,
            alignment="left",
        )
    with atomic_path(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return path


def qgis_style_path(class_map: Path) -> Path:
    """Return the style QGIS loads by default for *class_map*: the same name with ``.qml``."""
    return class_map.with_suffix(".qml")


def qgis_style(description: ModelDescription, *, indices: bool = False) -> str:
    """Return a QGIS ``.qml`` paletted style naming and colouring every class.

    Nodata is transparent twice over: the renderer gives it no colour, and a transparency entry
    covers it even when the user turns off the layer's "no data value".

    Args:
        description: The model description.
        indices: Whether the map stores logit indices rather than class codes.
    """
    root = ET.Element("qgis", {"version": "3.28.0", "styleCategories": "AllStyleCategories"})
    pipe = ET.SubElement(root, "pipe")
    renderer = ET.SubElement(
        pipe,
        "rasterrenderer",
        {"type": "paletted", "band": "1", "opacity": "1", "alphaBand": "-1", "nodataColor": ""},
    )
    transparency = ET.SubElement(renderer, "rasterTransparency")
    pixels = ET.SubElement(transparency, "singleValuePixelList")
    nodata = str(description.nodata)
    ET.SubElement(pixels, "pixelListEntry", {"min": nodata, "max": nodata, "percentTransparent": "100"})
    palette = ET.SubElement(renderer, "colorPalette")
    for value, i in _values(description, indices=indices):
        cls = description.classes[i]
        ET.SubElement(
            palette,
            "paletteEntry",
            {"value": str(value), "color": cls.color.lower(), "alpha": "255", "label": cls.name},
        )
    return _qml_text(root)


def _qml_text(root: ET.Element) -> str:
    ET.indent(root)
    return (
        "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
        + ET.tostring(root, encoding="unicode")
        + "\n"
    )


#: Colour ramp of the probability style: ``(value, colour, label)``, red (unlikely, unsure) to green
#: (likely, sure). Values are ``round(255 x p)``, as ``detect --confidence`` and ``--probabilities``
#: write them.
PROBABILITY_RAMP: tuple[tuple[int, str, str], ...] = (
    (0, "#d7191c", "0 %"),
    (64, "#fdae61", "25 %"),
    (128, "#ffffbf", "50 %"),
    (191, "#a6d96a", "75 %"),
    (255, "#1a9641", "100 %"),
)


def probability_style(*, band: int = 1) -> str:
    """Return a QGIS ``.qml`` for a confidence or probability map: a pseudocolour ramp over 0-255.

    One band is drawn (QGIS would otherwise show a many-band probability raster as an RGB composite
    of its first three classes); pick another class's band in Layer Properties → Symbology. The ramp's
    limits are fixed (0 and 255, not the map's own min-max), so that two maps' colours mean the same
    probability; the items are labelled in percent. Pixels without a prediction are already
    transparent through the map's mask.

    Args:
        band: The 1-based band to draw (a probability raster's band *i* is logit index *i - 1*).
    """
    root = ET.Element("qgis", {"version": "3.28.0", "styleCategories": "AllStyleCategories"})
    pipe = ET.SubElement(root, "pipe")
    renderer = ET.SubElement(
        pipe,
        "rasterrenderer",
        {
            "type": "singlebandpseudocolor",
            "band": str(band),
            "opacity": "1",
            "alphaBand": "-1",
            "nodataColor": "",
            "classificationMin": "0",
            "classificationMax": "255",
        },
    )
    ET.SubElement(renderer, "rasterTransparency")
    origin = ET.SubElement(renderer, "minMaxOrigin")
    # "None": keep the limits given here instead of recomputing them from the map's statistics.
    for tag, text in [("limits", "None"), ("extent", "WholeRaster"), ("statAccuracy", "Estimated")]:
        ET.SubElement(origin, tag).text = text
    shader = ET.SubElement(ET.SubElement(renderer, "rastershader"), "colorrampshader")
    shader.attrib.update(
        {
            "colorRampType": "INTERPOLATED",
            "classificationMode": "1",
            "clip": "0",
            "minimumValue": "0",
            "maximumValue": "255",
            "labelPrecision": "0",
        }
    )
    for value, colour, label in PROBABILITY_RAMP:
        ET.SubElement(shader, "item", {"value": str(value), "color": colour, "alpha": "255", "label": label})
    return _qml_text(root)


def write_qgis_style(
    path: Path, description: ModelDescription, *, indices: bool = False, overwrite: bool = False
) -> Path:
    """Write a QGIS ``.qml`` paletted style with class names and colours (see :func:`qgis_style`).

    Name it like the raster (``map.qml`` beside ``map.tif``) and QGIS applies it on loading; otherwise
    load it from Layer Properties → Symbology → Style → Load Style.

    Args:
        path: Output ``.qml`` path.
        description: The model description.
        indices: Whether the map stores logit indices rather than class codes.
        overwrite: Replace an existing file.

    Returns:
        *path*.

    Raises:
        OutputError: If *path* exists without *overwrite*, or cannot be written (disk full,
            folder not writable); missing folders are created.
    """
    text = qgis_style(description, indices=indices)
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------------- GDAL PAM: categories, RAT
#: Columns of the raster attribute table: ``(name, GDALRATFieldType, GDALRATFieldUsage)`` with
#: GDAL's enum values (types: 0 integer, 2 string; usages: 0 generic, 2 name, 5 min-max, 6-9 red,
#: green, blue, alpha).
RAT_FIELDS: tuple[tuple[str, int, int], ...] = (
    ("value", 0, 5),
    ("code", 0, 0),
    ("name", 2, 2),
    ("red", 0, 6),
    ("green", 0, 7),
    ("blue", 0, 8),
    ("alpha", 0, 9),
)
_NODATA_CATEGORY = "nodata"


def category_names(description: ModelDescription, *, indices: bool = False) -> list[str]:
    """Return GDAL category names: entry *v* names map value *v*, for every value up to nodata.

    Class values get the class name, nodata ``"nodata"``, every other value an empty string (GDAL's
    convention for "no category").
    """
    values = _values(description, indices=indices)
    top = max([description.nodata, *(v for v, _ in values)])
    names = [""] * (top + 1)
    for value, i in values:
        names[value] = description.classes[i].name
    names[description.nodata] = _NODATA_CATEGORY
    return names


def _rat_rows(
    description: ModelDescription, *, indices: bool
) -> list[tuple[int, int, str, int, int, int, int]]:
    rows = []
    for value, i in sorted(_values(description, indices=indices)):
        cls = description.classes[i]
        rows.append((value, cls.code, cls.name, *cls.rgb(), 255))
    return rows


def class_map_pam(
    description: ModelDescription, *, indices: bool = False, existing: str | None = None
) -> str:
    """Return GDAL PAM XML (an ``.aux.xml``) giving band 1 category names and an attribute table.

    The table has one row per class (nodata has none: it is no class) with columns
    :data:`RAT_FIELDS`. Whatever else *existing* holds (statistics, metadata GDAL keeps there) is
    kept; only band 1's category names and attribute table are replaced.

    Args:
        description: The model description.
        indices: Whether the map stores logit indices rather than class codes.
        existing: The current ``.aux.xml`` text, if any.

    Raises:
        InputDataError: If *existing* is not PAM XML.
    """
    if existing is not None and existing.strip():
        try:
            root = ET.fromstring(existing)
        except ET.ParseError as exc:
            raise InputDataError(
                f"the class map's .aux.xml is not XML ({exc}); delete it and rerun"
            ) from None
        if root.tag != "PAMDataset":
            raise InputDataError(f"the class map's .aux.xml holds <{root.tag}>, not <PAMDataset>; delete it")
    else:
        root = ET.Element("PAMDataset")
    band = root.find("PAMRasterBand[@band='1']")
    if band is None:
        band = ET.SubElement(root, "PAMRasterBand", {"band": "1"})
    for old in band.findall("CategoryNames") + band.findall("GDALRasterAttributeTable"):
        band.remove(old)
    band.extend(class_band_elements(description, indices=indices))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def class_band_elements(description: ModelDescription, *, indices: bool = False) -> list[ET.Element]:
    """Return a class band's ``<CategoryNames>`` and ``<GDALRasterAttributeTable>`` XML elements.

    GDAL reads the same two elements in a PAM sidecar's ``<PAMRasterBand>`` and in a VRT's
    ``<VRTRasterBand>``: :func:`class_map_pam` and the mosaic VRT both use them.

    Args:
        description: The model description.
        indices: Whether the map stores logit indices rather than class codes.
    """
    categories = ET.Element("CategoryNames")
    for name in category_names(description, indices=indices):
        ET.SubElement(categories, "Category").text = name
    rat = ET.Element("GDALRasterAttributeTable", {"tableType": "thematic"})
    for index, (name, kind, usage) in enumerate(RAT_FIELDS):
        field = ET.SubElement(rat, "FieldDefn", {"index": str(index)})
        ET.SubElement(field, "Name").text = name
        ET.SubElement(field, "Type").text = str(kind)
        ET.SubElement(field, "Usage").text = str(usage)
    for index, row in enumerate(_rat_rows(description, indices=indices)):
        element = ET.SubElement(rat, "Row", {"index": str(index)})
        for cell in row:
            ET.SubElement(element, "F").text = str(cell)
    return [categories, rat]


def write_class_map_pam(raster: Path, description: ModelDescription, *, indices: bool = False) -> Path:
    """Add category names and a raster attribute table to *raster*'s ``.aux.xml`` sidecar.

    Call it once GDAL is done with the file (closed, overviews built): GDAL rewrites the sidecar of
    a dataset it holds open when it closes it. Other PAM content is kept (see :func:`class_map_pam`).

    Args:
        raster: The class map (a final path or the temporary it is written under).
        description: The model description.
        indices: Whether the map stores logit indices rather than class codes.

    Returns:
        The sidecar path, ``NAME.aux.xml`` beside *raster*.

    Raises:
        OSError: If the sidecar cannot be written (disk full, folder not writable); the caller names
            the map it belongs to. *raster* is the caller's temporary, renamed with its sidecar once
            complete (:class:`~flair_deploy.atomic.OutputSet`), so the sidecar needs no temporary of its own.
    """
    aux = raster.with_name(raster.name + ".aux.xml")
    existing = aux.read_text(encoding="utf-8") if aux.exists() else None
    aux.write_text(class_map_pam(description, indices=indices, existing=existing), encoding="utf-8")
    return aux
