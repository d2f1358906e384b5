"""Benchmark results and their four renderings: terminal table, JSON, Markdown and a PNG chart.

A :class:`BenchmarkReport` is plain data (pydantic, JSON round-trip): the environment
:class:`~flair_deploy.benchmarking.fingerprint.Fingerprint`, the hardware ceilings, and one
:class:`Row` per measured, skipped or failed configuration. Every file is written under a temporary
name and renamed when complete, so an interrupted run never leaves a half-written report.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from flair_deploy._optional import require
from flair_deploy.atomic import atomic_path, write_text
from flair_deploy.benchmarking.fingerprint import Ceiling, Fingerprint
from flair_deploy.description import Precision
from flair_deploy.errors import OutputError

__all__ = [
    "BenchmarkReport",
    "Mode",
    "Row",
    "Status",
    "load_report",
    "render_table",
    "to_markdown",
    "write_json",
    "write_markdown",
    "write_plot",
]


class Mode(StrEnum):
    """What a row measures."""

    MODEL_ONLY = "model-only"
    END_TO_END = "end-to-end"


class Status(StrEnum):
    """Outcome of a row: measured, skipped (with the reason) or failed (with the error)."""

    OK = "ok"
    SKIPPED = "skipped"
    FAILED = "failed"


class Row(BaseModel):
    """One configuration: backend x precision x variant x batch x tile, in one mode.

    Latencies are per batch; ``tiles_per_s = batch / p50`` (the median is robust to the occasional
    stall of a shared machine). ``stages`` are median seconds per batch (model-only: h2d, compute,
    d2h from the backend; end-to-end: detect's totals per stage for the whole raster).

    Attributes:
        mode: Model-only or end-to-end.
        model: File name of the artifact (or of the model given, for skipped rows).
        backend: ``torch``, ``onnxruntime`` or ``tensorrt``.
        precision: Arithmetic precision of the graph or of autocast.
        variant: ``eager``, ``channels_last``, ``compile``, ``cuda_graphs`` (torch); ``cpu``,
            ``cuda-iobinding``, ``trt-ep`` (onnxruntime); ``engine`` (TensorRT).
        device: ``cpu`` or ``cuda[:i]``.
        batch: Tiles per call (None on a skipped row that covers every batch).
        tile: Tile edge in pixels (None on a skipped row that covers every tile size).
        status: ok, skipped or failed.
        reason: Why a row was skipped or failed (one line).
        setup_s: Backend creation and activation (session creation, engine load), excluded from timings.
        warmup_s: Untimed first calls (torch.compile compilation, CUDA-graph capture, autotuning).
        iterations: Timed calls.
        p50_ms: Median latency per batch.
        p90_ms: 90th percentile latency per batch.
        p99_ms: 99th percentile latency per batch.
        mean_ms: Mean latency per batch.
        tiles_per_s: Throughput in tiles per second.
        mpx_per_s: Throughput in megapixels per second.
        gflop_per_tile: Forward-pass cost of one tile.
        achieved_gflops: ``tiles_per_s x gflop_per_tile``.
        ceiling_gflops: The hardware ceiling at this precision.
        ceiling_fraction: ``achieved_gflops / ceiling_gflops``.
        peak_rss_mib: Peak resident memory of the process during the row.
        peak_device_mib: Peak device memory during the row (NVML, else torch's allocator).
        argmax_agreement: Share of pixels whose class equals the reference's (active classes only).
        max_abs_dlogit: Largest absolute logit difference to the reference.
        stages: Seconds per stage (see above).
        compute_busy: Share of the wall time the compute unit was busy (end-to-end).
        km2_per_h: Area mapped per hour at the raster's ground sampling distance (end-to-end).
        raster: The raster of an end-to-end row.
        artifact: Full path of the artifact.
        detect: detect's own summary of an end-to-end row (``DetectSummary.as_dict()``), unchanged.
    """

    model_config = ConfigDict(extra="forbid")

    mode: Mode
    model: str
    backend: str
    precision: Precision
    variant: str
    device: str
    batch: int | None
    tile: int | None
    status: Status
    reason: str | None = None
    setup_s: float | None = None
    warmup_s: float | None = None
    iterations: int | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = None
    tiles_per_s: float | None = None
    mpx_per_s: float | None = None
    gflop_per_tile: float | None = None
    achieved_gflops: float | None = None
    ceiling_gflops: float | None = None
    ceiling_fraction: float | None = None
    peak_rss_mib: float | None = None
    peak_device_mib: float | None = None
    argmax_agreement: float | None = None
    max_abs_dlogit: float | None = None
    stages: dict[str, float] | None = None
    compute_busy: float | None = None
    km2_per_h: float | None = None
    raster: str | None = None
    artifact: str | None = None
    detect: dict[str, Any] | None = None

    @property
    def label(self) -> str:
        """Short name for charts: ``backend precision variant``."""
        return f"{self.backend} {self.precision.value} {self.variant}"


class BenchmarkReport(BaseModel):
    """Everything a benchmark run produced.

    Attributes:
        fingerprint: The environment.
        ceilings: Hardware ceiling per precision, for the benchmarked device.
        parity_reference: What parity columns compare against (e.g. ``torch fp32 cpu on model.ckpt``),
            or None when no FP32 reference was available.
        settings: The options the run was made with (min time, min iterations, tile source...).
        rows: The rows, in the order they were run.
    """

    model_config = ConfigDict(extra="forbid")

    fingerprint: Fingerprint
    ceilings: list[Ceiling]
    parity_reference: str | None = None
    settings: dict[str, Any]
    rows: list[Row]

    def ok_rows(self, mode: Mode | None = None) -> list[Row]:
        """Measured rows, optionally of one mode."""
        return [r for r in self.rows if r.status is Status.OK and (mode is None or r.mode is mode)]

    def best(self, mode: Mode = Mode.MODEL_ONLY) -> Row | None:
        """The row with the highest tiles/s in *mode*, or None."""
        rows = [r for r in self.ok_rows(mode) if r.tiles_per_s is not None]
        return max(rows, key=lambda r: r.tiles_per_s or 0.0) if rows else None


# ---------------------------------------------------------------------------------------- writing
def write_json(report: BenchmarkReport, path: Path) -> None:
    """Write the report as indented JSON (atomically).

    Raises:
        OutputError: If the file cannot be written (disk full, folder not writable), as one line.
    """
    write_text(path, report.model_dump_json(indent=2) + "\n")


def _fmt(value: float | None, spec: str, scale: float = 1.0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return format(value * scale, spec)


def _columns(mode: Mode) -> list[tuple[str, Callable[[Row], str]]]:
    common: list[tuple[str, Callable[[Row], str]]] = [
        ("backend", lambda r: r.backend),
        ("precision", lambda r: r.precision.value),
        ("variant", lambda r: r.variant),
        ("batch", lambda r: str(r.batch or "all")),
        ("tile", lambda r: str(r.tile or "all")),
    ]
    if mode is Mode.MODEL_ONLY:
        return [
            *common,
            ("p50 ms", lambda r: _fmt(r.p50_ms, ".1f")),
            ("p90 ms", lambda r: _fmt(r.p90_ms, ".1f")),
            ("p99 ms", lambda r: _fmt(r.p99_ms, ".1f")),
            ("tiles/s", lambda r: _fmt(r.tiles_per_s, ".2f")),
            ("Mpx/s", lambda r: _fmt(r.mpx_per_s, ".2f")),
            ("GFLOP/s", lambda r: _fmt(r.achieved_gflops, ".0f")),
            ("% ceiling", lambda r: _fmt(r.ceiling_fraction, ".0f", 100.0)),
            ("setup s", lambda r: _fmt(r.setup_s, ".2f")),
            ("warm-up s", lambda r: _fmt(r.warmup_s, ".2f")),
            ("iters", lambda r: str(r.iterations) if r.iterations is not None else "–"),
            ("RSS MiB", lambda r: _fmt(r.peak_rss_mib, ".0f")),
            ("dev MiB", lambda r: _fmt(r.peak_device_mib, ".0f")),
            ("argmax agr. %", lambda r: _fmt(r.argmax_agreement, ".3f", 100.0)),
            ("max |Δlogit|", lambda r: _fmt(r.max_abs_dlogit, ".2e")),
        ]
    stage_names = ("read", "preprocess", "h2d", "compute", "d2h", "stitch", "write")

    def stage(name: str) -> Callable[[Row], str]:
        return lambda r: _fmt((r.stages or {}).get(name), ".2f")

    stage_cols = [(f"{s} s", stage(s)) for s in stage_names]
    return [
        *common,
        ("tiles/s", lambda r: _fmt(r.tiles_per_s, ".2f")),
        ("Mpx/s", lambda r: _fmt(r.mpx_per_s, ".2f")),
        ("km²/h", lambda r: _fmt(r.km2_per_h, ".2f")),
        ("compute busy %", lambda r: _fmt(r.compute_busy, ".0f", 100.0)),
        ("% ceiling", lambda r: _fmt(r.ceiling_fraction, ".0f", 100.0)),
        *stage_cols,
        ("RSS MiB", lambda r: _fmt(r.peak_rss_mib, ".0f")),
    ]


def _fingerprint_lines(fp: Fingerprint) -> list[str]:
    v = fp.versions
    gpu = (
        f"{fp.gpu_name} ({fp.gpu_memory_gib} GiB), driver {fp.gpu_driver or '?'}, CUDA {fp.cuda or '?'}"
        if fp.gpu_name
        else "none used"
    )
    env = ", ".join(f"{k}={val}" for k, val in fp.thread_env.items()) or "no thread variables set"
    return [
        (
            f"CPU: {fp.cpu_model} ({fp.cpu_vendor}), {fp.physical_cores} physical / {fp.logical_cores} "
            f"logical cores, {fp.cpu_mhz or '?'} MHz reported, flags {' '.join(fp.cpu_flags) or 'none'}"
        ),
        (
            f"Threads: torch {fp.torch_threads} intra-op / {fp.torch_interop_threads} inter-op; {env}"
            if fp.torch_threads is not None
            else f"Threads: torch not installed; {env}"
        ),
        f"GPU: {gpu}",
        "Versions: "
        + ", ".join(f"{k} {val}" for k, val in v.items() if val is not None)
        + f", python {fp.python}; onnxruntime providers: {', '.join(fp.ort_providers) or 'none'}",
        f"Platform: {fp.platform}; taken {fp.timestamp}",
    ]


def to_markdown(report: BenchmarkReport) -> str:
    """Render the report as Markdown: environment, ceilings, one table per mode, skipped rows."""
    out = ["# flair-deploy benchmark", "", "## Environment", ""]
    out += [f"- {line}" for line in _fingerprint_lines(report.fingerprint)]
    out += ["", "## Hardware ceilings", ""]
    out += [f"- {c.precision.value}: {c.gflops:,.0f} GFLOP/s ({c.source})" for c in report.ceilings]
    out += ["", f"Parity reference: {report.parity_reference or 'none (no FP32 model available)'}", ""]
    settings = ", ".join(f"{k}={v}" for k, v in report.settings.items())
    out += [f"Settings: {settings}", ""]
    for mode in Mode:
        rows = report.ok_rows(mode)
        if not rows:
            continue
        cols = _columns(mode)
        out += [f"## {mode.value.capitalize()}", ""]
        out.append("| " + " | ".join(name for name, _ in cols) + " |")
        out.append("|" + "|".join("---" for _ in cols) + "|")
        out += ["| " + " | ".join(get(r) for _, get in cols) + " |" for r in rows]
        out.append("")
    not_ok = [r for r in report.rows if r.status is not Status.OK]
    if not_ok:
        out += ["## Skipped and failed", "", "| mode | backend | precision | variant | status | reason |"]
        out.append("|---|---|---|---|---|---|")
        for r in not_ok:
            reason = (r.reason or "").replace("|", "\\|")
            out.append(
                f"| {r.mode.value} | {r.backend} | {r.precision.value} | {r.variant} | {r.status.value} | {reason} |"
            )
        out.append("")
    return "\n".join(out)


def write_markdown(report: BenchmarkReport, path: Path) -> None:
    """Write :func:`to_markdown` to *path* (atomically).

    Raises:
        OutputError: If the file cannot be written (disk full, folder not writable), as one line.
    """
    write_text(path, to_markdown(report))


def render_table(report: BenchmarkReport, console: Any | None = None) -> None:
    """Print the report as rich tables (one per mode, then the skipped rows).

    Args:
        report: The report.
        console: A ``rich.console.Console`` (default: a new one on stdout).
    """
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    if console is None:
        # Piped output (logs, CI) gets a wide page rather than 80 columns that fold every header.
        console = Console() if sys.stdout.isatty() else Console(width=240)
    con: Console = console
    for line in _fingerprint_lines(report.fingerprint):
        con.print(line, highlight=False, soft_wrap=True, markup=False)
    for mode in Mode:
        rows = report.ok_rows(mode)
        if not rows:
            continue
        table = Table(title=f"{mode.value} ({report.parity_reference or 'no parity reference'})")
        cols = _columns(mode)
        for name, _ in cols:
            table.add_column(name, justify="left" if name in {"backend", "precision", "variant"} else "right")
        for r in rows:
            table.add_row(*(get(r) for _, get in cols))
        con.print(table)
    not_ok = [r for r in report.rows if r.status is not Status.OK]
    if not_ok:
        table = Table(title="skipped / failed")
        for name in ("mode", "backend", "precision", "variant", "status", "reason"):
            table.add_column(name, overflow="fold")
        for r in not_ok:
            # Reasons quote install commands such as 'flair-deploy[tensorrt]': never rich markup.
            reason = escape(r.reason or "")
            table.add_row(r.mode.value, r.backend, r.precision.value, r.variant, r.status.value, reason)
        con.print(table)


def write_plot(report: BenchmarkReport, path: Path) -> None:
    """Draw throughput by backend x precision x batch, one panel per tile size, with the ceilings.

    Bars are model-only tiles/s (end-to-end rows are drawn hatched beside them); each dashed line is a
    hardware ceiling converted to tiles/s with the model's GFLOP per tile.

    Raises:
        OutputError: If there is nothing to draw or the file cannot be written.
    """
    rows = [r for r in report.ok_rows() if r.tiles_per_s is not None]
    if not rows:
        raise OutputError(f"nothing to plot into {path}: no row was measured (all skipped or failed)")
    matplotlib = require("matplotlib", purpose="drawing the benchmark plot (--plot)")
    matplotlib.use("Agg")  # files only, never a window (headless servers, CI)
    import matplotlib.pyplot as plt

    tiles = sorted({r.tile or 0 for r in rows})
    batches = sorted({r.batch or 0 for r in rows})
    fig, axes = plt.subplots(
        1, len(tiles), figsize=(max(6.0, 1.4 * len({r.label for r in rows}) + 3), 4.8), squeeze=False
    )
    ceilings = {c.precision: c for c in report.ceilings}
    cmap = plt.get_cmap("viridis")
    for ax, tile in zip(axes[0], tiles, strict=True):
        sub = [r for r in rows if r.tile == tile]
        labels = list(dict.fromkeys(f"{r.label}{' (e2e)' if r.mode is Mode.END_TO_END else ''}" for r in sub))
        width = 0.8 / len(batches)
        for j, b in enumerate(batches):
            xs, ys, hatches = [], [], []
            for r in sub:
                if r.batch != b:
                    continue
                key = f"{r.label}{' (e2e)' if r.mode is Mode.END_TO_END else ''}"
                xs.append(labels.index(key) + (j - (len(batches) - 1) / 2) * width)
                ys.append(r.tiles_per_s)
                hatches.append("//" if r.mode is Mode.END_TO_END else "")
            bars = ax.bar(
                xs, ys, width=width, color=cmap(j / max(1, len(batches) - 1) * 0.85), label=f"batch {b}"
            )
            for bar, hatch in zip(bars, hatches, strict=True):
                bar.set_hatch(hatch)
        gflop = next((r.gflop_per_tile for r in sub if r.gflop_per_tile), None)
        if gflop:
            for prec in dict.fromkeys(r.precision for r in sub):
                c = ceilings.get(prec)
                if c is None:
                    continue
                ceiling_tps = c.gflops / gflop
                ax.axhline(ceiling_tps, linestyle="--", linewidth=1, color="firebrick")
                ax.annotate(
                    f"{prec.value} ceiling {c.gflops:,.0f} GFLOP/s = {ceiling_tps:,.1f} tiles/s",
                    (0.01, ceiling_tps),
                    xycoords=("axes fraction", "data"),
                    va="bottom",
                    fontsize=7,
                    color="firebrick",
                )
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("tiles/s")
        title = f"{tile}² tiles" + (f", {gflop:.1f} GFLOP/tile" if gflop else "")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    fp = report.fingerprint
    machine = fp.gpu_name or f"{fp.cpu_model}, {fp.physical_cores} cores"
    fig.suptitle(f"flair-deploy benchmark on {machine}", fontsize=10)
    fig.tight_layout()

    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=120)
    finally:
        plt.close(fig)


def load_report(path: Path) -> BenchmarkReport:
    """Read a report written by :func:`write_json`."""
    return BenchmarkReport.model_validate(json.loads(path.read_text(encoding="utf-8")))
