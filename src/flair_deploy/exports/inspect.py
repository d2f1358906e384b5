"""Show the self-description of any flair-deploy artifact.

Reading it is :func:`flair_deploy.artifacts.read_description` (re-exported here): ONNX
``metadata_props``, the JSON sidecar of a TensorRT engine, or a checkpoint, with no other input.
"""

from __future__ import annotations

import json
from typing import Any

from flair_deploy.artifacts import read_description
from flair_deploy.description import ModelDescription

__all__ = ["describe_text", "read_description", "render_description"]


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
    a = d.architecture
    if a.provider == "huggingface":
        built = f"HuggingFace {a.hf_model}, output stride {a.output_stride}"
    else:
        built = f"depth {a.encoder_depth}, output stride {a.output_stride}"
    head.add_row("architecture", f"{a.arch} / {a.encoder} ({built})")
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
