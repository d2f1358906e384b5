"""`flair-deploy plan`: how many tiles and chunks a mapping job has, and how long it takes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from flair_deploy.choices import Stitching
from flair_deploy.cli._options import VersionOption, choices, split_list
from flair_deploy.errors import ConfigError

if TYPE_CHECKING:
    from flair_deploy.description import ModelDescription
    from flair_deploy.inference.capacity import CapacityPlan

__all__ = ["command"]

#: Defaults in --help come from detect's config: the plan cuts rasters as detect will.
CONFIG_MODEL = "flair_deploy.inference.config:DetectConfig"

#: Option → DetectConfig key (for the ``[default: ...]`` of --help).
FLAGS = {
    "stitching": "stitching",
    "chunk_mb": "chunk_mb",
}

EXAMPLES = (
    "flair-deploy plan ortho.tif -m model.onnx",
    "flair-deploy plan bdortho/ -m model.onnx --tiles-per-s 1000 --workers 1,4,8",
    (
        "flair-deploy plan france.vrt --preset flair-inc-rgbie-15cl-resnet34-unet \\\n"
        "    --stitching crop --benchmark bench.json --workers 8 --json plan.json"
    ),
)


def command(
    inputs: Annotated[
        list[Path],
        typer.Argument(
            metavar="MOSAIC...",
            help="Rasters, a VRT mosaic, or folders of rasters: what detect would take.",
            show_default=False,
        ),
    ],
    model: Annotated[
        Path | None,
        typer.Option(
            "--model",
            "-m",
            metavar="FILE",
            help="Model whose tile and overlap to use: .onnx, .engine, or a checkpoint.",
        ),
    ] = None,
    preset: Annotated[
        str | None,
        typer.Option(
            metavar="NAME",
            help="Description preset, alone or for IGN weights, e.g. flair-inc-rgbie-15cl-resnet34-unet.",
        ),
    ] = None,
    tile: Annotated[
        int | None, typer.Option(metavar="PX", help="Tile size in pixels (default: the model's).")
    ] = None,
    overlap: Annotated[
        int | None, typer.Option(metavar="PX", help="Blend overlap (default: the model's).")
    ] = None,
    stitching: Annotated[
        Stitching | None,
        typer.Option(metavar=choices(Stitching), help="Stitching detect will use."),
    ] = None,
    margin: Annotated[
        int | None,
        typer.Option(metavar="PX", help="Crop margin (default: the model's overlap)."),
    ] = None,
    chunk_mb: Annotated[
        int | None,
        typer.Option("--chunk-mb", metavar="MIB", help="detect's stitching memory budget per chunk."),
    ] = None,
    probabilities: Annotated[
        bool, typer.Option("--probabilities", help="Plan for detect --probabilities too.")
    ] = False,
    confidence: Annotated[
        bool, typer.Option("--confidence", help="Plan for detect --confidence too.")
    ] = False,
    tiles_per_s: Annotated[
        float | None,
        typer.Option(
            "--tiles-per-s", metavar="N", help="Tiles/s of one worker (detect prints it), for wall times."
        ),
    ] = None,
    benchmark: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="Take tiles/s from a benchmark --json report (best end-to-end row, else model-only).",
        ),
    ] = None,
    workers: Annotated[
        list[str] | None,
        typer.Option(metavar="K,...", help="Worker counts for wall times, e.g. 1,4,8.  [default: 1]"),
    ] = None,
    json_: Annotated[
        Path | None,
        typer.Option("--json", metavar="FILE", help="Also write the plan, per raster, as JSON."),
    ] = None,
    version: VersionOption = False,
) -> None:
    """Count a job's tiles and chunks and estimate its wall time.

    Reads the rasters' headers only (no pixels), builds each one's tile grid
    and chunk plan exactly as detect does, and prints the rasters, pixels,
    km², grid tiles, tiles computed (tiles on chunk boundaries are computed
    once per chunk: the overhead), chunks and estimated output size.

    With a throughput (--tiles-per-s, or --benchmark from flair-deploy
    benchmark --json) it adds the wall time on each worker count, assuming
    linear scaling. See docs/detect.md (Planning a job).
    """
    from flair_deploy.inference.capacity import Throughput, plan_capacity, throughput_from_report

    if tiles_per_s is not None and benchmark is not None:
        raise ConfigError("give --tiles-per-s or --benchmark, not both")
    counts = _parse_workers(workers)
    description = _description(model, preset)
    throughput = None
    if tiles_per_s is not None:
        if not tiles_per_s > 0:
            raise ConfigError(f"--tiles-per-s {tiles_per_s:g} must be positive, e.g. --tiles-per-s 1000")
        throughput = Throughput(tiles_per_s, "--tiles-per-s")
    elif benchmark is not None:
        throughput = throughput_from_report(benchmark)
    plan = plan_capacity(
        inputs,
        description,
        stitching=stitching,
        tile=tile,
        overlap=overlap,
        margin=margin,
        chunk_mb=chunk_mb,
        probabilities=probabilities,
        confidence=confidence,
        throughput=throughput,
        workers=counts,
    )
    if json_ is not None:
        from flair_deploy.atomic import write_text

        write_text(json_, json.dumps(plan.as_dict(), indent=2) + "\n")
    _report(plan)
    if json_ is not None:
        typer.echo(f"wrote {json_}")


def _parse_workers(values: list[str] | None) -> tuple[int, ...]:
    """``--workers 1,4,8`` (or repeated) as worker counts; (1,) when not given.

    Raises:
        ConfigError: For anything but positive integers.
    """
    items = split_list(values, "--workers")
    if items is None:
        return (1,)
    try:
        counts = tuple(int(v) for v in items)
    except ValueError:
        counts = ()
    if not counts or min(counts) < 1:
        raise ConfigError(
            f"--workers {','.join(items)!r} is not a comma list of worker counts >= 1, e.g. 1,4,8"
        )
    return tuple(sorted(set(counts)))


def _description(model: Path | None, preset: str | None) -> ModelDescription:
    """The description whose tiling defaults detect would use."""
    if model is not None:
        from flair_deploy.artifacts import read_description

        return read_description(model, preset=preset)
    if preset is not None:
        from flair_deploy.artifacts import preset_description

        return preset_description(preset)
    raise ConfigError("no model given; pass --model MODEL.onnx (or .engine, a checkpoint) or --preset NAME")


def _si(value: float, unit: str) -> str:
    """``1.4e13, 'px'`` → ``14.0 Tpx``."""
    for prefix in ("", "k", "M", "G", "T", "P"):
        if abs(value) < 1000 or prefix == "P":
            return f"{value:.0f} {prefix}{unit}" if not prefix else f"{value:.1f} {prefix}{unit}"
        value /= 1000
    raise AssertionError("unreachable")  # pragma: no cover


def _bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def _rate(tiles_per_s: float) -> str:
    return f"{tiles_per_s:,.1f}" if tiles_per_s >= 10 else f"{tiles_per_s:.3g}"


def _area(km2: float) -> str:
    return f"{km2:,.0f}" if km2 >= 100 else f"{km2:.2f}" if km2 >= 1 else f"{km2:.4f}"


def _report(plan: CapacityPlan) -> None:
    from flair_deploy.inference.capacity import format_duration

    typer.echo(f"model {plan.model}: {plan.stitching}")
    outputs = " + ".join(
        name
        for name, on in (
            ("class maps", True),
            ("probabilities", plan.probabilities),
            ("confidence", plan.confidence),
        )
        if on
    )
    rows = (
        ("rasters", f"{len(plan.rasters):,}"),
        ("pixels", _si(plan.pixels, "px")),
        ("area", f"{_area(plan.km2)} km²"),
        ("grid tiles", f"{plan.grid_tiles:,}"),
        ("tiles computed", f"{plan.tiles:,} (+{100 * plan.overhead:.1f} % on chunk boundaries)"),
        ("chunks", f"{plan.chunks:,} (within {plan.chunk_mb} MiB each, {plan.block}-px blocks)"),
        ("output (est.)", f"{_bytes(plan.output_bytes)} ({outputs}, compressed; a low estimate)"),
    )
    for label, value in rows:
        typer.echo(f"  {label:<16}{value}")
    tp = plan.throughput
    if tp is None:
        typer.echo(
            "no throughput given: for wall times pass --tiles-per-s N (one worker's tiles/s) or "
            "--benchmark FILE from flair-deploy benchmark -m MODEL --raster ortho.tif --json FILE"
        )
    else:
        typer.echo(f"at {_rate(tp.tiles_per_s)} tiles/s per worker ({tp.source}), linear scaling:")
        typer.echo(f"  {'workers':>7}  {'tiles/s':>10}  wall time")
        for w in plan.wall_times:
            rate = tp.tiles_per_s * w.workers
            typer.echo(f"  {w.workers:>7}  {_rate(rate):>10}  {format_duration(w.seconds)}")
    for note in plan.notes:
        typer.echo(f"note: {note}", err=True)
