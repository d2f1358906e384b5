"""Capacity planning for a mapping job: tiles, chunks, output size and wall time, before it starts.

:func:`plan_capacity` reads raster *headers* only (size, CRS, transform, mask flags: no pixel is read)
and builds each raster's tile grid and chunk plan with the functions ``detect`` runs
(:func:`~flair_deploy.inference.tiling.plan_tiling`, :func:`~flair_deploy.inference.tiling.make_grid`,
:func:`~flair_deploy.inference.pipeline.default_chunk_plan`), from the same defaults
(:class:`~flair_deploy.inference.config.DetectConfig`'s), so the counts are the ones ``detect`` will
compute. Only all-nodata tiles, which ``detect`` skips after reading them, can make it compute fewer.

The cost is linear in the number of rasters: one header read each, and one grid and chunk plan per
distinct raster size (a country's orthophoto tiles all share one size). Wall times assume linear
scaling: ``K`` workers at ``T`` tiles/s each compute ``K x T`` tiles/s. The throughput comes from the
user or from a ``flair-deploy benchmark --json`` report (:func:`throughput_from_report`).

Example::

    plan = plan_capacity([Path("tiles/")], preset_description("flair-inc-rgbie-15cl-resnet34-unet"),
                         throughput=Throughput(1000.0, "--tiles-per-s"), workers=(1, 8))
    plan.tiles, plan.chunks, plan.wall_times[-1].seconds
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import rasterio
from pydantic import ValidationError
from rasterio.enums import MaskFlags

from flair_deploy.choices import Stitching
from flair_deploy.description import ModelDescription
from flair_deploy.errors import ConfigError, InputDataError
from flair_deploy.inference.config import DetectConfig
from flair_deploy.inference.detect import expand_inputs
from flair_deploy.inference.pipeline import default_chunk_plan
from flair_deploy.inference.raster import (
    OutputPaths,
    RasterInfo,
    estimated_map_bytes,
    gsd_metres,
    open_raster,
)
from flair_deploy.inference.tiling import TilingPlan, make_grid, plan_tiling

__all__ = [
    "CapacityPlan",
    "RasterPlan",
    "Throughput",
    "WallTime",
    "format_duration",
    "plan_capacity",
    "throughput_from_report",
]

#: Relative GSD difference ``detect`` accepts without ``--allow-gsd-mismatch`` (inspect_raster's).
_GSD_TOLERANCE = 0.1


def _detect_default(key: str) -> Any:
    """The default of a ``detect`` config key: the plan must cut rasters as ``detect`` will."""
    return DetectConfig.model_fields[key].get_default(call_default_factory=True)


@dataclass(frozen=True, slots=True)
class Throughput:
    """Tiles per second of one worker, and where the figure comes from.

    Attributes:
        tiles_per_s: Tiles one worker computes per second (> 0).
        source: Where it comes from, for the report (``--tiles-per-s``, a benchmark row...).
        tile: Tile edge it was measured with, or None when unknown.
        end_to_end: True when measured through ``detect``'s whole pipeline (reads, stitching, writes);
            False for the network alone, which leaves out the host's work.
    """

    tiles_per_s: float
    source: str
    tile: int | None = None
    end_to_end: bool = True

    def __post_init__(self) -> None:
        if not (self.tiles_per_s > 0 and math.isfinite(self.tiles_per_s)):
            raise ConfigError(f"a throughput of {self.tiles_per_s} tiles/s must be a positive number")


@dataclass(frozen=True, slots=True)
class RasterPlan:
    """What ``detect`` will do on one raster.

    Attributes:
        path: The raster.
        width: Width in pixels.
        height: Height in pixels.
        km2: Ground area, km² (0 when the raster has no CRS).
        grid_tiles: Tiles in the raster's tile grid.
        tiles: Tile computations over its chunks (tiles on chunk boundaries once per chunk).
        chunks: Chunks the output is cut into.
        output_bytes: Estimated size of its outputs (``detect``'s deliberately low free-space estimate).
    """

    path: Path
    width: int
    height: int
    km2: float
    grid_tiles: int
    tiles: int
    chunks: int
    output_bytes: int

    @property
    def pixels(self) -> int:
        """Pixels in the raster."""
        return self.width * self.height

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly dict."""
        return {
            "path": str(self.path),
            "width": self.width,
            "height": self.height,
            "pixels": self.pixels,
            "km2": self.km2,
            "grid_tiles": self.grid_tiles,
            "tiles": self.tiles,
            "chunks": self.chunks,
            "output_bytes": self.output_bytes,
        }


@dataclass(frozen=True, slots=True)
class WallTime:
    """The estimated wall time of the job on a number of workers.

    Attributes:
        workers: Workers computing in parallel.
        seconds: Wall-clock seconds, assuming linear scaling.
    """

    workers: int
    seconds: float


@dataclass(frozen=True, slots=True)
class CapacityPlan:
    """The capacity plan of a mapping job: per-raster counts, totals and wall times.

    Attributes:
        model: Name of the model description the tiling defaults came from.
        tiling: The tiling ``detect`` will use.
        chunk_mb: Stitching memory budget per chunk, MiB.
        block: Output block size, px (chunk edges fall on block edges).
        probabilities: Planned with ``--probabilities`` outputs.
        confidence: Planned with ``--confidence`` outputs.
        rasters: One plan per raster, in input order.
        throughput: Tiles/s of one worker, or None when none was given.
        wall_times: Wall time for each worker count (empty without a throughput).
        notes: Remarks on the estimate worth showing the user.
    """

    model: str
    tiling: TilingPlan
    chunk_mb: int
    block: int
    probabilities: bool
    confidence: bool
    rasters: tuple[RasterPlan, ...]
    throughput: Throughput | None
    wall_times: tuple[WallTime, ...]
    notes: tuple[str, ...] = ()

    @property
    def pixels(self) -> int:
        """Pixels over all rasters."""
        return sum(r.pixels for r in self.rasters)

    @property
    def km2(self) -> float:
        """Ground area over all rasters, km²."""
        return sum(r.km2 for r in self.rasters)

    @property
    def grid_tiles(self) -> int:
        """Tiles in the rasters' grids."""
        return sum(r.grid_tiles for r in self.rasters)

    @property
    def tiles(self) -> int:
        """Tile computations, chunk boundary duplicates included (what the throughput applies to)."""
        return sum(r.tiles for r in self.rasters)

    @property
    def overhead(self) -> float:
        """Share of extra tile computations caused by chunking (0.0 when no raster is cut)."""
        grid = self.grid_tiles
        return self.tiles / grid - 1.0 if grid else 0.0

    @property
    def chunks(self) -> int:
        """Chunks over all rasters."""
        return sum(r.chunks for r in self.rasters)

    @property
    def output_bytes(self) -> int:
        """Estimated size of all outputs (a low estimate, as ``detect``'s free-space check)."""
        return sum(r.output_bytes for r in self.rasters)

    @property
    def stitching(self) -> str:
        """The tiling in ``detect``'s words, e.g. ``blend tile=512 overlap=128 border=16``."""
        return self.tiling.label

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly dict: totals, per-raster plans and wall times."""
        tp = self.throughput
        return {
            "model": self.model,
            "stitching": self.stitching,
            "tile": self.tiling.tile,
            "overlap": self.tiling.overlap,
            "margin": self.tiling.margin,
            "chunk_mb": self.chunk_mb,
            "block": self.block,
            "probabilities": self.probabilities,
            "confidence": self.confidence,
            "rasters": len(self.rasters),
            "pixels": self.pixels,
            "km2": self.km2,
            "grid_tiles": self.grid_tiles,
            "tiles": self.tiles,
            "overhead": self.overhead,
            "chunks": self.chunks,
            "output_bytes": self.output_bytes,
            "throughput": None
            if tp is None
            else {
                "tiles_per_s": tp.tiles_per_s,
                "source": tp.source,
                "tile": tp.tile,
                "end_to_end": tp.end_to_end,
            },
            "wall_times": [
                {"workers": w.workers, "seconds": w.seconds, "eta": format_duration(w.seconds)}
                for w in self.wall_times
            ],
            "notes": list(self.notes),
            "per_raster": [r.as_dict() for r in self.rasters],
        }


def format_duration(seconds: float) -> str:
    """A wall time in hours and minutes, e.g. ``26 h 03 min``, ``45 min`` (seconds under a minute).

    Beyond two days the days are added, e.g. ``111 h 05 min (4.6 days)``.
    """
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 1 else "< 1 s"
    hours, minutes = divmod(round(seconds / 60), 60)
    if not hours:
        return f"{minutes} min"
    text = f"{hours} h {minutes:02d} min"
    return f"{text} ({seconds / 86400:.1f} days)" if seconds >= 2 * 86400 else text


@dataclass(frozen=True, slots=True)
class _Header:
    """What a raster's header says (no pixel read)."""

    info: RasterInfo
    has_crs: bool
    bands: int


def _read_header(path: Path, bands: int) -> _Header:
    """Read a raster's header into the :class:`RasterInfo` ``detect`` would make (first *bands* bands).

    Raises:
        InputDataError: If GDAL cannot open the file.
    """
    with open_raster(path) as src:
        crs = src.crs if src.crs is not None and src.crs.to_wkt() else None
        chosen = tuple(range(1, min(bands, src.count) + 1))
        flags = src.mask_flag_enums  # computed for every band at each access: read once
        info = RasterInfo(
            path=path,
            width=src.width,
            height=src.height,
            bands=chosen,
            dtype=src.dtypes[0],
            crs=crs,
            transform=src.transform,
            gsd_m=gsd_metres(crs, src.transform, src.width, src.height),
            all_valid=all(flags[b - 1] == [MaskFlags.all_valid] for b in chosen),
        )
        return _Header(info, crs is not None, src.count)


def _off_gsd(info: RasterInfo, gsd: float) -> bool:
    """True when ``detect`` would refuse the raster's pixel size without ``--allow-gsd-mismatch``."""
    return info.gsd_m is not None and max(abs(g / gsd - 1.0) for g in info.gsd_m) > _GSD_TOLERANCE


def plan_capacity(
    inputs: Sequence[Path],
    description: ModelDescription,
    *,
    stitching: Stitching | str | None = None,
    tile: int | None = None,
    overlap: int | None = None,
    margin: int | None = None,
    chunk_mb: int | None = None,
    block: int | None = None,
    probabilities: bool = False,
    confidence: bool = False,
    throughput: Throughput | None = None,
    workers: Sequence[int] = (1,),
) -> CapacityPlan:
    """Plan a ``detect`` job: count its tiles and chunks and estimate its output size and wall time.

    Args:
        inputs: Rasters, VRT mosaics or folders of rasters, as ``detect`` takes them.
        description: The model's description (tile size, overlap, classes, GSD).
        stitching: ``blend`` or ``crop``; None = ``detect``'s default.
        tile: Tile edge, px; None = the model's.
        overlap: Blend overlap, px; None = the model's.
        margin: Crop margin, px; None = the model's overlap.
        chunk_mb: Stitching memory budget per chunk, MiB; None = ``detect``'s default.
        block: Output block size, px (``detect``'s ``block_size``); None = its default.
        probabilities: Plan for ``--probabilities`` outputs too (wider state: narrower chunks).
        confidence: Plan for ``--confidence`` outputs too.
        throughput: Tiles/s of one worker; None gives counts only.
        workers: Worker counts to estimate the wall time for.

    Returns:
        The plan.

    Raises:
        InputDataError: For a missing path, a folder without rasters, or a file GDAL cannot open.
        ConfigError: For tiling values ``detect`` would refuse, a chunk budget that cannot hold one
            block-wide chunk, or a worker count below 1.
    """
    bad = [k for k in workers if k < 1]
    if bad or not workers:
        raise ConfigError(f"worker counts {list(workers)} must be integers >= 1, e.g. 1,4,8")
    if chunk_mb is not None and chunk_mb < 1:
        raise ConfigError(f"--chunk-mb {chunk_mb} must be >= 1 (MiB)")
    try:
        mode = Stitching(_detect_default("stitching") if stitching is None else stitching)
    except ValueError:
        raise ConfigError(f"stitching {stitching!r} is not one of blend, crop") from None
    plan = plan_tiling(
        description,
        stitching=mode,
        tile=tile,
        overlap=overlap,
        margin=margin,
    )
    budget = int(_detect_default("chunk_mb") if chunk_mb is None else chunk_mb)
    block = int(_detect_default("block_size") if block is None else block)
    if block <= 0 or block % 16:
        raise ConfigError(f"output block size {block} must be a positive multiple of 16 (GeoTIFF tiles)")
    active = description.active_mask
    paths = expand_inputs(list(inputs))
    # Counts depend on the raster's size only: a mosaic of equal tiles costs one grid and chunk plan.
    by_size: dict[tuple[int, int], tuple[int, int, int]] = {}
    rasters: list[RasterPlan] = []
    no_crs = off_gsd = with_nodata = few_bands = 0
    # No directory listing per open: in a folder of thousands of tiles, GDAL would otherwise list it
    # again at every open to look for side-car files, which it still finds by probing their names.
    with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="YES"):
        for path in paths:
            header = _read_header(path, description.in_channels)
            info = header.info
            size = (info.width, info.height)
            counts = by_size.get(size)
            if counts is None:
                grid = make_grid(info.width, info.height, plan)
                chunks = default_chunk_plan(
                    grid,
                    block=block,
                    active_classes=sum(active),
                    num_classes=len(active),
                    budget_mb=budget,
                    confidence=confidence,
                    probabilities=probabilities,
                )
                counts = by_size[size] = (len(grid), chunks.tiles, len(chunks))
            # The estimate counts the planes asked for; where they would be written does not matter.
            outputs = OutputPaths(
                path,
                path.with_name(f"{path.stem}_classes.tif"),
                path.with_name(f"{path.stem}_proba.tif") if probabilities else None,
                path.with_name(f"{path.stem}_confidence.tif") if confidence else None,
            )
            rasters.append(
                RasterPlan(
                    path=path,
                    width=info.width,
                    height=info.height,
                    km2=info.area_km2,
                    grid_tiles=counts[0],
                    tiles=counts[1],
                    chunks=counts[2],
                    output_bytes=estimated_map_bytes(info, outputs, description, cog=False),
                )
            )
            no_crs += not header.has_crs
            few_bands += header.bands < description.in_channels
            with_nodata += not info.all_valid
            off_gsd += _off_gsd(info, description.gsd)
    total_tiles = sum(r.tiles for r in rasters)
    total_chunks = sum(r.chunks for r in rasters)
    notes = _notes(
        description,
        plan,
        throughput,
        workers,
        chunks=total_chunks,
        counts={"no_crs": no_crs, "off_gsd": off_gsd, "nodata": with_nodata, "few_bands": few_bands},
    )
    wall = (
        tuple(WallTime(k, total_tiles / (throughput.tiles_per_s * k)) for k in workers)
        if throughput is not None
        else ()
    )
    return CapacityPlan(
        model=description.name,
        tiling=plan,
        chunk_mb=budget,
        block=block,
        probabilities=probabilities,
        confidence=confidence,
        rasters=tuple(rasters),
        throughput=throughput,
        wall_times=wall,
        notes=notes,
    )


