"""Read and show the self-description of any flair-deploy artifact.

:func:`read_description` is the one entry point runtimes use to learn how to feed a model: it reads
ONNX ``metadata_props``, the JSON sidecar of a TensorRT engine, or a checkpoint, and needs no other
input.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flair_deploy._optional import require
from flair_deploy.description import ModelDescription
from flair_deploy.errors import ModelDescriptionError

__all__ = ["ENGINE_SUFFIXES", "ONNX_SUFFIXES", "describe_text", "read_description", "render_description"]

ONNX_SUFFIXES = (".onnx",)
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
_CHECKPOINT_SUFFIXES = (".ckpt", ".pt", ".pth", ".safetensors")


def read_description(path: Path, *, preset: str | None = None) -> ModelDescription:
    """Return the description of an ONNX model, a TensorRT engine (its sidecar) or a checkpoint.

    Args:
        path: ``.onnx``; ``.engine``/``.plan``/``.trt`` (reads ``<path>.json``); ``.ckpt``/``.pt``/
            ``.pth``/``.safetensors``; or a sidecar ``.json`` itself.
        preset: Description preset for IGN checkpoints, which carry none.

    Returns:
        The validated description.

    Raises:
        ModelDescriptionError: If the file is missing, of an unknown kind, or carries no valid
            description.
        CheckpointError: For unreadable checkpoints.
    """
    if not path.exists():
        raise ModelDescriptionError(f"{path} does not exist; give an .onnx, .engine or checkpoint file")
    suffix = path.suffix.lower()
    if suffix in ONNX_SUFFIXES:
        from flair_deploy.exports.onnx import read_onnx_description

        return read_onnx_description(path)
    if suffix in ENGINE_SUFFIXES:
        from flair_deploy.exports.tensorrt import read_engine_description

        return read_engine_description(path)
    if suffix == ".json":
        return ModelDescription.load_sidecar(path)
    if suffix in _CHECKPOINT_SUFFIXES:
        require("torch", purpose=f"reading the checkpoint {path.name}")
        from flair_deploy.checkpoints import load_checkpoint

        return load_checkpoint(path, preset=preset).description
    raise ModelDescriptionError(
        f"{path.name}: unknown model file type {suffix!r}; expected .onnx, .engine/.plan, a sidecar .json "
        "or a checkpoint (.ckpt, .pt, .pth, .safetensors)"
    )


def describe_text(description: ModelDescription) -> dict[str, Any]:
    """Return the description as a JSON-compatible dict (what ``inspect --json`` prints)."""
    return description.to_dict()


def render_description(description: ModelDescription, *, source: str = "") -> Any:
    """Return a rich renderable summarising *description*: header, classes table, provenance."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    d = description
    norm = d.normalization
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    head.add_row("model", f"{d.name}" + (f"  ({source})" if source else ""))
    head.add_row(
        "architecture",
        f"{d.architecture.arch} / {d.architecture.encoder} (depth {d.architecture.encoder_depth}, "
        f"output stride {d.architecture.output_stride})",
    )
    head.add_row("bands", f"{', '.join(d.bands)}  ({d.input_dtype} rasters, raw values fed to the graph)")
    if norm.kind.value == "meanstd":
        pairs = ", ".join(f"{b}: {m:g}±{s:g}" for b, m, s in zip(d.bands, norm.mean, norm.std, strict=False))
        head.add_row("normalisation", f"meanstd (in graph): {pairs}")
    elif norm.kind.value == "scale":
        head.add_row("normalisation", f"scale (in graph): x / {norm.max_value:g}")
    else:
        head.add_row("normalisation", "none")
    head.add_row("tile / overlap", f"{d.tile_size} px / {d.overlap} px")
    head.add_row("gsd", f"{d.gsd:g} m/px")
    head.add_row("nodata (output)", str(d.nodata))
    if d.metadata is None:
        head.add_row("metadata input", "none (image only)")
    else:
        m = d.metadata
        fields = f": {', '.join(m.fields)}" if m.fields else ""
        head.add_row("metadata input", f"{m.encoding}, {m.dim} values{fields}")
    classes = Table(
        title=f"classes ({d.num_classes} logits, {sum(d.active_mask)} active)", title_justify="left"
    )
    for col in ("logit", "code", "name", "colour", "active", "aliases"):
        classes.add_column(col)
    for i, c in enumerate(d.classes):
        swatch = Text("■ ", style=c.color) + Text(c.color)
        classes.add_row(
            str(i),
            str(c.code),
            c.name,
            swatch,
            "yes" if c.active else "no",
            ", ".join(str(a) for a in c.aliases) or "",
        )
    prov = Table.grid(padding=(0, 2))
    prov.add_column(style="bold")
    prov.add_column()
    p = d.provenance
    prov.add_row("precision", p.precision.value)
    prov.add_row("source", f"{p.source or '—'}" + (f"  sha256 {p.source_sha256}" if p.source_sha256 else ""))
    if p.opset is not None:
        prov.add_row("opset", str(p.opset))
    if p.calibration_sha256:
        prov.add_row("calibration", f"{p.calibration_method}  sha256 {p.calibration_sha256}")
    if p.parity:
        prov.add_row("parity", json.dumps(p.parity))
    for key, value in sorted(p.extra.items()):
        prov.add_row(key, value)
    return Group(head, Text(""), classes, Text(""), Text("provenance", style="bold underline"), prov)
