"""`flair-deploy detect`: map land cover over large orthophotos with an exported model."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Self

import typer

from flair_deploy.cli._options import parse_bands
from flair_deploy.errors import ConfigError

if TYPE_CHECKING:
    from flair_deploy.inference.detect import DetectProgress, DetectSummary

__all__ = ["command"]


def _parse_options(items: list[str] | None) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--backend-option {item!r} is not of the form KEY=VALUE, e.g. threads=4")
        out[key.strip()] = yaml.safe_load(value) if value.strip() else None
    return out


def command(
    inputs: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Input rasters: GeoTIFFs, a VRT mosaic, or folders of them (one output per raster).",
            show_default=False,
        ),
    ] = None,
    model: Annotated[
        Path | None,
        typer.Option("--model", "-m", help="Model file: .onnx, .ckpt/.pth/.safetensors, or .engine."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Output .tif (one input) or folder (NAME_classes.tif per input)."),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            help="YAML config: a flair-deploy detect config, or IGN's flair-1-config-detect.yaml as is "
            "(maps to --stitching crop --indices); options given here override it."
        ),
    ] = None,
    preset: Annotated[
        str | None,
        typer.Option(
            help="Model description for weights that carry none (IGN's), e.g. flair-inc-rgbie-15cl-resnet34-unet."
        ),
    ] = None,
    backend: Annotated[
        str | None,
        typer.Option(help="torch, onnxruntime or tensorrt (default: from the model file's suffix)."),
    ] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda or cuda:<i> (default: cpu).")] = None,
    precision: Annotated[
        str | None, typer.Option(help="fp32, fp16, bf16 or int8 (default: the model file's own).")
    ] = None,
    backend_option: Annotated[
        list[str] | None,
        typer.Option("--backend-option", help="Backend option KEY=VALUE (repeatable), e.g. threads=4."),
    ] = None,
    bands: Annotated[
        str | None,
        typer.Option(
            help="1-based raster bands in the model's band order, e.g. 1,2,3,4,5 (default: first N)."
        ),
    ] = None,
    stitching: Annotated[
        str | None,
        typer.Option(
            help="blend: Hann-weighted probabilities, no seams (default); crop: IGN flair-detect's margin crop."
        ),
    ] = None,
    tile: Annotated[
        int | None, typer.Option(help="Tile size in pixels (default: the model's, e.g. 512).")
    ] = None,
    overlap: Annotated[
        int | None, typer.Option(help="Blend overlap between tiles, pixels (default: the model's, e.g. 128).")
    ] = None,
    margin: Annotated[
        int | None, typer.Option(help="Crop margin discarded on each tile side, pixels (IGN's 'margin').")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Tiles per inference call (default: 1 on a CPU, 8 on a GPU).")
    ] = None,
    readers: Annotated[int | None, typer.Option(help="Reader threads. (default: 2).")] = None,
    indices: Annotated[
        bool, typer.Option("--indices", help="Write 0-based class indices (as IGN) instead of FLAIR codes.")
    ] = False,
    probabilities: Annotated[
        bool, typer.Option("--probabilities", help="Also write NAME_proba.tif: one uint8 band per class.")
    ] = False,
    confidence: Annotated[
        bool, typer.Option("--confidence", help="Also write NAME_confidence.tif: uint8 confidence.")
    ] = False,
    compress: Annotated[str | None, typer.Option(help="deflate or zstd. (default: deflate).")] = None,
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
        str | None, typer.Option(help="CRS for rasters that have none, e.g. EPSG:2154.")
    ] = None,
    date: Annotated[str | None, typer.Option(help="Acquisition date YYYY-MM-DD (metadata models).")] = None,
    time: Annotated[str | None, typer.Option(help="Acquisition time HH:MM (metadata models).")] = None,
    camera: Annotated[str | None, typer.Option(help="Camera name (metadata models).")] = None,
    altitude: Annotated[
        float | None, typer.Option(help="Scene altitude in metres (metadata models).")
    ] = None,
    metadata_json: Annotated[
        Path | None,
        typer.Option(
            help="JSON with date, time, camera, altitude (or a FLAIR aerial record), for metadata models."
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Map land cover over orthophotos, in memory bounded by the raster width.

    Reads each raster in overlapping tiles (integer windows, no resampling),
    runs the model, stitches the tiles (blend: no seams; crop: IGN
    flair-detect's grid) and writes a georeferenced, tiled, compressed class
    map with a colour table. Input nodata becomes 255.

    Outputs: MAP.tif (uint8 FLAIR codes, or 0-based indices with --indices),
    MAP_proba.tif (one uint8 band per class, round(255 x p)) and
    MAP_confidence.tif on request. CRS, transform and size are the input's;
    files appear only when complete. See docs/detect.md.

    Typical uses:

      flair-deploy detect ortho.tif -m model.onnx -o landcover.tif

      flair-deploy detect tiles/ -m model.onnx -o maps/ --resume --cog

      flair-deploy detect ortho.tif -m ign.pth --preset
      flair-inc-rgbie-15cl-resnet34-unet --stitching crop --indices -o map.tif

      flair-deploy detect --config flair-1-config-detect.yaml
      --preset flair-inc-rgbie-15cl-resnet34-unet
    """
    from flair_deploy.inference.detect import detect

    cfg = _build_config(
        config,
        inputs=tuple(inputs) if inputs else None,
        model=model,
        output=out,
        preset=preset,
        backend=backend,
        device=device,
        precision=precision,
        backend_options=_parse_options(backend_option) or None,
        bands=parse_bands(bands),
        stitching=stitching,
        tile_size=tile,
        overlap=overlap,
        margin=margin,
        batch_size=batch_size,
        readers=readers,
        indices=indices or None,
        probabilities=probabilities or None,
        confidence=confidence or None,
        compress=compress,
        cog=cog or None,
        overviews=False if no_overviews else None,
        overwrite=overwrite or None,
        resume=resume or None,
        allow_gsd_mismatch=allow_gsd_mismatch or None,
        assume_crs=assume_crs,
        date=date,
        time=time,
        camera=camera,
        altitude=altitude,
        metadata_json=metadata_json,
    )
    with _Progress(enabled=not quiet) as bar:
        summary = detect(cfg, progress=bar.update)
    _report(summary)