def _notes(
    description: ModelDescription,
    plan: TilingPlan,
    throughput: Throughput | None,
    workers: Sequence[int],
    *,
    chunks: int,
    counts: dict[str, int],
) -> tuple[str, ...]:
    """What the user should know about the estimate: rasters detect treats apart, throughput caveats."""
    notes: list[str] = []
    if counts["few_bands"]:
        notes.append(
            f"{counts['few_bands']} raster(s) have fewer bands than the model's {description.in_channels} "
            f"({', '.join(description.bands)}): detect refuses them"
        )
    if counts["nodata"]:
        notes.append(
            f"{counts['nodata']} raster(s) have nodata or a mask: detect skips all-nodata tiles, so it may "
            "compute fewer tiles than planned"
        )
    if counts["no_crs"]:
        notes.append(
            f"{counts['no_crs']} raster(s) have no CRS: their area is not counted (detect needs --assume-crs)"
        )
    if counts["off_gsd"]:
        notes.append(
            f"{counts['off_gsd']} raster(s) are not at the model's {description.gsd:g} m GSD: detect refuses them "
            "without --allow-gsd-mismatch"
        )
    if throughput is not None:
        if throughput.tile is not None and throughput.tile != plan.tile:
            notes.append(
                f"the throughput was measured on {throughput.tile}-px tiles but the plan uses {plan.tile}-px "
                "tiles: the wall times do not transfer; benchmark with --tile "
                f"{plan.tile}"
            )
        if not throughput.end_to_end:
            notes.append(
                "model-only throughput leaves out reading, stitching and writing: the wall times are a "
                "lower bound (benchmark with --raster for end-to-end rows)"
            )
        if max(workers) > chunks:
            notes.append(
                f"{max(workers)} workers but {chunks} chunk(s): at most {chunks} can work at once, so "
                "the wall times of more workers are optimistic"
            )
    return tuple(notes)


