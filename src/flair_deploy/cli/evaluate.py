"""`flair-deploy evaluate`: score a checkpoint on a labelled FLAIR patch list."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from flair_deploy._optional import require_extra
from flair_deploy.cli._options import parse_bands

if TYPE_CHECKING:
    from flair_deploy.training.evaluate import EvaluationResult

__all__ = ["command"]


def command(
    checkpoint: Annotated[
        Path,
        typer.Argument(
            help="Checkpoint to evaluate: a flair-deploy .ckpt, or IGN .ckpt/.pth weights with --preset."
        ),
    ],
    csv: Annotated[
        Path,
        typer.Option(
            "--csv", help="FLAIR patch list: 'image,mask' rows, no header; relative paths from the CSV."
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", help="Output folder for metrics.json, confusion matrix, predictions.")
    ],
    preset: Annotated[
        str | None,
        typer.Option(
            help="Model description for checkpoints that carry none (IGN weights); e.g. flair-inc-rgbie-15cl-resnet34-unet."
        ),
    ] = None,
    bands: Annotated[
        str | None,
        typer.Option(help="1-based raster bands in the model's band order, e.g. 1,2,3,4,5 (default: 1..C)."),
    ] = None,
    aerial: Annotated[
        Path | None, typer.Option(help="FLAIR aerial metadata JSON; required for models that fuse metadata.")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Patches per forward pass.")] = 8,
    workers: Annotated[int, typer.Option(min=0, help="Data-loading worker processes (0: main process).")] = 0,
    device: Annotated[
        str | None, typer.Option(help="Torch device, e.g. cpu or cuda (default: cuda if available).")
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
) -> None:
    """Evaluate CHECKPOINT on labelled patches: mIoU, per-class IoU, accuracy, F-score, confusion matrix.

    Metrics are reported under three named conventions: 'present' (ours: active classes occurring in
    the data), 'ign' (IGN's current code: inactive classes deleted, absent classes count 0) and
    'challenge' (FLAIR #1 challenge: codes 13-19 folded into 'other', mean over 12 classes).
    See docs/evaluation.md.

    Writes metrics.json, confusion_matrix.csv (pixel counts, rows = ground truth),
    confusion_matrix.png (row-normalised) and, with --predictions, predictions/PRED_<name>.tif
    (FLAIR codes, colour table, nodata 255). Existing outputs need --overwrite.

    Typical uses:

      flair-deploy evaluate runs/best.ckpt --csv data/test.csv --out eval/

      flair-deploy evaluate ign.pth --preset flair-inc-rgbie-15cl-resnet34-unet --csv test.csv --out eval/ --predictions

      flair-deploy evaluate model.ckpt --csv test.csv --out eval/ --bands 1,2,3 --overwrite
    """
    require_extra("train", purpose="flair-deploy evaluate")
    from flair_deploy.training.evaluate import evaluate

    result = evaluate(
        checkpoint,
        csv,
        out,
        preset=preset,
        band_indexes=parse_bands(bands),
        aerial_json=aerial,
        batch_size=batch_size,
        num_workers=workers,
        device=device,
        ignore_unknown=ignore_unknown,
        save_predictions=predictions,
        overwrite=overwrite,
    )
    _report(result)


def _fmt(x: float | None) -> str:
    return "—" if x is None or math.isnan(x) else f"{100 * x:.1f}"


def _report(result: EvaluationResult) -> None:
    from rich.console import Console
    from rich.table import Table

    convs = list(result.metrics)
    per_class = Table(title=f"IoU per class (%), {result.patches} patches", title_justify="left")
    per_class.add_column("class")
    per_class.add_column("pixels", justify="right")
    for conv in convs:
        per_class.add_column(conv, justify="right")
    # Ground-truth pixels per logit from the full matrix, so untrained classes show their pixels too.
    support = result.confusion_matrix.sum(axis=1)
    for i, cls in enumerate(result.description.classes):
        label = cls.name if cls.active else f"[dim]{cls.name} (untrained)[/dim]"
        cells = []
        for conv in convs:
            # The challenge scores logits 0-11 by name; its folded "other" gets a row of its own below.
            value = (
                math.nan
                if conv == "challenge" and i >= 12
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