def _build_config(config: Path | None, **given: Any) -> Any:
    from flair_deploy.config import load_config, read_yaml
    from flair_deploy.inference.config import DetectConfig, from_ign_detect, is_ign_detect_config

    base: dict[str, Any] = {}
    if config is not None:
        data = read_yaml(config)
        if is_ign_detect_config(data):
            mapping = from_ign_detect(data, source=str(config))
            base = mapping.values
            for note in mapping.notes:
                typer.echo(f"note: {config.name}: {note}", err=True)
        else:
            base = data
    base.update({k: v for k, v in given.items() if v is not None})
    if "inputs" not in base:
        raise ConfigError("no input raster given; pass one or more rasters (or input_img_path in --config)")
    if "output" not in base:
        raise ConfigError("no output given; pass --out MAP.tif (one input) or --out FOLDER")
    return load_config(DetectConfig, None, (), base=base)


class _Progress:
    """Progress bar over megapixels: tiles, Mpx/s and ETA (on stderr; off with --quiet)."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self._progress: Any = None
        self._task: Any = None
        self._start = 0.0

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> Literal[False]:
        if self._progress is not None:
            self._progress.stop()
        return False

    def update(self, p: DetectProgress) -> None:
        if not self.enabled:
            return
        import time

        if self._progress is None:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.completed:.1f}/{task.total:.1f} Mpx"),
                TextColumn("{task.fields[rate]}"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            self._progress.start()
            self._task = self._progress.add_task("detect", total=p.pixels_total / 1e6, rate="")
            self._start = time.perf_counter()
        elapsed = max(time.perf_counter() - self._start, 1e-9)
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