def throughput_from_report(path: Path) -> Throughput:
    """The throughput of the best row of a ``flair-deploy benchmark --json`` report.

    The best end-to-end row (``detect``'s whole pipeline) when there is one, else the best model-only
    row; rows of the ``null`` backend, which runs no network, are never used.

    Raises:
        InputDataError: If the file cannot be read, is not a benchmark report, or has no measured row.
    """
    from flair_deploy.benchmarking.report import BenchmarkReport, Mode
    from flair_deploy.inference.backends import BackendName

    try:
        report = BenchmarkReport.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except OSError as exc:
        raise InputDataError(f"cannot read benchmark report {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise InputDataError(
            f"benchmark report {path} is not valid JSON: {exc.msg} at line {exc.lineno}"
        ) from None
    except ValidationError as exc:
        where = ".".join(str(p) for p in exc.errors()[0]["loc"]) or "top level"
        raise InputDataError(
            f"{path} is not a flair-deploy benchmark report ({where}: {exc.errors()[0]['msg']}); "
            "write one with flair-deploy benchmark --json FILE"
        ) from None
    for mode in (Mode.END_TO_END, Mode.MODEL_ONLY):
        rows = [
            r
            for r in report.ok_rows(mode)
            if r.tiles_per_s is not None and r.tiles_per_s > 0 and r.backend != BackendName.NULL.value
        ]
        if rows:
            row = max(rows, key=lambda r: r.tiles_per_s or 0.0)
            assert row.tiles_per_s is not None  # filtered above
            batch = f"batch {row.batch}, " if row.batch is not None else ""
            tile = f"{row.tile}-px tiles, " if row.tile is not None else ""
            return Throughput(
                tiles_per_s=row.tiles_per_s,
                source=f"best {mode.value} row of {path.name}: {row.label}, {batch}{tile}{row.device}",
                tile=row.tile,
                end_to_end=mode is Mode.END_TO_END,
            )
    raise InputDataError(
        f"benchmark report {path} has no measured row with tiles/s; run flair-deploy benchmark -m MODEL "
        "--raster ortho.tif --json FILE, or give --tiles-per-s"
    )
