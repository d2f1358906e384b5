"""The ``flair-deploy`` command line: a thin Typer shell over the library.

Each command lives in its own module, parses its options, calls one library function and reports.
:func:`main` is the error boundary: a :class:`~flair_deploy.errors.FlairDeployError` is printed as one
line on stderr with exit status 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys

import typer

from flair_deploy.cli import benchmark, demo, detect, evaluate, export, inspect, train
from flair_deploy.errors import FlairDeployError

__all__ = ["app", "main"]

app = typer.Typer(
    name="flair-deploy",
    help=(
        "Land-cover segmentation of aerial orthophotos (FLAIR #1: R, G, B, NIR, elevation at 0.2 m), "
        "from training to fast, verified deployment.\n\n"
        "Typical flow: train -> evaluate -> export -> detect; benchmark compares backends."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("train")(train.command)
app.command("evaluate")(evaluate.command)
app.command("export")(export.command)
app.command("inspect")(inspect.command)
app.command("detect")(detect.command)
app.command("benchmark")(benchmark.command)
app.command("demo")(demo.command)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; user errors become one line on stderr and exit status 1."""
    try:
        # Standalone mode: Typer/Click handle --help and usage errors (exit 2) themselves; our own
        # errors propagate out of the command and are reported here.
        app(args=argv, prog_name="flair-deploy")
    except FlairDeployError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)
