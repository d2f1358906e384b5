"""The ``flair-deploy`` command line: a thin Typer shell over the library.

Each command lives in its own module: it parses its options, calls its stage's
``load_<command>_config(path, overrides, flags)`` and one library function, and reports. Options default
to None, so the config models hold the only defaults (shown in ``--help``).

:func:`main` is the error boundary. Typer/Click run in non-standalone mode, so that a usage error (bad
choice, unknown option, missing value) becomes, like a :class:`~flair_deploy.errors.FlairDeployError`,
one line on stderr naming the option, the value and what is allowed, with exit status 1 (never Click's
boxed usage with status 2). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys

import typer

from flair_deploy.cli import benchmark, demo, detect, evaluate, export, inspect, plan, train
from flair_deploy.cli._options import VersionOption, command_class, help_text

try:  # Typer >= 0.24 vendors Click: these are the classes it raises
    from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError
except ImportError:  # pragma: no cover - older Typer on plain Click
    from click.exceptions import ClickException, NoArgsIsHelpError, UsageError  # type: ignore[assignment]
from flair_deploy.errors import FlairDeployError

__all__ = ["app", "main"]

app = typer.Typer(
    name="flair-deploy",
    help=(
        "Land-cover segmentation of aerial orthophotos (FLAIR #1: R, G, B, NIR, elevation at 0.2 m), "
        "from training to fast, verified deployment.\n\n"
        "Typical flow: train -> evaluate -> export -> detect; benchmark compares backends. "
        "Every command takes -h for its options; config keys are documented in configs/README.md."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain Click help: readable at 80 columns, no boxes
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _app(version: VersionOption = False) -> None:
    """Land-cover segmentation of aerial orthophotos, from training to verified deployment."""


for _module in (train, evaluate, export, inspect, detect, plan, benchmark, demo):
    _name = _module.__name__.rsplit(".", 1)[-1]
    app.command(
        _name,
        cls=command_class(getattr(_module, "CONFIG_MODEL", None), getattr(_module, "FLAGS", None)),
        help=help_text(_module.command.__doc__, getattr(_module, "EXAMPLES", ())),
    )(_module.command)


def _given(argv: list[str], opts: list[str]) -> str | None:
    """The value given on the command line to one of *opts* (``--tile 70`` or ``--tile=70``)."""
    for i, arg in enumerate(argv):
        name, eq, value = arg.partition("=")
        if name in opts:
            return value if eq else (argv[i + 1] if i + 1 < len(argv) else None)
    return None


def _usage_line(exc: UsageError, argv: list[str]) -> str:
    """One line for a Click usage error: the option, the value received, what is allowed, where to look."""
    message = " ".join(exc.format_message().split()).replace("Value error, ", "")
    param = getattr(exc, "param", None)
    value = _given(argv, list(getattr(param, "opts", []))) if param is not None else None
    if value is not None and repr(value) not in message:
        message = f"{message.rstrip('.')} (got {value!r})"
    command = exc.ctx.command_path if exc.ctx is not None else "flair-deploy"
    return f"{message} (see {command} -h)"


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; user errors become one line on stderr and exit status 1."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        rc = app(args=args, prog_name="flair-deploy", standalone_mode=False)
    except FlairDeployError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except NoArgsIsHelpError as exc:
        # `flair-deploy` or a command with nothing after it: the help is the answer.
        if exc.ctx is not None:
            typer.echo(exc.ctx.get_help())
        sys.exit(0)
    except UsageError as exc:  # BadParameter, NoSuchOption, MissingParameter, ...
        typer.echo(f"error: {_usage_line(exc, args)}", err=True)
        sys.exit(1)
    except ClickException as exc:
        typer.echo(f"error: {' '.join(exc.format_message().split())}", err=True)
        sys.exit(1)
    except typer.Abort:
        typer.echo("error: aborted", err=True)
        sys.exit(130)
    sys.exit(rc if isinstance(rc, int) else 0)
