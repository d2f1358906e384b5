"""Raster input and output for ``detect``: checks, tile reads, and atomically written class maps.

Input side: :func:`inspect_raster` opens a GeoTIFF or VRT once, checks it against the model's
description (band count and ``--bands`` mapping, data type, CRS, ground sampling distance) and returns a
:class:`RasterInfo`; every problem is one :class:`~flair_deploy.errors.InputDataError` line.
:class:`TileReader` reads one tile through its *own* dataset handle (rasterio handles are not shared
between threads) with an integer window, casts raw values to float32 and pads (reflect by default)
only where the tile extends past the raster.

Output side: :class:`OutputWriter` writes the class map (and optional probability and confidence
rasters) under hidden temporary names in the destination folder, in whole-block row windows, then
builds overviews (mode resampling for classes), optionally converts to a Cloud-Optimised GeoTIFF and
only then renames to the final names. An interrupted or failed run deletes its temporary files; no
file that looks complete is ever left behind.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import numpy as np
import numpy.typing as npt
import rasterio
from rasterio._err import CPLE_BaseError  # GDAL errors rasterio does not wrap (not in rasterio.errors)
from rasterio.crs import CRS
from rasterio.enums import MaskFlags, Resampling
from rasterio.errors import CRSError, RasterioError
from rasterio.windows import Window

from flair_deploy.atomic import OutputSet, output_error, scratch_path
from flair_deploy.choices import Compression
from flair_deploy.description import ModelDescription
from flair_deploy.errors import ConfigError, InputDataError
from flair_deploy.inference.stitching import NO_CLASS, OutputChunk
from flair_deploy.inference.tiling import Tile
from flair_deploy.maps import (
    probability_style,
    qgis_style,
    qgis_style_path,
    write_class_map_pam,
    write_class_map_tags,
)

__all__ = [
    "SUPPORTED_DTYPES",
    "OutputPaths",
    "OutputWriter",
    "RasterInfo",
    "TileReader",
    "estimated_map_bytes",
    "gsd_metres",
    "inspect_raster",
    "plan_outputs",
]

#: Raster data types fed to the network (as raw values cast to float32).
SUPPORTED_DTYPES = ("uint8", "uint16", "int16", "float32")
_EARTH_RADIUS_M = 6_371_008.8
_TIF_SUFFIXES = (".tif", ".tiff")

PadMode = Literal["reflect", "constant"]


@dataclass(frozen=True, slots=True)
class RasterInfo:
    """What ``detect`` needs to know about an input raster, checked against the model.

    Attributes:
        path: The raster file.
        width: Width in pixels.
        height: Height in pixels.
        bands: 1-based raster bands feeding the model's bands, in the model's order.
        dtype: Data type of the selected bands.
        crs: CRS (the assumed one when the raster has none and one was given), or None.
        transform: Affine pixel-to-CRS transform.
        gsd_m: Ground sampling distance ``(x, y)`` in metres (approximate for geographic CRSs).
        all_valid: True when the raster has no nodata, mask or alpha: masks need not be read.
        crs_assumed: True when *crs* was given by the user, not read from the raster.
    """

    path: Path
    width: int
    height: int
    bands: tuple[int, ...]
    dtype: str
    crs: CRS | None
    transform: Any
    gsd_m: tuple[float, float] | None
    all_valid: bool
    crs_assumed: bool = False

    @property
    def area_km2(self) -> float:
        """Ground area covered, in km² (0 when the GSD is unknown)."""
        if self.gsd_m is None:
            return 0.0
        return self.width * self.height * self.gsd_m[0] * self.gsd_m[1] / 1e6


def gsd_metres(crs: CRS | None, transform: Any, width: int, height: int) -> tuple[float, float] | None:
    """Return the pixel size ``(x, y)`` in metres, or None without a CRS.

    For a geographic CRS the size is approximated on a sphere at the raster's centre latitude.
    """
    a, b, d, e = transform.a, transform.b, transform.d, transform.e
    rx, ry = math.hypot(a, d), math.hypot(b, e)
    if crs is None:
        return None
    if crs.is_geographic:
        lat = (transform * (width / 2.0, height / 2.0))[1]
        per_deg = math.pi / 180.0 * _EARTH_RADIUS_M
        return rx * per_deg * math.cos(math.radians(lat)), ry * per_deg
    try:
        factor = float(crs.linear_units_factor[1])
    except (CRSError, ValueError, TypeError):
        factor = 1.0
    return rx * factor, ry * factor


def open_raster(path: Path) -> Any:
    """Open an input raster for reading (headers only until read), or say in one line why not.

    Raises:
        InputDataError: If *path* is a folder or not a raster GDAL can read.
    """
    if path.is_dir():
        raise InputDataError(f"input {path} is a folder; give raster files (or a VRT mosaic)")
    try:
        return rasterio.open(path)
    except RasterioError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputDataError(
            f"{path} is not a raster GDAL can read ({first}); give a GeoTIFF or a VRT"
        ) from None


def inspect_raster(
    path: Path,
    description: ModelDescription,
    *,
    bands: Sequence[int] | None = None,
    allow_gsd_mismatch: bool = False,
    assume_crs: str | None = None,
    gsd_tolerance: float = 0.1,
) -> RasterInfo:
    """Open a raster and check it against the model description.

    Args:
        path: GeoTIFF, VRT or any GDAL raster.
        description: The model's description (band count, GSD).
        bands: 1-based raster bands for the model's bands, in order; None = the first N bands.
        allow_gsd_mismatch: Proceed when the raster's GSD differs from the model's.
        assume_crs: CRS to assume for a raster that has none (e.g. ``"EPSG:2154"``).
        gsd_tolerance: Relative GSD difference accepted without *allow_gsd_mismatch*.

    Returns:
        The checked raster description.

    Raises:
        InputDataError: Missing or unreadable file, too few bands, bad band mapping, unsupported data
            type, no CRS, or GSD mismatch; one line each.
    """
    if not path.exists():
        raise InputDataError(f"input raster {path} does not exist; check the path")
    with open_raster(path) as src:
        n = description.in_channels
        names = ", ".join(description.bands)
        if bands is None:
            if src.count < n:
                raise InputDataError(
                    f"{path.name} has {src.count} band(s) but model {description.name!r} needs {n} "
                    f"({names}); give a raster with these bands, or map them with --bands"
                )
            chosen = tuple(range(1, n + 1))
        else:
            chosen = tuple(int(b) for b in bands)
            if len(chosen) != n:
                raise InputDataError(
                    f"--bands lists {len(chosen)} band(s) {list(chosen)} but model {description.name!r} "
                    f"takes {n} ({names}); give one raster band per model band, in that order"
                )
            bad = [b for b in chosen if not 1 <= b <= src.count]
            if bad:
                raise InputDataError(
                    f"--bands {list(chosen)} refers to band(s) {bad} but {path.name} has bands "
                    f"1..{src.count}; bands are 1-based"
                )
        dtypes = {src.dtypes[b - 1] for b in chosen}
        if len(dtypes) != 1 or next(iter(dtypes)) not in SUPPORTED_DTYPES:
            raise InputDataError(
                f"{path.name} has data type {', '.join(sorted(dtypes))} in the selected bands; supported: "
                f"{', '.join(SUPPORTED_DTYPES)} (one type for all bands); convert with "
                "gdal_translate -ot Float32"
            )
        crs: CRS | None = src.crs
        assumed = False
        if crs is None or not crs.to_wkt():
            if assume_crs is None:
                raise InputDataError(
                    f"{path.name} has no CRS, so its output could not be georeferenced; georeference it "
                    "(gdal_edit.py -a_srs EPSG:2154) or pass --assume-crs EPSG:2154"
                )
            try:
                crs = CRS.from_user_input(assume_crs)
            except CRSError:
                raise ConfigError(f"--assume-crs {assume_crs!r} is not a CRS; give e.g. EPSG:2154") from None
            assumed = True
        if src.transform.is_identity:
            raise InputDataError(
                f"{path.name} has no geotransform (pixel = map unit); georeference it before detection"
            )
        gsd = gsd_metres(crs, src.transform, src.width, src.height)
        if gsd is not None and not allow_gsd_mismatch:
            worst = max(abs(g / description.gsd - 1.0) for g in gsd)
            if worst > gsd_tolerance:
                raise InputDataError(
                    f"{path.name} has a ground sampling distance of {gsd[0]:.3g} x {gsd[1]:.3g} m but model "
                    f"{description.name!r} was trained at {description.gsd:g} m; resample the raster "
                    "(gdalwarp -tr) or pass --allow-gsd-mismatch to proceed anyway"
                )
        all_valid = all(src.mask_flag_enums[b - 1] == [MaskFlags.all_valid] for b in chosen)
        return RasterInfo(
            path=path,
            width=src.width,
            height=src.height,
            bands=chosen,
            dtype=next(iter(dtypes)),
            crs=crs,
            transform=src.transform,
            gsd_m=gsd,
            all_valid=all_valid,
            crs_assumed=assumed,
        )


class TileReader:
    """Read tiles of one raster through a private dataset handle (one reader per thread).

    Args:
        info: The checked raster.
        pad_mode: How pixels outside the raster are filled: ``reflect`` (no artificial edges) or
            ``constant`` (0, as IGN's boundless reads without nodata).
    """

    def __init__(self, info: RasterInfo, *, pad_mode: PadMode = "reflect") -> None:
        self.info = info
        self.pad_mode = pad_mode
        self._src = rasterio.open(info.path)
        #: Seconds the last :meth:`read` spent in GDAL (the rest is padding and casting).
        self.last_read_s = 0.0

    def close(self) -> None:
        """Close the dataset handle."""
        self._src.close()

    def read(self, tile: Tile) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]] | None:
        """Read one tile.

        Pixels that are nodata (GDAL's dataset mask) or, in floating-point rasters, NaN or ±inf in any
        selected band are invalid: they get no prediction and are set to 0 before the network sees
        them, so one bad pixel cannot spoil its tile.

        Args:
            tile: The tile (may extend past the raster).

        Returns:
            ``(C, T, T)`` float32 raw values and a ``(T, T)`` validity mask, or None when every pixel of
            the tile is invalid (the tile is skipped).

        Raises:
            InputDataError: If GDAL cannot read the window (truncated file, missing VRT source), naming
                the file and the window.
        """
        info = self.info
        start = time.perf_counter()
        c0, r0, w, h = tile.read_window(info.width, info.height)
        window = Window(c0, r0, w, h)
        try:
            if info.all_valid:
                valid = np.ones((h, w), dtype=bool)
            else:
                # The dataset mask is GDAL's per-pixel validity: nodata in every band, alpha or a mask band.
                valid = self._src.dataset_mask(window=window) > 0
                if not valid.any():
                    self.last_read_s = time.perf_counter() - start
                    return None
            data = self._src.read(indexes=list(info.bands), window=window, out_dtype="float32")
        except RasterioError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputDataError(
                f"cannot read {info.path} at window col {c0}, row {r0}, {w} x {h} px: {first}; "
                "check that the file is complete (gdalinfo -checksum) and that a VRT's sources exist"
            ) from None
        if info.dtype.startswith("float"):
            finite = np.isfinite(data).all(axis=0)
            if not finite.all():
                valid &= finite
                data[:, ~finite] = 0.0
                if not valid.any():
                    self.last_read_s = time.perf_counter() - start
                    return None
        self.last_read_s = time.perf_counter() - start
        pad = tile.padding(info.width, info.height)
        if any(p for side in pad for p in side):
            if self.pad_mode == "reflect":
                data = np.pad(data, ((0, 0), *pad), mode="reflect")
            else:
                data = np.pad(data, ((0, 0), *pad), mode="constant")
            valid = np.pad(valid, pad, mode="constant")
        return np.ascontiguousarray(data, dtype=np.float32), valid


@dataclass(frozen=True, slots=True)
class OutputPaths:
    """Where one input's outputs go.

    Attributes:
        source: The input raster.
        classes: The class map.
        probabilities: Per-class probability raster, or None.
        confidence: Confidence raster, or None.
    """

    source: Path
    classes: Path
    probabilities: Path | None = None
    confidence: Path | None = None

    def all(self) -> list[Path]:
        """Every output path of this input."""
        return [p for p in (self.classes, self.probabilities, self.confidence) if p is not None]

    def complete(self) -> bool:
        """True when every output exists (a finished earlier run: outputs appear only when complete)."""
        return all(p.exists() for p in self.all())


def plan_outputs(
    inputs: Sequence[Path], out: Path, *, probabilities: bool = False, confidence: bool = False
) -> list[OutputPaths]:
    """Name the outputs of each input.

    One input and ``out`` ending in ``.tif``/``.tiff``: ``out`` itself, with ``_proba`` and
    ``_confidence`` beside it. Otherwise ``out`` is a folder and input ``NAME.ext`` gives
    ``NAME_classes.tif``, ``NAME_proba.tif`` and ``NAME_confidence.tif`` in it.

    Raises:
        ConfigError: If several inputs share a name, or an output would replace an input.
    """
    plans: list[OutputPaths] = []
    if out.suffix and out.suffix.lower() not in _TIF_SUFFIXES and not out.is_dir():
        raise ConfigError(
            f"--out {out} has the suffix {out.suffix!r}; class maps are GeoTIFFs: give NAME.tif for one "
            "input, or a folder name without a suffix"
        )
    single_file = len(inputs) == 1 and out.suffix.lower() in _TIF_SUFFIXES
    if not single_file and out.suffix.lower() in _TIF_SUFFIXES:
        raise ConfigError(
            f"--out {out} is a file name but {len(inputs)} inputs were given; give a folder for several inputs"
        )
    for src in inputs:
        if single_file:
            stem, folder, classes = out.stem, out.parent, out
        else:
            stem, folder = src.stem, out
            classes = folder / f"{stem}_classes.tif"
        plans.append(
            OutputPaths(
                src,
                classes,
                folder / f"{stem}_proba.tif" if probabilities else None,
                folder / f"{stem}_confidence.tif" if confidence else None,
            )
        )
    names = [p.classes for p in plans]
    if len(set(names)) != len(names):
        dup = min(str(n) for n in names if names.count(n) > 1)
        raise ConfigError(f"two inputs would both write {dup}; give inputs with distinct file names")
    resolved_inputs = {p.resolve() for p in inputs}
    for plan in plans:
        for p in plan.all():
            if p.resolve() in resolved_inputs:
                raise ConfigError(f"output {p} would replace an input raster; choose another --out")
    return plans


def estimated_map_bytes(
    info: RasterInfo, paths: OutputPaths, description: ModelDescription, *, cog: bool
) -> int:
    """A deliberately low estimate of the disk space one input's outputs take.

    Uncompressed sizes (one byte per pixel and band, a third more for overviews) divided by a
    compression ratio that class maps easily beat, doubled for COG (the plain GeoTIFF and its COG copy
    coexist while converting). Low on purpose: it refuses runs that cannot fit, never runs that might;
    a disk that fills up later is reported by the write itself.
    """
    bands = 1 + (description.num_classes if paths.probabilities is not None else 0)
    bands += 1 if paths.confidence is not None else 0
    raw = info.width * info.height * bands * 4 // 3
    return raw // _COMPRESSION_GUESS * (2 if cog else 1)


#: Compression ratio assumed by :func:`estimated_map_bytes` (deflate/zstd with predictor).
_COMPRESSION_GUESS = 8

#: GDAL worker threads for building overviews and converting to COG (GDAL's syntax: a count or
#: ``ALL_CPUS``). The last step of a map is otherwise serial while every other stage is done.
_GDAL_THREADS = "ALL_CPUS"


_Kind = Literal["classes", "probabilities", "confidence"]

#: External files GDAL reads beside ``NAME.tif`` by name: overviews (``.ovr``) and mask (``.msk``).
#: The ``.aux.xml`` is handled by the rename (:class:`~flair_deploy.atomic.OutputSet`).
_STALE_SIDECARS = (".ovr", ".msk")


@dataclass
class _Target:
    final: Path
    tmp: Path
    kind: _Kind
    dataset: Any = None


class OutputWriter:
    """Write one input's outputs atomically, row chunk by row chunk.

    Use as a context manager: on a clean exit the files are finalised (overviews, optional COG) and
    renamed; on an exception every temporary file is removed.

    Args:
        info: The input raster (size, CRS, transform are copied exactly).
        paths: Output paths.
        description: Model description (classes, colours, nodata).
        indices: Write 0-based logit indices instead of FLAIR codes.
        block: Tile (block) size of the outputs, a multiple of 16.
        compress: ``deflate`` or ``zstd`` (with horizontal predictor).
        overviews: Build internal overviews (mode resampling for classes, average for the others).
        cog: Convert to Cloud-Optimised GeoTIFFs before renaming.
        tags: Extra GDAL metadata tags (model SHA-256, backend, precision, stitching...).
        sidecars: Give the class map its GDAL category names and attribute table (``NAME.tif.aux.xml``)
            and its QGIS style (``NAME.qml``), and the confidence and probability maps theirs (a
            colour ramp over one band);
            off for intermediate files nobody opens in QGIS (a distributed job's chunk files).
    """

    def __init__(
        self,
        info: RasterInfo,
        paths: OutputPaths,
        description: ModelDescription,
        *,
        indices: bool = False,
        block: int = 256,
        compress: Compression = Compression.DEFLATE,
        overviews: bool = True,
        cog: bool = False,
        tags: dict[str, str] | None = None,
        sidecars: bool = True,
    ) -> None:
        if block <= 0 or block % 16:
            raise ConfigError(f"output block size {block} must be a positive multiple of 16 (GeoTIFF tiles)")
        self.info = info
        self.paths = paths
        self.description = description
        self.indices = indices
        self.block = block
        self.compress = compress
        self.overviews = overviews
        self.cog = cog
        self.tags = dict(tags or {})
        self.sidecars = sidecars
        lut = np.full(256, description.nodata, dtype=np.uint8)
        for i, c in enumerate(description.classes):
            lut[i] = i if indices else c.code
        lut[NO_CLASS] = description.nodata
        self._lut = lut
        # All outputs of one input appear together (hidden pid-named temporaries, renamed on success).
        # Existing outputs were refused (or accepted with --overwrite) by the caller up front.
        self._outputs = OutputSet(overwrite=True)
        self._targets: list[_Target] = []
        # QGIS styles written with the maps: temporary path -> (final path, .qml text).
        self._styles: dict[Path, tuple[Path, str]] = {}
        self._paths: list[tuple[Path, _Kind]] = [(paths.classes, "classes")]
        if paths.probabilities is not None:
            self._paths.append((paths.probabilities, "probabilities"))
        if paths.confidence is not None:
            self._paths.append((paths.confidence, "confidence"))

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> Self:
        try:
            for final, kind in self._paths:
                t = _Target(final, self._outputs.path(final), kind)
                self._targets.append(t)
                with self._gdal_errors(t):
                    t.dataset = rasterio.open(t.tmp, "w", **self._profile(t.kind))
                    self._describe(t)
            # The QGIS styles are more outputs of the set: they appear, and are replaced, together
            # with their maps.
            if self.sidecars:
                for t in self._targets:
                    final = qgis_style_path(t.final)
                    self._styles[self._outputs.path(final)] = (final, self._style_text(t.kind))
        except BaseException:
            self._abort()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None:
            self._abort()
            return
        try:
            self._finalise()
        except BaseException:
            self._abort()
            raise

    @contextlib.contextmanager
    def _gdal_errors(self, t: _Target) -> Iterator[None]:
        """Report GDAL's write failures (a full disk, a vanished folder) as one line naming *t*."""
        try:
            yield
        except (RasterioError, CPLE_BaseError, OSError) as exc:
            raise output_error(t.final, exc) from None

    def _profile(self, kind: str) -> dict[str, Any]:
        info = self.info
        count = self.description.num_classes if kind == "probabilities" else 1
        profile: dict[str, Any] = {
            "driver": "GTiff",
            "width": info.width,
            "height": info.height,
            "count": count,
            "dtype": "uint8",
            "crs": info.crs,
            "transform": info.transform,
            "tiled": True,
            "blockxsize": self.block,
            "blockysize": self.block,
            "compress": self.compress,
            "predictor": 2,
            "bigtiff": "IF_SAFER",
            "interleave": "band",
            # Rows are written a whole row of blocks at a time: GDAL compresses those blocks in parallel.
            "num_threads": "ALL_CPUS",
        }
        if kind == "classes":
            profile["nodata"] = self.description.nodata
        return profile

    def _describe(self, t: _Target) -> None:
        ds, d = t.dataset, self.description
        ds.update_tags(**self.tags)
        if t.kind == "classes":
            # Colour table, band description and CLASS_* tags live in the TIFF; category names and
            # the attribute table go into the .aux.xml once GDAL is done with the file (_sidecars).
            write_class_map_tags(ds, d, indices=self.indices)
        elif t.kind == "probabilities":
            for i, c in enumerate(d.classes, start=1):
                ds.set_band_description(i, f"P({c.name}) x 255 (code {c.code}, index {i - 1})")
            ds.update_tags(VALUES="round(255 x softmax probability over the active classes)")
        else:
            ds.set_band_description(1, "confidence: P(chosen class) x 255")
            ds.update_tags(VALUES="round(255 x probability of the class in the class map)")

    # ------------------------------------------------------------------ writing
    def write(self, chunk: OutputChunk) -> None:
        """Write final rows (a whole number of blocks, or the raster's last rows)."""
        window = Window(chunk.col, chunk.row, chunk.width, chunk.rows)
        invalid = chunk.classes == NO_CLASS
        for t in self._targets:
            with self._gdal_errors(t):
                if t.kind == "classes":
                    t.dataset.write(self._lut[chunk.classes], 1, window=window)
                elif t.kind == "probabilities" and chunk.probabilities is not None:
                    t.dataset.write(chunk.probabilities, window=window)
                    t.dataset.write_mask(np.where(invalid, 0, 255).astype(np.uint8), window=window)
                elif t.kind == "confidence" and chunk.confidence is not None:
                    t.dataset.write(chunk.confidence, 1, window=window)
                    t.dataset.write_mask(np.where(invalid, 0, 255).astype(np.uint8), window=window)

    # ------------------------------------------------------------------ finishing
    def _overview_factors(self) -> list[int]:
        factors, f = [], 2
        while max(self.info.width, self.info.height) // f >= self.block:
            factors.append(f)
            f *= 2
        return factors

    def _finalise(self) -> None:
        factors = self._overview_factors() if self.overviews and not self.cog else []
        for t in self._targets:
            with self._gdal_errors(t):
                t.dataset.close()
                t.dataset = None
                if factors:
                    # Built on the closed-and-reopened file: in create mode GDAL may not see the colour
                    # table yet when it resamples paletted bands.
                    resampling = Resampling.mode if t.kind == "classes" else Resampling.average
                    # GDAL (>= 3.2) resamples overview chunks on GDAL_NUM_THREADS threads and the GTiff
                    # driver compresses their blocks on NUM_THREADS: the pixels are those of a serial
                    # build, only the wall time shrinks.
                    with (
                        rasterio.Env(GDAL_NUM_THREADS=_GDAL_THREADS),
                        rasterio.open(t.tmp, "r+", num_threads=_GDAL_THREADS) as ds,
                    ):
                        ds.build_overviews(factors, resampling)
                        ds.update_tags(ns="rio_overview", resampling=resampling.name)
        if self.cog:
            for t in self._targets:
                with self._gdal_errors(t):
                    self._to_cog(t)
        self._sidecars()
        # Renames every map (and its .aux.xml, the PAM sidecar where GDAL keeps some metadata) into
        # place; a stale .aux.xml of a map being replaced is removed, it would describe the old one.
        self._outputs.commit()

    def _sidecars(self) -> None:
        """Write the class map's PAM sidecar and QGIS style; remove stale sidecars of the outputs.

        Runs after the last GDAL handle on the temporaries is closed: GDAL rewrites a dataset's
        ``.aux.xml`` when it closes it, which would drop what is added here.
        """
        for t in self._targets:
            if t.kind == "classes" and self.sidecars:
                with self._gdal_errors(t):
                    write_class_map_pam(t.tmp, self.description, indices=self.indices)
        for tmp, (final, text) in self._styles.items():
            try:
                tmp.write_text(text, encoding="utf-8")
            except OSError as exc:
                raise output_error(final, exc) from None
        # GDAL and QGIS pick these up by name: left from the map being replaced, they would show its
        # overviews, mask or style over the new map. Removed before the renames, so that a failed
        # rename leaves the old map without them rather than the new map with them.
        for t in self._targets:
            stale = [t.final.with_name(t.final.name + s) for s in _STALE_SIDECARS]
            if not self.sidecars:
                stale.append(qgis_style_path(t.final))
            for p in stale:
                if p.is_dir():
                    continue  # not a sidecar GDAL or QGIS would read
                try:
                    p.unlink(missing_ok=True)
                except OSError as exc:
                    raise output_error(p, exc) from None

    def _style_text(self, kind: _Kind) -> str:
        """The QGIS style of an output: paletted for the class map, a percent ramp for the others.

        The probability raster's style draws its first band; QGIS's own default for a many-band
        raster, an RGB composite of the first three classes' probabilities, would mislead.
        """
        if kind == "classes":
            return qgis_style(self.description, indices=self.indices)
        return probability_style(band=1)

    def _to_cog(self, t: _Target) -> None:
        from rasterio.shutil import copy as gdal_copy

        with scratch_path(t.final, "cog") as cog_tmp, rasterio.Env(GDAL_NUM_THREADS=_GDAL_THREADS):
            resampling = "MODE" if t.kind == "classes" else "AVERAGE"
            # Overviews resampled and blocks compressed on every core, as in _finalise.
            gdal_copy(
                t.tmp,
                cog_tmp,
                driver="COG",
                compress=self.compress.upper(),
                predictor="YES",
                bigtiff="IF_SAFER",
                blocksize=str(self.block),
                resampling=resampling,
                overview_resampling=resampling,
                num_threads=_GDAL_THREADS,
            )
            os.replace(cog_tmp, t.tmp)
            aux = cog_tmp.with_name(cog_tmp.name + ".aux.xml")
            if aux.exists():
                os.replace(aux, t.tmp.with_name(t.tmp.name + ".aux.xml"))

    def _abort(self) -> None:
        for t in self._targets:
            if t.dataset is not None:
                with contextlib.suppress(Exception):
                    t.dataset.close()
                t.dataset = None
        self._outputs.abort()
