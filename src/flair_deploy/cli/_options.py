"""What every command shares: the command class, ``--config``/``--set``, flag tables and parsers.

Each command declares a *flag table*: option parameter name → the dotted key of its config model it
sets. The same table turns the given options into the loader's ``flags`` (options default to None, "not
given", so the config models hold the only defaults), names the option in error messages, and fills
``[default: ...]`` in ``--help`` from the model, read when help is shown.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel
from typer.core import TyperCommand

from flair_deploy.config import parse_override
from flair_deploy.errors import ConfigError

__all__ = [
    "BAND_SOURCE_FLAGS",
    "PATCH_SOURCE_FLAGS",
    "BandOption",
    "ConfigOption",
    "ElevationOffsetOption",
    "ElevationOption",
    "ElevationScaleOption",
    "IrcOption",
    "PatchElevationOption",
    "PatchIrcOption",
    "ReprojectOption",
    "ResamplingOption",
    "RvbOption",
    "SetOption",
    "VersionOption",
    "band_source_values",
    "choices",
    "command_class",
    "given_flags",
    "help_text",
    "parse_bands",
    "parse_key_values",
    "split_list",
    "version_text",
]

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        metavar="FILE",
        help=(
            "YAML file of config keys, or IGN's flair-1-config.yaml / flair-1-config-detect.yaml, "
            "which also describes IGN-layout weights (see configs/README.md). Options override it."
        ),
    ),
]
SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        metavar="KEY=VALUE",
        help="Override one config key (value parsed as YAML); repeatable. Beats --config, loses to options.",
    ),
]


def echo_notes(config: Path | None, notes: Sequence[str]) -> None:
    """Print the loader's notes (IGN keys not applied as such) to stderr, one line each."""
    for note in notes:
        typer.echo(f"note: {config.name if config else 'config'}: {note}", err=True)


def version_text() -> str:
    """``flair-deploy <version>``."""
    from flair_deploy import __version__

    return f"flair-deploy {__version__}"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(version_text())
        raise typer.Exit()


VersionOption = Annotated[
    bool,
    typer.Option(
        "--version",
        callback=_print_version,
        is_eager=True,
        expose_value=True,
        help="Show the version and exit.",
    ),
]


def choices(enum: type[Enum]) -> str:
    """The help metavar of an enum option, e.g. ``[blend|crop]``."""
    return "[" + "|".join(str(m.value) for m in enum) + "]"


def _fallback_metavar(param: Any) -> str:
    # Typer >= 0.24 describes types with a type descriptor, older Typer with Click's param types.
    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    name = str(getattr(annotation, "__name__", None) or getattr(getattr(param, "type", None), "name", ""))
    return {"int": "N", "integer": "N", "float": "X", "Path": "PATH", "path": "PATH"}.get(name, "TEXT")


def _config_default(cls: type[BaseModel], dotted: str) -> Any:
    """The default of a dotted key of *cls* (None when it has none)."""
    from flair_deploy.config import model_of

    *sections, key = dotted.split(".")
    model: type[BaseModel] | None = cls
    for section in sections:
        info = model.model_fields.get(section) if model is not None else None
        model = model_of(info.annotation) if info is not None else None
    info = model.model_fields.get(key) if model is not None else None
    return None if info is None or info.is_required() else info.get_default(call_default_factory=True)


def _default_text(value: Any) -> str | None:
    if value is None or isinstance(value, bool) or value in ((), {}):
        return None
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, tuple | list):
        return ",".join(_default_text(v) or "" for v in value)
    return str(value)


