"""``flair-deploy demo``: the whole pipeline on built-in sample data (the README's main job)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flair_deploy._optional import require_extra
from flair_deploy.cli._options import VersionOption

__all__ = ["command"]

EXAMPLES = (
    "flair-deploy demo                       (writes demo-output/)",
    "flair-deploy demo --out /tmp/demo --ortho-size 4096 --retrain",
)


def command(
    out: Annotated[
        Path, typer.Option("--out", "-o", metavar="FOLDER", help="Folder for everything the demo writes.")
    ] = Path("demo-output"),
    ortho_size: Annotated[
        int,
        typer.Option(
            metavar="PX", help="Edge of the synthetic orthophoto to map, in pixels (multiple of 256)."
        ),
    ] = 2048,
    epochs: Annotated[
        int | None, typer.Option(metavar="N", help="Training epochs (default: the sample config's).")
    ] = None,
    retrain: Annotated[
        bool, typer.Option("--retrain", help="Train again even if an earlier demo left a checkpoint.")
    ] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")] = True,
    version: VersionOption = False,
) -> None:
    """The whole pipeline on built-in sample data, offline.

    Generates sample data, trains, exports to ONNX, maps an orthophoto and
    renders a preview.

    Everything runs offline on the CPU in a few minutes; a second run reuses the trained checkpoint.
    """
    require_extra("export", purpose="flair-deploy demo (it trains and exports a model)")
    from flair_deploy.demo import run_demo

    result = run_demo(
        out, ortho_size=ortho_size, epochs=epochs, retrain=retrain, progress=progress, log=typer.echo
    )
    typer.echo("")
    typer.echo(f"land-cover map : {result.class_map}   (open it in QGIS: colours and class names are inside)")
    typer.echo(f"preview        : {result.preview}")
    typer.echo(f"ONNX model     : {result.onnx}   (flair-deploy inspect {result.onnx})")
    typer.echo(f"parity report  : {result.parity_markdown}")
    typer.echo(f"detect         : {result.detect_summary}")
