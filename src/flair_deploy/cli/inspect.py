"""`flair-deploy inspect`: print the self-description of an ONNX model, engine or checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from flair_deploy.cli._options import VersionOption

__all__ = ["command"]

EXAMPLES = (
    "flair-deploy inspect models/flair.fp32.onnx",
    "flair-deploy inspect models/flair.fp16.engine --json",
    (
        "flair-deploy inspect FLAIR-INC_rgbie_15cl_resnet34-unet_weights.pth \\\n"
        "    --preset flair-inc-rgbie-15cl-resnet34-unet"
    ),
)


def command(
    model: Annotated[
        Path,
        typer.Argument(
            metavar="MODEL",
            help="An .onnx file, a TensorRT .engine/.plan (reads its .json sidecar) or a checkpoint.",
        ),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print the full description as JSON.")] = False,
    preset: Annotated[
        str | None,
        typer.Option(
            metavar="NAME", help="Describe IGN checkpoints, which carry no description, with a preset."
        ),
    ] = None,
    version: VersionOption = False,
) -> None:
    """Show how to feed a model: bands, classes, tile, provenance.

    Prints the self-description of an ONNX model, an engine or a checkpoint:
    bands, normalisation, classes, tile, GSD, metadata input, provenance.
    """
    from flair_deploy.exports.inspect import read_description, render_description

    description = read_description(model, preset=preset)
    if as_json:
        typer.echo(json.dumps(description.to_dict(), indent=2))
        return
    from rich.console import Console

    Console().print(render_description(description, source=model.name))
