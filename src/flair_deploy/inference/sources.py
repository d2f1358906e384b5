"""Assemble a model's bands from several rasters, on the fly, as a GDAL VRT.

IGN ships what a FLAIR model reads (R, G, B, NIR, E at 0.2 m) as separate products: the BD ORTHO RVB
ortho (R, G, B), the BD ORTHO IRC ortho (NIR, R, G: infrared colour), both JPEG 2000 or GeoTIFF in 5 km
tiles, and an elevation model on another grid. ``detect`` reads one raster holding every band, so
:func:`assemble_bands` writes a VRT that GDAL composes while reading: nothing full-size is written.

* Each model band is a :class:`BandSource`: a raster, a 1-based band of it, an optional affine scaling
  ``value * scale + offset`` and a resampling for a source on another grid.
* A source on the reference grid (same CRS and pixel size, pixel-aligned, covering it) is read directly
  through a ``ComplexSource`` window. Any other source is first warped onto the reference grid by a
  ``VRTWarpedDataset`` written next to the VRT (``<name>.band<N>.warp.xml``: not a ``.vrt`` suffix,
  so folder listings for ``detect`` do not take it as an input; GDAL opens it by content). That warp is
  the one ``rasterio.warp.reproject`` performs, with the same resampling.
* The VRT has the data type of the reference band (uint8 for BD ORTHO). Scaled values are rounded to
  the nearest integer and clipped to that type's range (0..255 for uint8) by GDAL.
* Nodata: the reference band's nodata value goes on every band and each source's own nodata pixels are
  left unwritten; as in GDAL's dataset mask (which ``detect`` reads), a pixel is nodata when every band is.

FLAIR's E band is not an altitude: it is the height above ground (a normalised surface model, DSM
minus DTM) encoded in 8 bits with **1 unit = 0.2 m**, i.e. ``E = height_m * 5`` (FLAIR #1 data
description; :mod:`flair_deploy.sample` renders it the same way). A height model in metres therefore
takes ``scale=5.0, offset=0.0`` (:data:`FLAIR_ELEVATION_SCALE`); heights above 51 m clip to 255. A
terrain model such as RGE ALTI is an altitude above sea level, not a height above ground: subtract it
from a surface model first, or expect the network to see values it was not trained on.

:func:`match_tiles` pairs folders of BD ORTHO tiles by the ``XXXX-YYYY`` kilometre coordinates IGN puts
in every tile name (``D075-2021-0650-6865-LA93-0M20-RVB-E080.jp2``; RGE ALTI: ``..._0650_6865_MNT_...``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from flair_deploy.atomic import check_destination, temporary_path, write_text
from flair_deploy.errors import ConfigError, InputDataError
from flair_deploy.flair_format import RASTER_SUFFIXES, PatchPair

if TYPE_CHECKING:
    from flair_deploy.description import ModelDescription

__all__ = [
    "FLAIR_ELEVATION_SCALE",
    "FLAIR_ELEVATION_UNIT_M",
    "RESAMPLINGS",
    "BandInput",
    "BandSource",
    "MatchedTile",
    "assemble_bands",
    "assembled_inputs",
    "assembled_patches",
    "bd_ortho_sources",
    "find_partner",
    "match_tiles",
    "parse_band_spec",
    "plan_band_inputs",
    "tile_key",
]

#: Height above ground of one unit of FLAIR's E band, in metres.
FLAIR_ELEVATION_UNIT_M = 0.2
#: Scale turning a height above ground in metres into FLAIR's E band (``1 / FLAIR_ELEVATION_UNIT_M``).
FLAIR_ELEVATION_SCALE = 5.0
#: Resampling names accepted for a source on another grid (GDAL warp kernels).
RESAMPLINGS: tuple[str, ...] = (
    "nearest",
    "bilinear",
    "cubic",
    "cubic_spline",
    "lanczos",
    "average",
    "mode",
    "min",
    "max",
    "med",
)
# Suffixes taken as tiles by match_tiles: the detect rasters plus RGE ALTI's ASCII grids.
_TILE_SUFFIXES = (*RASTER_SUFFIXES, ".asc")
# Lambert-93 kilometre ranges of metropolitan France (with margin): they tell the tile corner apart
# from the other four-digit pairs of a name (e.g. "2021-0650" in D075-2021-0650-6865-...).
_L93_X_KM = range(1400)
_L93_Y_KM = range(6000, 7200)
_PAIR = re.compile(r"(?=(?<!\d)(\d{4})[-_](\d{4})(?!\d))")


@dataclass(frozen=True, slots=True)
class BandSource:
    """Where one model band comes from.

    Attributes:
        path: The raster (GeoTIFF, JPEG 2000, VRT, any GDAL raster).
        band: 1-based band of that raster.
        scale: Multiplies the value (``value * scale + offset``); FLAIR's E band from a height in metres
            takes :data:`FLAIR_ELEVATION_SCALE`.
        offset: Added after scaling.
        resampling: Kernel for a source on another grid (one of :data:`RESAMPLINGS`); None picks
            bilinear for floating-point sources (elevation) and nearest for integer ones (imagery).
    """

    path: Path
    band: int = 1
    scale: float = 1.0
    offset: float = 0.0
    resampling: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        if isinstance(self.band, bool) or not isinstance(self.band, int) or self.band < 1:
            raise ConfigError(
                f"band source {self.path.name} has band {self.band!r}; expected a 1-based band number (1, 2, ...)"
            )
        if not (math.isfinite(self.scale) and math.isfinite(self.offset)):
            raise ConfigError(
                f"band source {self.path.name} has scale {self.scale} and offset {self.offset}; "
                "expected finite numbers"
            )
        if self.resampling is not None and self.resampling not in RESAMPLINGS:
            raise ConfigError(
                f"band source {self.path.name} has resampling {self.resampling!r}; "
                f"expected one of {', '.join(RESAMPLINGS)}"
            )

    @classmethod
    def elevation(
        cls,
        path: Path,
        band: int = 1,
        *,
        scale: float = FLAIR_ELEVATION_SCALE,
        offset: float = 0.0,
        resampling: str = "bilinear",
    ) -> BandSource:
        """A FLAIR E band from a height-above-ground raster in metres (1 unit = 0.2 m by default).

        Args:
            path: The height raster.
            band: Its 1-based band.
            scale: Units per metre (default: FLAIR's encoding).
            offset: Added after scaling.
            resampling: Kernel onto the reference grid.
        """
        return cls(Path(path), band, scale, offset, resampling)

    @property
    def scaled(self) -> bool:
        """Whether the value is transformed (``scale != 1`` or ``offset != 0``)."""
        return self.scale != 1.0 or self.offset != 0.0


def bd_ortho_sources(
    rvb: Path,
    irc: Path,
    elevation: Path | None = None,
    *,
    elevation_scale: float = FLAIR_ELEVATION_SCALE,
    elevation_offset: float = 0.0,
) -> tuple[BandSource, ...]:
    """FLAIR's band order from BD ORTHO products: R, G, B from RVB, NIR from IRC band 1, E if given.

    Args:
        rvb: The RVB ortho (bands R, G, B).
        irc: The IRC ortho of the same tile (bands NIR, R, G).
        elevation: A height-above-ground raster in metres; None gives the four bands R, G, B, NIR.
        elevation_scale: Units of E per metre of height.
        elevation_offset: Added after scaling.
    """
    bands = [
        BandSource(Path(rvb), 1),
        BandSource(Path(rvb), 2),
        BandSource(Path(rvb), 3),
        BandSource(Path(irc), 1),
    ]
    if elevation is not None:
        bands.append(BandSource.elevation(Path(elevation), scale=elevation_scale, offset=elevation_offset))
    return tuple(bands)


@dataclass(frozen=True, slots=True)
class _Grid:
    """A raster's grid, as read once from its header."""

    path: Path
    crs: Any  # rasterio.crs.CRS or None
    transform: Any  # affine.Affine
    width: int
    height: int
    bounds: tuple[float, float, float, float]
    count: int
    dtypes: tuple[str, ...]
    nodatavals: tuple[float | None, ...]


def _read_grid(path: Path) -> _Grid:
    import rasterio

    if not path.is_file():
        raise InputDataError(f"band source {path} does not exist; give an existing raster file")
    try:
        with rasterio.open(path) as src:
            b = src.bounds
            return _Grid(
                path=path,
                crs=src.crs,
                transform=src.transform,
                width=src.width,
                height=src.height,
                bounds=(b.left, b.bottom, b.right, b.top),
                count=src.count,
                dtypes=tuple(src.dtypes),
                nodatavals=tuple(src.nodatavals),
            )
    except rasterio.errors.RasterioIOError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputDataError(
            f"cannot read band source {path}: {first}; give a raster GDAL can open"
        ) from None


def _crs_name(crs: Any) -> str:
    if crs is None:
        return "no CRS"
    string = getattr(crs, "to_string", None)
    return str(string()) if callable(string) else str(crs)


def _units(crs: Any) -> str:
    units = getattr(crs, "linear_units", "") if crs is not None else ""
    return "m" if units in ("metre", "meter", "m") else "CRS units"


def _aligned_offset(src: _Grid, ref: _Grid) -> tuple[int, int] | None:
    """The source's pixel offset of the reference's corner when both grids coincide there, else None."""
    s, r = src.transform, ref.transform
    if src.crs != ref.crs or (s.b, s.d, r.b, r.d) != (0.0, 0.0, 0.0, 0.0):
        return None
    if not (math.isclose(s.a, r.a, rel_tol=1e-9) and math.isclose(s.e, r.e, rel_tol=1e-9)):
        return None
    dx = (r.c - s.c) / s.a
    dy = (r.f - s.f) / s.e
    ix, iy = round(dx), round(dy)
    # A thousandth of a pixel absorbs the decimal noise of georeferencing headers.
    if abs(dx - ix) > 1e-3 or abs(dy - iy) > 1e-3:
        return None
    if ix < 0 or iy < 0 or ix + ref.width > src.width or iy + ref.height > src.height:
        return None
    return ix, iy


def _check_covers(src: _Grid, ref: _Grid, *, reproject: bool) -> None:
    if src.crs != ref.crs:
        if not reproject:
            raise InputDataError(
                f"band source {src.path.name} is in {_crs_name(src.crs)} but the reference {ref.path.name} is in "
                f"{_crs_name(ref.crs)}; pass --reproject (reproject=True) to warp it onto the reference grid, or give a source "
                f"in {_crs_name(ref.crs)}"
            )
        from rasterio.warp import transform_bounds

        bounds = transform_bounds(src.crs, ref.crs, *src.bounds, densify_pts=21)
    else:
        bounds = src.bounds
    left, bottom, right, top = bounds
    rl, rb, rr, rt = ref.bounds
    short = {"west": left - rl, "south": bottom - rb, "east": rr - right, "north": rt - top}
    # A thousandth of a reference pixel: rounding in headers, not a gap.
    tol = 1e-3 * abs(ref.transform.a)
    gaps = [f"{v:.6g} {_units(ref.crs)} {side}" for side, v in short.items() if v > tol]
    if gaps:
        raise InputDataError(
            f"band source {src.path.name} does not cover the reference {ref.path.name}: it stops short by "
            f"{', '.join(gaps)} (source bounds {tuple(round(v, 3) for v in bounds)}, reference bounds "
            f"{tuple(round(v, 3) for v in ref.bounds)}); give a source that covers the reference, or another reference"
        )


def _warp_xml(source: BandSource, src: _Grid, ref: _Grid, resampling: str) -> str:
    """The ``VRTWarpedDataset`` of *source*'s band onto the reference grid, as GDAL serialises it."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    with (
        rasterio.open(src.path) as ds,
        WarpedVRT(
            ds,
            crs=ref.crs,
            transform=ref.transform,
            width=ref.width,
            height=ref.height,
            resampling=Resampling[resampling],
        ) as vrt,
    ):
        text = vrt.tags(ns="xml:VRT")["xml:VRT"]
    root = ET.fromstring(text)
    # GDAL writes the source as opened; an absolute path keeps the file valid wherever it is read from.
    dataset = root.find("GDALWarpOptions/SourceDataset")
    if dataset is None:  # pragma: no cover - GDAL always serialises it
        raise InputDataError(
            f"cannot warp band source {src.path.name}: GDAL gave no source in its warped VRT"
        )
    dataset.text = str(src.path.resolve())
    dataset.set("relativeToVRT", "0")
    return ET.tostring(root, encoding="unicode")


def _gdal_type(dtype: str) -> str:
    import rasterio.dtypes

    return str(rasterio.dtypes._gdal_typename(dtype))


def _nodata_fits(value: float | None, dtype: str) -> bool:
    if value is None or not math.isfinite(value):
        return value is not None and np.issubdtype(np.dtype(dtype), np.floating)
    if np.issubdtype(np.dtype(dtype), np.integer):
        info = np.iinfo(np.dtype(dtype))
        return float(value).is_integer() and info.min <= value <= info.max
    return True


def _num(value: float) -> str:
    return repr(float(value))


def assemble_bands(
    sources: Sequence[BandSource],
    out_vrt: Path,
    *,
    reference: Path | None = None,
    reproject: bool = False,
    model: ModelDescription | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a VRT holding one band per source, on the reference grid, and return its path.

    Sources on the reference grid are read through a window; others are warped onto it (see the module
    docstring). The VRT has the reference band's data type; scaled values are rounded and clipped to it.
    When the reference band has a nodata value the VRT's bands take it (so ``detect``'s dataset mask
    still marks pixels nodata in every source), and each source's own nodata pixels are left unwritten.

    Args:
        sources: The model's bands, in the model's order.
        out_vrt: The VRT to write; warped sources go next to it as ``<name>.band<N>.warp.xml``.
        reference: Raster whose grid (CRS, transform, size) and data type the VRT takes; default: the
            first source's raster.
        reproject: Warp sources in another CRS onto the reference's; without it they are refused.
        model: When given, the number of sources must match its bands.
        overwrite: Replace an existing *out_vrt*.

    Returns:
        *out_vrt*.

    Raises:
        ConfigError: No source, or a source count that does not match *model*.
        InputDataError: A missing or unreadable raster, a band the raster lacks, another CRS without
            *reproject*, a source that does not cover the reference.
        OutputError: *out_vrt* exists without *overwrite*, or cannot be written.
    """
    out_vrt = Path(out_vrt)
    if not sources:
        raise ConfigError("assemble_bands got no band source; give one BandSource per model band")
    if model is not None and len(sources) != len(model.bands):
        raise ConfigError(
            f"assemble_bands got {len(sources)} band source(s) but model {model.name!r} takes {len(model.bands)} "
            f"({', '.join(model.bands)}); give one BandSource per model band, in that order"
        )
    check_destination(out_vrt, overwrite=overwrite, what="band VRT")
    ref = _read_grid(Path(reference) if reference is not None else sources[0].path)
    ref_band = sources[0].band if reference is None else 1
    if ref_band > ref.count:
        ref_band = 1  # the band check below reports the bad source; the type comes from band 1
    dtype = ref.dtypes[ref_band - 1]
    nodata = ref.nodatavals[ref_band - 1]
    band_nodata = nodata if _nodata_fits(nodata, dtype) else None

    grids: dict[Path, _Grid] = {ref.path: ref}
    bands_xml: list[str] = []
    warps: dict[Path, str] = {}
    for n, source in enumerate(sources, start=1):
        src = grids.get(source.path) or _read_grid(source.path)
        grids[source.path] = src
        if source.band > src.count:
            raise InputDataError(
                f"band source {n} asks for band {source.band} of {src.path.name}, which has bands 1..{src.count}; "
                "bands are 1-based"
            )
        _check_covers(src, ref, reproject=reproject)
        offset = _aligned_offset(src, ref)
        if offset is None:
            kind = src.dtypes[source.band - 1]
            resampling = source.resampling or (
                "bilinear" if np.issubdtype(np.dtype(kind), np.floating) else "nearest"
            )
            warp_path = out_vrt.with_name(f"{out_vrt.name}.band{n}.warp.xml")
            warps[warp_path] = _warp_xml(source, src, ref, resampling)
            filename, relative, src_band, (x_off, y_off) = warp_path.name, "1", source.band, (0, 0)
        else:
            filename, relative, src_band, (x_off, y_off) = str(src.path.resolve()), "0", source.band, offset
        src_nodata = src.nodatavals[source.band - 1]
        parts = [
            f'<SourceFilename relativeToVRT="{relative}">{_escape(filename)}</SourceFilename>',
            f"<SourceBand>{src_band}</SourceBand>",
            f'<SrcRect xOff="{x_off}" yOff="{y_off}" xSize="{ref.width}" ySize="{ref.height}" />',
            f'<DstRect xOff="0" yOff="0" xSize="{ref.width}" ySize="{ref.height}" />',
        ]
        if src_nodata is not None:
            parts.append(f"<NODATA>{_num(src_nodata)}</NODATA>")
        if source.scaled:
            parts += [
                f"<ScaleOffset>{_num(source.offset)}</ScaleOffset>",
                f"<ScaleRatio>{_num(source.scale)}</ScaleRatio>",
            ]
        element = "ComplexSource" if source.scaled or src_nodata is not None else "SimpleSource"
        no_value = f"    <NoDataValue>{_num(band_nodata)}</NoDataValue>\n" if band_nodata is not None else ""
        description = f"{src.path.name} band {source.band}" + (
            f" x {source.scale:g} + {source.offset:g}" if source.scaled else ""
        )
        bands_xml.append(
            f'  <VRTRasterBand dataType="{_gdal_type(dtype)}" band="{n}">\n'
            f"    <Description>{_escape(description)}</Description>\n{no_value}"
            f"    <{element}>\n      " + "\n      ".join(parts) + f"\n    </{element}>\n  </VRTRasterBand>\n"
        )
    srs = f"  <SRS>{_escape(ref.crs.to_wkt())}</SRS>\n" if ref.crs is not None else ""
    geo = ", ".join(_num(v) for v in ref.transform.to_gdal())
    text = (
        f'<VRTDataset rasterXSize="{ref.width}" rasterYSize="{ref.height}">\n{srs}'
        f"  <GeoTransform>{geo}</GeoTransform>\n" + "".join(bands_xml) + "</VRTDataset>\n"
    )
    for path, warp in warps.items():
        write_text(path, warp)
    write_text(out_vrt, text)
    return out_vrt


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


class MatchedTile(NamedTuple):
    """One tile's products, matched by their kilometre coordinates.

    Attributes:
        key: ``(x_km, y_km)``: the tile corner IGN puts in the names.
        rvb: The RVB ortho.
        irc: The IRC ortho.
        dem: The elevation tile, or None when no elevation folder was given.
    """

    key: tuple[int, int]
    rvb: Path
    irc: Path
    dem: Path | None


def tile_key(name: str) -> tuple[int, int] | None:
    """The ``(x_km, y_km)`` Lambert-93 corner an IGN tile name carries, or None.

    ``D075-2021-0650-6865-LA93-0M20-RVB-E080.jp2`` and ``RGEALTI_FXX_0650_6865_MNT_LAMB93_IGN69.asc``
    both give ``(650, 6865)``. Of the four-digit pairs in a name, the one in metropolitan France's
    Lambert-93 range is taken (the year-and-x pair is not).

    Args:
        name: A file name.
    """
    found = {
        (int(x), int(y))
        for x, y in _PAIR.findall(Path(name).stem)
        if int(x) in _L93_X_KM and int(y) in _L93_Y_KM
    }
    return found.pop() if len(found) == 1 else None


def _tiles(folder: Path, what: str) -> dict[tuple[int, int], Path]:
    if not folder.is_dir():
        raise InputDataError(f"{what} folder {folder} is not a folder; give the folder of {what} tiles")
    files = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in _TILE_SUFFIXES and not p.name.startswith(".")
    )
    if not files:
        raise InputDataError(
            f"{what} folder {folder} holds no tile ({', '.join(_TILE_SUFFIXES)}); give the folder of {what} tiles"
        )
    tiles: dict[tuple[int, int], Path] = {}
    unnamed: list[str] = []
    for path in files:
        key = tile_key(path.name)
        if key is None:
            unnamed.append(path.name)
        elif key in tiles:
            raise InputDataError(
                f"{what} folder {folder} holds two tiles at {key[0]:04d}-{key[1]:04d}: {tiles[key].name} and "
                f"{path.name}; keep one product per folder"
            )
        else:
            tiles[key] = path
    if unnamed:
        raise InputDataError(
            f"{what} folder {folder} holds {len(unnamed)} file(s) without an IGN tile corner in their name "
            f"({_few(unnamed)}); expected names such as D075-2021-0650-6865-LA93-0M20-RVB-E080.jp2"
        )
    return tiles


