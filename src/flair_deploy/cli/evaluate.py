"""`flair-deploy evaluate`: score a checkpoint on a labelled FLAIR patch list."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from flair_deploy._optional import require_extra
from flair_deploy.cli._options import (
    PATCH_SOURCE_FLAGS,
    ConfigOption,
    ElevationOffsetOption,
    ElevationScaleOption,
    PatchElevationOption,
    PatchIrcOption,
    ReprojectOption,
    ResamplingOption,
    SetOption,
    VersionOption,
    band_source_values,
    echo_notes,
    given_flags,
    parse_bands,
)

if TYPE_CHECKING:
    from flair_deploy.training.evaluate import EvaluationResult

__all__ = ["command"]


CONFIG_MODEL = "flair_deploy.training.config:EvaluateConfig"

#: Option → EvaluateConfig key (see cli._options).
FLAGS = {
    "checkpoint": "checkpoint",
    "csv": "csv",
    "out": "out_dir",
    "preset": "preset",
    "bands": "bands",
    "aerial": "aerial_json",
    "batch_size": "batch_size",
    "workers": "num_workers",
    "device": "device",
    "predictions": "predictions",
    "ignore_unknown": "ignore_unknown",
    "overwrite": "overwrite",
    **PATCH_SOURCE_FLAGS,
}

EXAMPLES = (
    "flair-deploy evaluate runs/best.ckpt --csv data/test.csv --out eval/",
    (
        "flair-deploy evaluate ign.pth --preset flair-inc-rgbie-15cl-resnet34-unet \\\n"
        "    --csv test.csv --out eval/ --predictions"
    ),
    "flair-deploy evaluate model.ckpt --csv test.csv --out eval/ --bands 1,2,3",
    (
        "flair-deploy evaluate model.ckpt --csv rvb_patches.csv --out eval/ \\\n"
        "    --irc IRC/ --elevation heights.vrt"
    ),
)


def command(
    checkpoint: Annotated[
        Path | None,
        typer.Argument(
            metavar="CHECKPOINT",
            help="Checkpoint to evaluate: a flair-deploy .ckpt, or IGN .ckpt/.pth weights with --preset.",
            show_default=False,
        ),
    ] = None,
    csv: Annotated[
        Path | None,
        typer.Option(
            "--csv",
            metavar="CSV",
            help="FLAIR patch list: 'image,mask' rows, no header; relative paths from the CSV. Required.",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            metavar="FOLDER",
            help="Output folder for metrics.json, confusion matrix, predictions. Required.",
        ),
    ] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
    preset: Annotated[
        str | None,
        typer.Option(
            metavar="NAME",
            help="Model description for checkpoints that carry none (IGN weights); e.g. "
            "flair-inc-rgbie-15cl-resnet34-unet.",
        ),
    ] = None,
    bands: Annotated[
        str | None,
        typer.Option(
            metavar="N,N,...",
            help="1-based raster bands in the model's band order, e.g. 1,2,3,4,5 (default: 1..C).",
        ),
    ] = None,
    aerial: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE", help="FLAIR aerial metadata JSON; required for models that fuse metadata."
        ),
    ] = None,
    batch_size: Annotated[int | None, typer.Option(metavar="N", help="Patches per forward pass.")] = None,
    workers: Annotated[
        int | None, typer.Option(metavar="N", help="Data-loading worker processes (0: main process).")
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(metavar="DEVICE", help="Torch device, e.g. cpu or cuda (default: cuda if available)."),
    ] = None,
    predictions: Annotated[
        bool, typer.Option("--predictions", help="Also write predictions/PRED_<name>.tif for every patch.")
    ] = False,
    ignore_unknown: Annotated[
        bool,
        typer.Option("--ignore-unknown", help="Skip mask codes outside the class table instead of failing."),
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace existing outputs in --out.")
    ] = False,
    # Band sources (BD ORTHO patches: the CSV's images are RVB, completed with IRC and elevation)
    irc: PatchIrcOption = None,
    elevation: PatchElevationOption = None,
    elevation_scale: ElevationScaleOption = None,
    elevation_offset: ElevationOffsetOption = None,
    reproject: ReprojectOption = False,
    resampling: ResamplingOption = None,
    version: VersionOption = False,
) -> None:
    """Score a checkpoint on labelled patches: mIoU, IoU, confusion.

    CHECKPOINT is scored with per-class IoU, accuracy, F-score and the
    confusion matrix.

    Metrics are reported under three named conventions: 'present' (ours:
    active classes occurring in the data), 'ign' (IGN's current code:
    inactive classes deleted, absent classes count 0) and 'challenge' (FLAIR
    #1 challenge: codes 13-19 folded into 'other', mean over 12 classes). See
    docs/evaluation.md.

    Writes metrics.json, confusion_matrix.csv (pixel counts, rows = ground
    truth), confusion_matrix.png (row-normalised) and, with --predictions,
    predictions/PRED_<name>.tif (FLAIR codes, colour table, nodata 255).
    Existing outputs need --overwrite.
    """
    require_extra("train", purpose="flair-deploy evaluate")
    from flair_deploy.training.config import load_evaluate_config
    from flair_deploy.training.evaluate import evaluate

    flags, names = given_flags(
        FLAGS,
        checkpoint=checkpoint,
        csv=csv,
        out=out,
        preset=preset,
        bands=parse_bands(bands),
        aerial=aerial,
        batch_size=batch_size,
        workers=workers,
        device=device,
        predictions=predictions or None,
        ignore_unknown=ignore_unknown or None,
        overwrite=overwrite or None,
        **band_source_values(
            rvb=None,
            irc=irc,
            elevation=elevation,
            elevation_scale=elevation_scale,
            elevation_offset=elevation_offset,
            band=None,
            reproject=reproject,
            resampling=resampling,
        ),
    )
    names["checkpoint"] = "CHECKPOINT"
    cfg, notes = load_evaluate_config(config, set_ or (), flags, flag_names=names)
    echo_notes(config, notes)
    result = evaluate(
        cfg.checkpoint,
        cfg.csv,
        cfg.out_dir,
        preset=cfg.describer(),
        band_indexes=cfg.bands,
        aerial_json=cfg.aerial_json,
        batch_size=cfg.batch_size,
        num_workers=cfg.num_workers,
        device=cfg.device,
        ignore_unknown=cfg.ignore_unknown,
        save_predictions=cfg.predictions,
        overwrite=cfg.overwrite,
        sources=cfg.sources,
    )
    _report(result)


def _fmt(x: float | None) -> str:
    return "—" if x is None or math.isnan(x) else f"{100 * x:.1f}"


def _report(result: EvaluationResult) -> None:
    from rich.console import Console
    from rich.table import Table

    from flair_deploy.training.metrics import CHALLENGE_NUM_CLASSES

    convs = list(result.metrics)
    per_class = Table(title=f"IoU per class (%), {result.patches} patches", title_justify="left")
    per_class.add_column("class")
    per_class.add_column("pixels", justify="right")
    for conv in convs:
        per_class.add_column(conv, justify="right")
    # Ground-truth pixels per logit from the full matrix, so untrained classes show their pixels too.
    matrix = result.confusion_matrix
    assert matrix is not None  # the command always scores (evaluate's score=True)
    support = matrix.sum(axis=1)
    for i, cls in enumerate(result.description.classes):
        label = cls.name if cls.active else f"[dim]{cls.name} (untrained)[/dim]"
        cells = []
        for conv in convs:
            # The challenge scores its first classes by name; its folded "other" gets a row of its own below.
            value = (
                math.nan
                if conv == "challenge" and i >= CHALLENGE_NUM_CLASSES - 1
                else result.metrics[conv].per_class_iou.get(cls.name)
            )
            cells.append(_fmt(value))
        per_class.add_row(label, f"{int(support[i]):,}", *cells)
    if "challenge" in result.metrics:
        other = result.metrics["challenge"]
        cells = [_fmt(other.per_class_iou["other"]) if c == "challenge" else "" for c in convs]
        per_class.add_row("other (codes 13-19 folded)", f"{other.support['other']:,}", *cells)
    summary = Table(title="Summary (%)", title_justify="left")
    for col in ("convention", "mIoU", "OA", "F-score", "precision", "recall"):
        summary.add_column(col, justify="left" if col == "convention" else "right")
    for conv, m in result.metrics.items():
        summary.add_row(
            conv, _fmt(m.miou), _fmt(m.overall_accuracy), _fmt(m.fscore), _fmt(m.precision), _fmt(m.recall)
        )
    console = Console()
    console.print(per_class)
    console.print(summary)
    console.print(
        f"{result.patches} patches predicted in {result.seconds:.1f} s; "
        f"wrote {len(result.files)} file(s) to {result.files[0].parent}"
    )
