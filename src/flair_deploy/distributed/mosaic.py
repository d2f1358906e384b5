"""The maps of a mosaic job as one map: a GDAL VRT over them, and optionally one COG.

A folder of orthophoto tiles (BD ORTHO ships 5 km tiles) gives one class map per tile; users want the
department or the country as one layer. :func:`write_mosaic_vrt` writes a GDAL VRT (the format GDAL's
``gdalbuildvrt`` writes) over the class maps, with their colour table, nodata, class tags, category
names and attribute table, and the QGIS style beside it (``mosaic.qml``, which QGIS also applies to
``mosaic.tif``), so QGIS and GDAL open the whole mosaic at once, named and coloured, and nothing is
copied. :func:`merge_to_cog` turns it into one Cloud-Optimised GeoTIFF with GDAL's COG driver, block by
block (mode-resampled overviews), with the category names and attribute table in its ``.aux.xml``,
written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from xml.sax.saxutils import escape

import rasterio

from flair_deploy.atomic import atomic_path, write_text
from flair_deploy.description import ModelDescription
from flair_deploy.errors import InputDataError
from flair_deploy.maps import class_band_elements, qgis_style, qgis_style_path, write_class_map_pam

__all__ = ["merge_to_cog", "write_mosaic_vrt"]


def write_mosaic_vrt(
    maps: Sequence[Path], out: Path, description: ModelDescription, *, indices: bool = False
) -> Path:
    """Write a VRT over class maps that share a CRS and a pixel size, and its QGIS style.

    Args:
        maps: Single-band class maps (``detect``'s outputs).
        out: The ``.vrt`` to write (atomically); its style goes beside it (``NAME.qml``).
        description: The model description the maps were made with (class names and colours).
        indices: Whether the maps store logit indices rather than class codes.

    Returns:
        *out*.

    Raises:
        InputDataError: If the maps do not share a CRS and a pixel size (one line naming the first
            that differs), or one cannot be read.
    """
    if not maps:
        raise InputDataError("no class map to put in a mosaic; map some rasters first")
    headers = []
    band_description = ""
    for p in maps:
        try:
            with rasterio.open(p) as ds:
                headers.append(
                    (p, ds.crs, ds.transform, ds.width, ds.height, ds.nodata, ds.colormap(1), ds.tags())
                )
                band_description = band_description or ds.descriptions[0] or ""
        except (rasterio.errors.RasterioError, ValueError) as exc:
            raise InputDataError(f"cannot read class map {p}: {str(exc).splitlines()[0]}") from None
    _, crs, t0, *_rest = headers[0]
    for p, c, t, *_ in headers[1:]:
        if c != crs or not (math.isclose(t.a, t0.a) and math.isclose(t.e, t0.e)) or t.b or t.d:
            raise InputDataError(
                f"{p.name} has another CRS or pixel size than {headers[0][0].name}; a mosaic VRT needs one "
                "grid: map rasters of one product (reproject the others first)"
            )
    xres, yres = t0.a, t0.e
    left = min(t.c for _, _, t, *_ in headers)
    top = max(t.f for _, _, t, *_ in headers)
    right = max(t.c + w * xres for _, _, t, w, *_ in headers)
    bottom = min(t.f + h * yres for _, _, t, _w, h, *_ in headers)
    width, height = round((right - left) / xres), round((bottom - top) / yres)
    nodata, colours, tags = headers[0][5], headers[0][6], headers[0][7]
    sources = []
    for p, _, t, w, h, *_ in headers:
        x, y = round((t.c - left) / xres), round((t.f - top) / yres)
        sources.append(
            f'    <ComplexSource><SourceFilename relativeToVRT="0">{escape(str(p.resolve()))}</SourceFilename>'
            f"<SourceBand>1</SourceBand>"
            f'<SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>'
            f'<DstRect xOff="{x}" yOff="{y}" xSize="{w}" ySize="{h}"/>'
            + (f"<NODATA>{nodata:g}</NODATA>" if nodata is not None else "")
            + "</ComplexSource>"
        )
    entries = "".join(
        f'<Entry c1="{r}" c2="{g}" c3="{b}" c4="{a}"/>' for _, (r, g, b, a) in sorted(colours.items())
    )
    meta = "".join(f'<MDI key="{escape(k)}">{escape(v)}</MDI>' for k, v in sorted(tags.items()))
    # GDAL reads category names and the attribute table in a VRT band as in a PAM sidecar.
    categories = "".join(
        ET.tostring(e, encoding="unicode") for e in class_band_elements(description, indices=indices)
    )
    xml = (
        f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">\n'
        f"  <SRS>{escape(crs.to_wkt()) if crs else ''}</SRS>\n"
        f"  <GeoTransform>{left!r}, {xres!r}, 0.0, {top!r}, 0.0, {yres!r}</GeoTransform>\n"
        f"  <Metadata>{meta}</Metadata>\n"
        f'  <VRTRasterBand dataType="Byte" band="1">\n'
        + (f"    <NoDataValue>{nodata:g}</NoDataValue>\n" if nodata is not None else "")
        + f"    <Description>{escape(band_description)}</Description>\n"
        "    <ColorInterp>Palette</ColorInterp>\n"
        f"    <ColorTable>{entries}</ColorTable>\n"
        f"    {categories}\n" + "\n".join(sources) + "\n  </VRTRasterBand>\n</VRTDataset>\n"
    )
    write_text(out, xml)
    # QGIS applies NAME.qml to NAME.vrt and NAME.tif alike: one style serves the VRT and the merged COG.
    write_text(qgis_style_path(out), qgis_style(description, indices=indices))
    return out


def merge_to_cog(
    vrt: Path,
    out: Path,
    description: ModelDescription,
    *,
    indices: bool = False,
    block: int = 512,
    compress: str = "DEFLATE",
) -> Path:
    """Copy a mosaic VRT into one Cloud-Optimised GeoTIFF (GDAL's COG driver, mode overviews).

    The COG keeps the VRT's colour table, nodata and tags; its category names and attribute table go
    into its ``.aux.xml`` (GeoTIFF has no place for them), renamed into place with it.

    Args:
        vrt: The mosaic VRT (:func:`write_mosaic_vrt`).
        out: The ``.tif`` to write.
        description: The model description the maps were made with.
        indices: Whether the maps store logit indices rather than class codes.
        block: COG block size in pixels.
        compress: GDAL compression name.

    Raises:
        OutputError: If the COG cannot be written (full disk...).
    """
    from rasterio.shutil import copy as gdal_copy

    with atomic_path(out) as tmp, rasterio.Env(GDAL_NUM_THREADS="ALL_CPUS"):
        gdal_copy(
            vrt,
            tmp,
            driver="COG",
            compress=compress,
            predictor="YES",
            bigtiff="IF_SAFER",
            blocksize=str(block),
            resampling="MODE",
            overview_resampling="MODE",
            num_threads="ALL_CPUS",
        )
        # After GDAL closed the file: GDAL rewrites the sidecar of a dataset it holds open.
        write_class_map_pam(tmp, description, indices=indices)
    return out
