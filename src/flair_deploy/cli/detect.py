"""`flair-deploy detect`: map land cover over large orthophotos with an exported model."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Self

import typer

from flair_deploy.choices import Compression, Stitching
from flair_deploy.cli._options import (
    BAND_SOURCE_FLAGS,
    BandOption,
    ElevationOffsetOption,
    ElevationOption,
    ElevationScaleOption,
    IrcOption,
    ReprojectOption,
    ResamplingOption,
    RvbOption,
    SetOption,
    VersionOption,
    band_source_values,
    choices,
    echo_notes,
    given_flags,
    parse_bands,
    parse_key_values,
)
from flair_deploy.description import Precision
from flair_deploy.inference.backends import BackendName

if TYPE_CHECKING:
    from flair_deploy.inference.detect import DetectProgress, DetectSummary

__all__ = ["command"]


CONFIG_MODEL = "flair_deploy.inference.config:DetectConfig"

#: Option → DetectConfig key (see cli._options).
FLAGS = {
    "inputs": "inputs",
    "model": "model",
    "out": "output",
    "preset": "preset",
    "backend": "backend",
    "device": "device",
    "precision": "precision",
    "backend_option": "backend_options",
    "bands": "bands",
    "stitching": "stitching",
    "tile": "tile_size",
    "overlap": "overlap",
    "margin": "margin",
    "batch_size": "batch_size",
    "readers": "readers",
    "chunk_mb": "chunk_mb",
    "workers": "workers",
    "ray_address": "ray_address",
    "merge": "merge",
    "indices": "indices",
    "probabilities": "probabilities",
    "confidence": "confidence",
    "compress": "compress",
    "cog": "cog",
    "no_overviews": "overviews",
    "overwrite": "overwrite",
    "resume": "resume",
    "allow_gsd_mismatch": "allow_gsd_mismatch",
    "assume_crs": "assume_crs",
    "date": "date",
    "time": "time",
    "camera": "camera",
    "altitude": "altitude",
    "metadata_json": "metadata_json",
    **BAND_SOURCE_FLAGS,
}


EXAMPLES = (
    "flair-deploy detect ortho.tif -m model.onnx -o landcover.tif",
    "flair-deploy detect tiles/ -m model.onnx -o maps/ --resume --cog",
    (
        "flair-deploy detect ortho.tif -m ign.pth -o map.tif \\\n"
        "    --preset flair-inc-rgbie-15cl-resnet34-unet --stitching crop --indices"
    ),
    "flair-deploy detect -c flair-1-config-detect.yaml \\\n    --preset flair-inc-rgbie-15cl-resnet34-unet",
    "flair-deploy detect --rvb RVB/ --irc IRC/ --elevation height.vrt \\\n    -m model.onnx -o maps/",
)


def _on(flag: bool) -> bool | None:
    """A flag given is True; a flag not given is None (the config decides)."""
    return True if flag else None


def command(
    inputs: Annotated[
        list[Path] | None,
        typer.Argument(
            metavar="RASTER...",
            help="Input rasters: GeoTIFFs, a VRT mosaic, or folders of them (one output per raster).",
            show_default=False,
        ),
    ] = None,
    model: Annotated[
        Path | None,
        typer.Option(
            "--model", "-m", metavar="FILE", help="Model file: .onnx, .ckpt/.pth/.safetensors, or .engine."
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            metavar="PATH",
            help="Output .tif (one input) or folder (NAME_classes.tif per input).",
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            metavar="FILE",
            help="YAML config: detect keys (see configs/README.md), or IGN's flair-1-config-detect.yaml "
            "as is (maps to --stitching crop --indices); options given here override it.",
        ),
    ] = None,
    set_: SetOption = None,
    preset: Annotated[
        str | None,
        typer.Option(
            metavar="NAME",
            help="Model description for weights that carry none (IGN's), e.g. "
            "flair-inc-rgbie-15cl-resnet34-unet.",
        ),
    ] = None,
    backend: Annotated[
        BackendName | None,
        typer.Option(metavar=choices(BackendName), help="Runtime (default: from the model file's suffix)."),
    ] = None,
    device: Annotated[str | None, typer.Option(metavar="DEVICE", help="cpu, cuda or cuda:<i>.")] = None,
    precision: Annotated[
        Precision | None,
        typer.Option(metavar=choices(Precision), help="Precision (default: the model file's own)."),
    ] = None,
    backend_option: Annotated[
        list[str] | None,
        typer.Option(
            "--backend-option", metavar="KEY=VALUE", help="Backend option (repeatable), e.g. threads=4."
        ),
    ] = None,
    bands: Annotated[
        str | None,
        typer.Option(
            metavar="N,N,...",
            help="1-based raster bands in the model's band order, e.g. 1,2,3,4,5 (default: first N).",
        ),
    ] = None,
    stitching: Annotated[
        Stitching | None,
        typer.Option(
            metavar=choices(Stitching),
            help="blend: Hann-weighted probabilities, no seams; crop: IGN flair-detect's margin crop.",
        ),
    ] = None,
    tile: Annotated[
        int | None, typer.Option(metavar="PX", help="Tile size in pixels (default: the model's, e.g. 512).")
    ] = None,
    overlap: Annotated[
        int | None,
        typer.Option(metavar="PX", help="Blend overlap between tiles (default: the model's, e.g. 128)."),
    ] = None,
    margin: Annotated[
        int | None,
        typer.Option(metavar="PX", help="Crop margin discarded on each tile side (IGN's 'margin')."),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(metavar="N", help="Tiles per inference call (default: 1 on a CPU, 16 on a GPU)."),
    ] = None,
    readers: Annotated[int | None, typer.Option(metavar="N", help="Reader threads.")] = None,
    chunk_mb: Annotated[
        int | None,
        typer.Option(
            "--chunk-mb",
            metavar="MIB",
            help="Stitching memory budget: wide rasters are mapped in strips this fits.",
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            metavar="N",
            help="Map the chunks on N Ray workers (one per GPU or group of cores); resumable.",
        ),
    ] = None,
    ray_address: Annotated[
        str | None,
        typer.Option(
            "--ray-address", metavar="ADDR", help="Join this Ray cluster (default: RAY_ADDRESS, else local)."
        ),
    ] = None,
    merge: Annotated[
        bool,
        typer.Option(
            "--merge", help="With --workers and several inputs: also merge mosaic.vrt into one COG."
        ),
    ] = False,
    indices: Annotated[
        bool, typer.Option("--indices", help="Write 0-based class indices (as IGN) instead of FLAIR codes.")
    ] = False,
    probabilities: Annotated[
        bool, typer.Option("--probabilities", help="Also write NAME_proba.tif: one uint8 band per class.")
    ] = False,
    confidence: Annotated[
        bool, typer.Option("--confidence", help="Also write NAME_confidence.tif: uint8 confidence.")
    ] = False,
    compress: Annotated[
        Compression | None, typer.Option(metavar=choices(Compression), help="Output compression.")
    ] = None,
    cog: Annotated[bool, typer.Option("--cog", help="Write Cloud-Optimised GeoTIFFs.")] = False,
    no_overviews: Annotated[bool, typer.Option("--no-overviews", help="Do not build overviews.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs.")] = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Skip inputs whose outputs exist (finished by an earlier run).")
    ] = False,
    allow_gsd_mismatch: Annotated[
        bool,
        typer.Option(
            "--allow-gsd-mismatch", help="Proceed when the raster's pixel size differs from the model's."
        ),
    ] = False,
    assume_crs: Annotated[
        str | None, typer.Option(metavar="CRS", help="CRS for rasters that have none, e.g. EPSG:2154.")
    ] = None,
    date: Annotated[
        str | None, typer.Option(metavar="YYYY-MM-DD", help="Acquisition date (metadata models).")
    ] = None,
    time: Annotated[
        str | None, typer.Option(metavar="HH:MM", help="Acquisition time (metadata models).")
    ] = None,
    camera: Annotated[str | None, typer.Option(metavar="NAME", help="Camera name (metadata models).")] = None,
    altitude: Annotated[
        float | None, typer.Option(metavar="M", help="Scene altitude in metres (metadata models).")
    ] = None,
    metadata_json: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="JSON with date, time, camera, altitude (or a FLAIR aerial record), for metadata models.",
        ),
    ] = None,
    # Band sources (BD ORTHO RVB + IRC + elevation assembled on the fly), instead of RASTER...
    rvb: RvbOption = None,
    irc: IrcOption = None,
    elevation: ElevationOption = None,
    elevation_scale: ElevationScaleOption = None,
    elevation_offset: ElevationOffsetOption = None,
    band: BandOption = None,
    reproject: ReprojectOption = False,
    resampling: ResamplingOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    version: VersionOption = False,
) -> None:
    """Map land cover over orthophotos, in bounded memory.

    Memory is bounded by the raster width, not its size.

    Reads each raster in overlapping tiles (integer windows, no resampling),
    runs the model, stitches the tiles (blend: no seams; crop: IGN
    flair-detect's grid) and writes a georeferenced, tiled, compressed class
    map with a colour table. Input nodata becomes 255.

    Outputs: MAP.tif (uint8 FLAIR codes, or 0-based indices with --indices),
    MAP_proba.tif (one uint8 band per class, round(255 x p)) and
    MAP_confidence.tif on request. CRS, transform and size are the input's;
    files appear only when complete. See docs/detect.md.
    """
    from flair_deploy.inference.config import load_detect_config
    from flair_deploy.inference.detect import detect

    flags, names = given_flags(
        FLAGS,
        inputs=[str(p) for p in inputs] if inputs else None,
        model=model,
        out=out,
        preset=preset,
        backend=backend,
        device=device,
        precision=precision,
        backend_option=parse_key_values(backend_option, "--backend-option"),
        bands=parse_bands(bands),
        stitching=stitching,
        tile=tile,
        overlap=overlap,
        margin=margin,
        batch_size=batch_size,
        readers=readers,
        chunk_mb=chunk_mb,
        workers=workers,
        ray_address=ray_address,
        merge=_on(merge),
        indices=_on(indices),
        probabilities=_on(probabilities),
        confidence=_on(confidence),
        compress=compress,
        cog=_on(cog),
        no_overviews=False if no_overviews else None,
        overwrite=_on(overwrite),
        resume=_on(resume),
        allow_gsd_mismatch=_on(allow_gsd_mismatch),
        assume_crs=assume_crs,
        date=date,
        time=time,
        camera=camera,
        altitude=altitude,
        metadata_json=metadata_json,
        **band_source_values(
            rvb=rvb,
            irc=irc,
            elevation=elevation,
            elevation_scale=elevation_scale,
            elevation_offset=elevation_offset,
            band=band,
            reproject=reproject,
            resampling=resampling,
        ),
    )
    names["inputs"] = "RASTER..."
    cfg, notes = load_detect_config(config, set_ or (), flags, flag_names=names)
    echo_notes(config, notes)
    if cfg.workers is not None:
        _distributed(cfg, quiet=quiet)
        return
    with _Progress(enabled=not quiet) as bar:
        summary = detect(cfg, progress=bar.update)
    _report(summary)


def _distributed(cfg: Any, *, quiet: bool) -> None:
    """``--workers``: the job on Ray, one progress bar over chunks, a summary JSON, exit 1 on failures."""
    import json

    from flair_deploy.distributed.ray_runner import detect_on_ray, failed_lines, summary_path

    with _JobProgress(enabled=not quiet) as bar:
        summary = detect_on_ray(cfg, progress=bar.update)
    path = summary_path(cfg)
    path.write_text(json.dumps(summary.as_dict(), indent=2))
    for p in summary.outputs:
        typer.echo(f"wrote {p}")
    wall = summary.seconds.wall
    typer.echo(
        f"{summary.committed} chunk(s) mapped, {summary.resumed} resumed, {len(summary.failed)} failed, "
        f"{summary.retries} retried; {summary.tiles} tiles in {wall:.1f} s "
        f"({summary.tiles / wall if wall > 0 else 0:.2f} tiles/s); summary: {path}"
    )
    for w in summary.workers:
        d = w.as_dict(wall)
        typer.echo(
            f"  {w.name}: {w.chunks} chunks, {d['tiles_per_s']:.2f} tiles/s, busy {100 * d['busy_share']:.0f}%"
        )
    if not summary.ok:
        for line in failed_lines(summary):
            typer.echo(f"failed: {line}", err=True)
        from flair_deploy.errors import InputDataError

        raise InputDataError(
            f"{len(summary.failed)} chunk(s) failed (listed above); fix the cause and rerun the same command: "
            "committed chunks are kept"
        )


class _Bar:
    """A rich progress bar on stderr, started on the first update (off with --quiet)."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> Literal[False]:
        if self._progress is not None:
            self._progress.stop()
        return False

    def _start(self, columns: tuple[str, ...], total: float, **fields: str) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        cols = [
            TextColumn(columns[0]),
            BarColumn(),
            *(TextColumn(c) for c in columns[1:]),
            TimeRemainingColumn(),
        ]
        self._progress = Progress(*cols, console=Console(stderr=True))
        self._progress.start()
        self._task = self._progress.add_task("detect", total=total, **fields)


class _JobProgress(_Bar):
    """One bar for a distributed job: chunks, tiles, Mpx, km², failures and ETA."""

    def update(self, p: Any) -> None:
        if not self.enabled:
            return
        if self._progress is None:
            self._start(
                ("chunks {task.completed:.0f}/{task.total:.0f}", "{task.fields[detail]}"),
                p.chunks_total,
                detail="",
            )
        self._progress.update(
            self._task,
            completed=p.chunks_done + p.failed,
            detail=f"tiles {p.tiles_done}/{p.tiles_total}, {p.pixels_done / 1e6:.1f} Mpx, {p.km2_done:.2f} km²"
            + (f", {p.failed} failed" if p.failed else "")
            + (f", {p.retries} retried" if p.retries else ""),
        )


class _Progress(_Bar):
    """Progress bar over megapixels: tiles, Mpx/s and ETA."""

    def update(self, p: DetectProgress) -> None:
        if not self.enabled:
            return
        import time

        if self._progress is None:
            cols = ("{task.description}", "{task.completed:.1f}/{task.total:.1f} Mpx", "{task.fields[rate]}")
            self._start(cols, p.pixels_total / 1e6, rate="")
            self._begun = time.perf_counter()
        elapsed = max(time.perf_counter() - self._begun, 1e-9)
        self._progress.update(
            self._task,
            completed=p.pixels_done / 1e6,
            description=f"{p.name} ({p.raster}/{p.rasters}) tiles {p.tiles_done}/{p.tiles_total}",
            rate=f"{p.pixels_done / 1e6 / elapsed:.2f} Mpx/s",
        )


def _report(s: DetectSummary) -> None:
    sec = s.seconds
    for note in s.notes:
        typer.echo(f"note: {note}", err=True)
    if s.resumed:
        typer.echo(f"resumed: {len(s.resumed)} raster(s) already finished, skipped")
    for p in s.outputs:
        typer.echo(f"wrote {p}")
    typer.echo(
        f"{s.rasters} raster(s), {s.km2:.3f} km², {s.pixels / 1e6:.1f} Mpx in {sec.wall:.1f} s: "
        f"{s.mpx_per_s:.2f} Mpx/s, {s.tiles_per_s:.2f} tiles/s "
        f"({s.tiles_inferred} tiles, {s.tiles_skipped} all-nodata skipped)"
    )
    typer.echo(
        f"backend {s.backend}, precision {s.precision}, {s.stitching}; peak RSS {s.peak_rss_mb:.0f} MiB; "
        f"model busy {100 * s.busy:.0f}% of the time"
    )
    typer.echo(
        f"stage seconds: read {sec.read:.1f}, preprocess {sec.preprocess:.1f}, h2d {sec.h2d:.1f}, "
        f"compute {sec.compute:.1f}, d2h {sec.d2h:.1f}, stitch {sec.stitch:.1f}, write {sec.write:.1f}"
    )