class _Command(TyperCommand):
    """A Typer command with user-facing metavars and ``[default: ...]`` read from its config model."""

    config_model: str | None = None  # "module:Class"
    flag_table: Mapping[str, str] = {}

    def get_params(self, ctx: Any) -> list[Any]:
        params: list[Any] = super().get_params(ctx)
        for p in params:
            if p.param_type_name == "option" and p.metavar is None and not getattr(p, "is_flag", False):
                p.metavar = _fallback_metavar(p)
        return params

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for p in self.get_params(ctx):
            if p.param_type_name == "argument":
                name = p.metavar or (p.name or "ARG").upper()
                if p.nargs != 1 and not name.endswith("..."):
                    name += "..."
                pieces.append(name if p.required else f"[{name}]")
        return pieces

    def format_options(self, ctx: Any, formatter: Any) -> None:
        model = self._model()
        args, opts = [], []
        for p in self.get_params(ctx):
            if p.param_type_name == "argument":
                name = p.metavar or (p.name or "ARG").upper()
                extra = "  [required]" if p.required else ""
                args.append((name, (p.help or "") + extra))
                continue
            record = p.get_help_record(ctx)
            if record is None:
                continue
            key = self.flag_table.get(p.name or "")
            if model is not None and key is not None:
                text = _default_text(_config_default(model, key))
                if text is not None and "[default:" not in record[1]:
                    record = (record[0], f"{record[1]}  [default: {text}]")
            opts.append(record)
        if args:
            with formatter.section("Arguments"):
                formatter.write_dl(args)
        if opts:
            with formatter.section("Options"):
                formatter.write_dl(opts)

    def _model(self) -> type[BaseModel] | None:
        if self.config_model is None:
            return None
        module, _, name = self.config_model.partition(":")
        model: type[BaseModel] = getattr(importlib.import_module(module), name)
        return model


def command_class(
    config_model: str | None = None, flags: Mapping[str, str] | None = None
) -> type[TyperCommand]:
    """The command class of one command: its config model (``"module:Class"``) and flag table."""
    return type("Command", (_Command,), {"config_model": config_model, "flag_table": dict(flags or {})})


def help_text(doc: str | None, examples: Sequence[str]) -> str:
    """A command's help: its docstring, then its examples kept line by line (Click's no-rewrap marker)."""
    import inspect

    lines = "\n".join(f"  {line}" for example in examples for line in example.splitlines())
    return (
        f"{inspect.cleandoc(doc or '')}\n\nExamples:\n\n\b\n{lines}"
        if examples
        else inspect.cleandoc(doc or "")
    )