def _few(names: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def match_tiles(rvb_dir: Path, irc_dir: Path, dem_dir: Path | None = None) -> list[MatchedTile]:
    """Pair BD ORTHO RVB and IRC tiles (and elevation tiles) by the kilometre corner in their names.

    Args:
        rvb_dir: Folder of RVB tiles.
        irc_dir: Folder of IRC tiles.
        dem_dir: Folder of elevation tiles on the same tiling (5 km), or None. Elevation tiled otherwise
            (RGE ALTI 1 m comes in 1 km tiles) is better mosaicked into one VRT and given to every tile.

    Returns:
        One :class:`MatchedTile` per tile, sorted by corner.

    Raises:
        InputDataError: A missing or empty folder, a file whose name carries no tile corner, two tiles
            at one corner, or tiles present in one folder and not in another.
    """
    folders = {"RVB": Path(rvb_dir), "IRC": Path(irc_dir)}
    if dem_dir is not None:
        folders["elevation"] = Path(dem_dir)
    found = {what: _tiles(folder, what) for what, folder in folders.items()}
    every = set().union(*(set(t) for t in found.values()))
    missing = {what: sorted(every - set(tiles)) for what, tiles in found.items()}
    if any(missing.values()):
        lacks = "; ".join(
            f"{what} lacks {len(keys)} ({_few([f'{x:04d}-{y:04d}' for x, y in keys])})"
            for what, keys in missing.items()
            if keys
        )
        raise InputDataError(
            f"tiles do not match across folders: {lacks}; give every product for each tile, "
            "or remove the unmatched tiles"
        )
    dem = found.get("elevation", {})
    return [MatchedTile(key, found["RVB"][key], found["IRC"][key], dem.get(key)) for key in sorted(every)]


# ``PATH[:BAND][*SCALE][+OFFSET]``: the tail is optional and read from the right, so a path may hold
# colons or signs as long as it does not end like a band or a scaling.
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_SPEC = re.compile(
    rf"^(?P<path>.+?)(?::(?P<band>\d+))?(?:\*(?P<scale>-?{_NUMBER}))?(?P<offset>[-+]{_NUMBER})?$"
)


def parse_band_spec(spec: str, *, resampling: str | None = None) -> BandSource:
    """A :class:`BandSource` from ``PATH[:BAND][*SCALE][+OFFSET]`` (``--band`` on the command line).

    ``rvb.jp2:3`` is band 3 of ``rvb.jp2``; ``height.tif*5`` is band 1 scaled by 5 (FLAIR's E from metres);
    ``height.tif:1*5-10`` also subtracts 10 after scaling. The band defaults to 1, the scale to 1 and the
    offset to 0.

    Args:
        spec: The text.
        resampling: Kernel for a source on another grid (None: by data type, see :class:`BandSource`).

    Raises:
        ConfigError: An empty spec, or a band number below 1.
    """
    match = _SPEC.match(spec.strip())
    if match is None:
        raise ConfigError(
            f"--band {spec!r} is not PATH[:BAND][*SCALE][+OFFSET]; e.g. rvb.jp2:1 or height.tif*5"
        )
    return BandSource(
        Path(match["path"]),
        int(match["band"]) if match["band"] else 1,
        float(match["scale"]) if match["scale"] else 1.0,
        float(match["offset"]) if match["offset"] else 0.0,
        resampling,
    )


@dataclass(frozen=True, slots=True)
class BandInput:
    """One raster ``detect`` maps, assembled from band sources.

    Attributes:
        name: File stem of its VRT, which names its outputs (``NAME_classes.tif`` in an output folder):
            the RVB tile's stem, or the first ``--band`` source's.
        sources: Its bands, in the model's order.
    """

    name: str
    sources: tuple[BandSource, ...]


def plan_band_inputs(
    *,
    rvb: Path | None = None,
    irc: Path | None = None,
    elevation: Path | None = None,
    bands: Sequence[str] = (),
    elevation_scale: float = FLAIR_ELEVATION_SCALE,
    elevation_offset: float = 0.0,
    resampling: str | None = None,
) -> list[BandInput]:
    """The rasters to assemble: one per BD ORTHO tile (folders matched by :func:`match_tiles`) or one.

    Either *rvb* and *irc* (files of one tile, or folders of tiles matched by name) with an optional
    *elevation* (a file used for every tile, e.g. a VRT mosaic of RGE ALTI tiles, or a folder matched by
    name), or *bands*: ``PATH[:BAND][*SCALE][+OFFSET]`` texts, one per model band (:func:`parse_band_spec`).

    Args:
        rvb: RVB ortho file or folder.
        irc: IRC ortho file or folder (the same kind as *rvb*).
        elevation: Height-above-ground file or folder, in metres.
        bands: Explicit band sources, instead of *rvb*/*irc*/*elevation*.
        elevation_scale: Units of E per metre of height.
        elevation_offset: Added after scaling.
        resampling: Kernel for sources on another grid (None: bilinear for floats, nearest otherwise).

    Raises:
        ConfigError: An inconsistent choice (RVB without IRC, bands with products, file and folder mixed).
        InputDataError: Missing paths, unmatched or unnamed tiles.
    """
    if bands:
        if rvb is not None or irc is not None or elevation is not None:
            raise ConfigError(
                "--band was given with --rvb/--irc/--elevation; give either --band for every model band, "
                "or the products"
            )
        parsed = tuple(parse_band_spec(b, resampling=resampling) for b in bands)
        return [BandInput(parsed[0].path.stem, parsed)]
    if rvb is None or irc is None:
        given, lacking = ("--rvb", "--irc") if irc is None else ("--irc", "--rvb")
        if rvb is None and irc is None:
            raise ConfigError("no band source given; give --rvb and --irc (and --elevation), or --band")
        raise ConfigError(
            f"{given} was given without {lacking}; BD ORTHO inputs need both the RVB and the IRC ortho"
        )
    rvb, irc = Path(rvb), Path(irc)
    for what, path in (("--rvb", rvb), ("--irc", irc), ("--elevation", elevation)):
        if path is not None and not Path(path).exists():
            raise InputDataError(f"{what} {path} does not exist; give an existing file or folder of tiles")
    if rvb.is_dir() != irc.is_dir():
        raise ConfigError(
            f"--rvb {rvb} and --irc {irc} are not both folders or both files; give two files of one tile "
            "or two folders of tiles"
        )

    def one(r: Path, i: Path, e: Path | None) -> BandInput:
        sources = bd_ortho_sources(
            r, i, e, elevation_scale=elevation_scale, elevation_offset=elevation_offset
        )
        if resampling is not None:
            sources = tuple(dataclasses.replace(s, resampling=resampling) for s in sources)
        return BandInput(r.stem, sources)

    if not rvb.is_dir():
        if elevation is not None and Path(elevation).is_dir():
            raise ConfigError(
                f"--elevation {elevation} is a folder but --rvb {rvb} is one tile; give the tile's elevation file"
            )
        return [one(rvb, irc, None if elevation is None else Path(elevation))]
    elevation_dir = Path(elevation) if elevation is not None and Path(elevation).is_dir() else None
    tiles = match_tiles(rvb, irc, elevation_dir)
    shared = Path(elevation) if elevation is not None and elevation_dir is None else None
    return [one(t.rvb, t.irc, t.dem if elevation_dir is not None else shared) for t in tiles]


@contextlib.contextmanager
def assembled_inputs(
    inputs: Sequence[BandInput], beside: Path, *, reproject: bool = False
) -> Iterator[tuple[Path, ...]]:
    """Write each input's VRT (and warp files) in a hidden folder beside *beside*; remove it after.

    The folder is ``.NAME.bands.<pid>.part`` next to *beside* (the first output map): on the output's
    file system, so GDAL reads the sources by absolute paths wherever the maps are written, and named
    as the temporaries of that map, so a run that was killed is cleaned up by the next run's stale
    temporary removal. It holds only small XML files: GDAL composes and warps the bands while reading.
    It is removed when the block ends, successfully or not, with the folders it had to create.

    Args:
        inputs: From :func:`plan_band_inputs`.
        beside: The first output map (its folder need not exist yet).
        reproject: Warp sources in another CRS onto the RVB ortho's.

    Yields:
        One VRT per input, named ``<input name>.vrt``, in input order.

    Raises:
        InputDataError: A source that is missing, unreadable, lacks the band asked for, is in another
            CRS without *reproject*, or does not cover its tile (see :func:`assemble_bands`).
    """
    beside = Path(beside)
    created: list[Path] = []
    folder = beside.parent
    while not folder.is_dir():
        created.append(folder)
        folder = folder.parent
    tmp = temporary_path(beside.with_name(f"{beside.name}.bands"))
    try:
        for made in reversed(created):
            made.mkdir()
        tmp.mkdir()
        yield tuple(assemble_bands(i.sources, tmp / f"{i.name}.vrt", reproject=reproject) for i in inputs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        for made in created:  # innermost first; only those still empty
            with contextlib.suppress(OSError):
                made.rmdir()


def _keyed(folder: Path) -> dict[tuple[int, int], Path]:
    """The files of *folder* whose names carry an IGN tile corner, by corner (others are ignored)."""
    tiles: dict[tuple[int, int], Path] = {}
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.suffix.lower() not in _TILE_SUFFIXES or p.name.startswith("."):
            continue
        key = tile_key(p.name)
        if key is not None:
            if key in tiles:
                raise InputDataError(
                    f"folder {folder} holds two tiles at {key[0]:04d}-{key[1]:04d}: {tiles[key].name} and "
                    f"{p.name}; keep one product per folder"
                )
            tiles[key] = p
    return tiles


def find_partner(image: Path, where: Path, what: str, *, cache: dict[Path, Any] | None = None) -> Path:
    """The *what* product (IRC, elevation) of the RVB raster *image*: *where* itself, or found in it.

    *where* a file: that file (e.g. an elevation mosaic for every patch). *where* a folder: the file with
    the same IGN tile corner as *image* (:func:`tile_key`) when *image*'s name carries one; otherwise the
    file of the same name, or of the same name with ``RVB`` replaced by ``IRC``, in any raster suffix.

    Args:
        image: The RVB raster.
        where: A file, or a folder of products.
        what: The product, for messages (``"IRC"``, ``"elevation"``).
        cache: Reused across calls: folder listings.

    Raises:
        InputDataError: *where* is missing, or the folder holds no product for *image*.
    """
    where = Path(where)
    if where.is_file():
        return where
    if not where.is_dir():
        raise InputDataError(
            f"{what} source {where} does not exist; give a file or a folder of {what} rasters"
        )
    cache = {} if cache is None else cache
    key = tile_key(image.name)
    if key is not None:
        tiles = cache.setdefault(where, _keyed(where))
        if key in tiles:
            return Path(tiles[key])
        raise InputDataError(
            f"{what} folder {where} has no tile at {key[0]:04d}-{key[1]:04d} for {image.name}; give every "
            "product for each tile"
        )
    stems = {image.stem, image.stem.replace("RVB", "IRC")} if what == "IRC" else {image.stem}
    found = sorted(
        p for p in where.iterdir() if p.is_file() and p.stem in stems and p.suffix.lower() in _TILE_SUFFIXES
    )
    if len(found) != 1:
        problem = "no raster" if not found else f"{len(found)} rasters ({_few([p.name for p in found])})"
        raise InputDataError(
            f"{what} folder {where} holds {problem} named like {image.name}; expected one {what} raster "
            "with the same IGN tile corner or the same name (RVB → IRC)"
        )
    return found[0]


@contextlib.contextmanager
def assembled_patches(
    pairs: Sequence[PatchPair],
    *,
    irc: Path,
    elevation: Path | None,
    beside: Path,
    elevation_scale: float = FLAIR_ELEVATION_SCALE,
    elevation_offset: float = 0.0,
    reproject: bool = False,
    resampling: str | None = None,
) -> Iterator[list[PatchPair]]:
    """*pairs* (FLAIR patch rows whose image is the RVB raster) with each image replaced by its VRT.

    Each RVB image gets its IRC product and elevation (:func:`find_partner`) and becomes a VRT of R, G,
    B, NIR (, E) named after it, in a temporary folder beside *beside* (:func:`assembled_inputs`).

    Args:
        pairs: :class:`~flair_deploy.flair_format.PatchPair` rows.
        irc: Folder of IRC rasters (or one file).
        elevation: Height-above-ground file (mosaic) or folder, in metres; None for four bands.
        beside: An output the temporary folder goes next to.
        elevation_scale: Units of E per metre of height.
        elevation_offset: Added after scaling.
        reproject: Warp sources in another CRS onto the RVB grid.
        resampling: Kernel for sources on another grid.

    Yields:
        The rows, images replaced by VRTs (masks unchanged).

    Raises:
        InputDataError: Two RVB images of the same name, a missing product, or any refusal of
            :func:`assemble_bands`.
    """
    stems = [p.image.stem for p in pairs]
    if len(set(stems)) != len(stems):
        dupes = sorted({s for s in stems if stems.count(s) > 1})
        raise InputDataError(
            f"the patch list names several RVB images called {_few(dupes)}; each becomes NAME.vrt, so give "
            "images with distinct names"
        )
    cache: dict[Path, Any] = {}
    inputs = []
    for pair in pairs:
        image = pair.image
        sources = bd_ortho_sources(
            image,
            find_partner(image, irc, "IRC", cache=cache),
            None if elevation is None else find_partner(image, elevation, "elevation", cache=cache),
            elevation_scale=elevation_scale,
            elevation_offset=elevation_offset,
        )
        if resampling is not None:
            sources = tuple(dataclasses.replace(s, resampling=resampling) for s in sources)
        inputs.append(BandInput(image.stem, sources))
    with assembled_inputs(inputs, beside, reproject=reproject) as vrts:
        yield [dataclasses.replace(p, image=v) for p, v in zip(pairs, vrts, strict=True)]