def given_flags(table: Mapping[str, str], **values: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """Turn option values into the loader's ``flags`` and ``flag_names`` (None values: not given).

    Args:
        table: Option parameter name → dotted config key.
        values: The parsed option values, by parameter name (converted ones, e.g. parsed lists).

    Returns:
        Dotted key → value for the options given, and dotted key → ``--option`` for messages.
    """
    flags: dict[str, Any] = {}
    names: dict[str, str] = {}
    for param, key in table.items():
        value = values.get(param)
        if isinstance(value, Enum):
            value = value.value
        if value is not None:
            flags[key] = value
        # Options are named after their parameter (``batch_size`` -> ``--batch-size``, ``json_`` -> ``--json``).
        names[key] = "--" + param.rstrip("_").replace("_", "-")
    return flags, names


def split_list(text: str | Sequence[str] | None, flag: str) -> list[str] | None:
    """Split ``a,b`` (or repeated values of a list option) into items; None when not given.

    Raises:
        ConfigError: For an empty list.
    """
    if text is None:
        return None
    items = [text] if isinstance(text, str) else list(text)
    out = [part.strip() for item in items for part in item.split(",") if part.strip()]
    if not out:
        raise ConfigError(f"{flag} is empty; give a comma-separated list")
    return out


def parse_bands(text: str | None) -> tuple[int, ...] | None:
    """Parse ``--bands 1,2,3`` into 1-based band numbers (None when the option is not given).

    Raises:
        ConfigError: For anything but a non-empty comma-separated list of integers.
    """
    if text is None:
        return None
    try:
        bands = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise ConfigError(
            f"--bands {text!r} is not a comma-separated list of 1-based band numbers, e.g. 1,2,3,4,5"
        ) from None
    if not bands:
        raise ConfigError("--bands is empty; give 1-based band numbers, e.g. 1,2,3,4,5")
    return bands


def parse_key_values(items: Sequence[str] | None, flag: str) -> dict[str, Any] | None:
    """Parse repeated ``KEY=VALUE`` options (values as YAML) into a dict; None when none given.

    Raises:
        ConfigError: For an item that is not ``KEY=VALUE``.
    """
    if not items:
        return None
    out: dict[str, Any] = {}
    for item in items:
        try:
            key, value = parse_override(item)
        except ConfigError:
            raise ConfigError(
                f"{flag} {item!r} is not of the form KEY=VALUE, e.g. {flag} threads=4"
            ) from None
        out[key] = value
    return out


# Band sources (BD ORTHO products assembled on the fly): shared by the commands that read orthophotos.
#: Band-source option → DetectConfig key (merged into a command's flag table).
BAND_SOURCE_FLAGS = {
    "rvb": "sources.rvb",
    "irc": "sources.irc",
    "elevation": "sources.elevation",
    "elevation_scale": "sources.elevation_scale",
    "elevation_offset": "sources.elevation_offset",
    "band": "sources.band",
    "reproject": "sources.reproject",
    "resampling": "sources.resampling",
}
RvbOption = Annotated[
    Path | None,
    typer.Option(
        "--rvb",
        metavar="PATH",
        help="BD ORTHO RVB ortho (R, G, B), instead of RASTER...: one tile, or a folder of tiles "
        "matched to --irc by the km corner in IGN's names. See docs/bd-ortho.md.",
    ),
]
IrcOption = Annotated[
    Path | None,
    typer.Option(
        "--irc", metavar="PATH", help="BD ORTHO IRC ortho (NIR, R, G) of the same tile(s): its band 1 is NIR."
    ),
]
ElevationOption = Annotated[
    Path | None,
    typer.Option(
        "--elevation",
        metavar="PATH",
        help="Height above ground in metres (DSM - DTM), any grid: becomes E, warped onto the RVB grid. "
        "A file for every tile (e.g. a VRT mosaic) or a folder of tiles matched by name.",
    ),
]
ElevationScaleOption = Annotated[
    float | None,
    typer.Option(
        "--elevation-scale", metavar="X", help="E = height x X + offset (FLAIR: 5, 1 unit = 0.2 m)."
    ),
]
ElevationOffsetOption = Annotated[
    float | None, typer.Option("--elevation-offset", metavar="X", help="Added to E after scaling.")
]
BandOption = Annotated[
    list[str] | None,
    typer.Option(
        "--band",
        metavar="PATH[:N][*SCALE][+OFFSET]",
        help="One model band from any raster, repeated once per model band in its order, instead of "
        "--rvb/--irc, e.g. --band rvb.jp2:1 --band rvb.jp2:2 --band rvb.jp2:3 --band irc.jp2:1 "
        "--band height.tif*5.",
    ),
]
ReprojectOption = Annotated[
    bool,
    typer.Option(
        "--reproject", help="Warp band sources in another CRS onto the RVB grid (refused without it)."
    ),
]
ResamplingOption = Annotated[
    str | None,
    typer.Option(
        "--resampling",
        metavar="NAME",
        help="Kernel for band sources on another grid: nearest, bilinear, cubic, average, ... "
        "(default: bilinear for float sources such as elevation, nearest for imagery).",
    ),
]


def band_source_values(
    *,
    rvb: Path | None,
    irc: Path | None,
    elevation: Path | None,
    elevation_scale: float | None,
    elevation_offset: float | None,
    band: Sequence[str] | None,
    reproject: bool,
    resampling: str | None,
) -> dict[str, Any]:
    """The band-source options as :func:`given_flags` values (None: not given)."""
    return {
        "rvb": rvb,
        "irc": irc,
        "elevation": elevation,
        "elevation_scale": elevation_scale,
        "elevation_offset": elevation_offset,
        "band": list(band) if band else None,
        "reproject": True if reproject else None,
        "resampling": resampling,
    }


#: ``evaluate``'s band-source options → EvaluateConfig key: the patch list's images are the RVB rasters.
PATCH_SOURCE_FLAGS = {k: v for k, v in BAND_SOURCE_FLAGS.items() if k not in ("rvb", "band")}
PatchIrcOption = Annotated[
    Path | None,
    typer.Option(
        "--irc",
        metavar="PATH",
        help="BD ORTHO patches: the CSV's images are RVB rasters and this folder holds their IRC rasters "
        "(NIR, R, G), matched by IGN tile corner or by name (RVB -> IRC). See docs/bd-ortho.md.",
    ),
]
PatchElevationOption = Annotated[
    Path | None,
    typer.Option(
        "--elevation",
        metavar="PATH",
        help="With --irc: height above ground in metres, any grid, as E: one file (a mosaic) or a folder "
        "matched like --irc.",
    ),
]
