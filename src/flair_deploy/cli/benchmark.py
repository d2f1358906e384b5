"""`flair-deploy benchmark`: backends and precisions side by side, model-only and end to end."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from flair_deploy._optional import require
from flair_deploy.errors import BackendError, ConfigError, OutputError

__all__ = ["command"]


def _split(values: list[str] | str | None, flag: str) -> list[str] | None:
    if values is None:
        return None
    items = [values] if isinstance(values, str) else values
    out = [part.strip() for item in items for part in item.split(",") if part.strip()]
    if not out:
        raise ConfigError(f"{flag} is empty; give a comma-separated list")
    return out


def _ints(text: str | None, flag: str) -> list[int] | None:
    parts = _split(text, flag)
    if parts is None:
        return None
    try:
        return [int(p) for p in parts]
    except ValueError:
        raise ConfigError(
            f"{flag} {text!r} is not a comma-separated list of integers, e.g. 1,2,4,8"
        ) from None


def _check_output(path: Path | None, flag: str) -> None:
    # Fail before minutes of measuring, not after.
    if path is not None and not path.parent.is_dir():
        raise OutputError(f"{flag} {path}: folder {path.parent} does not exist; create it first")


def command(
    model: Annotated[
        list[str],
        typer.Option(
            "--model",
            "-m",
            help="Model file(s): checkpoint (torch rows), .onnx (onnxruntime rows), .engine (TensorRT rows). "
            "Repeat or comma-separate; <name>.fp16/.int8.onnx beside them are found automatically.",
        ),
    ],
    backends: Annotated[
        str | None, typer.Option(help="Comma list of torch, onnxruntime, tensorrt (default: all).")
    ] = None,
    precisions: Annotated[
        str | None, typer.Option(help="Comma list of fp32, fp16, bf16, int8 (default: all).")
    ] = None,
    batch: Annotated[str, typer.Option(help="Batch sizes, comma list.")] = "1,4",
    tile: Annotated[
        str | None, typer.Option(help="Tile edges in px, comma list (default: the model's).")
    ] = None,
    raster: Annotated[
        Path | None,
        typer.Option(
            help="Raster for end-to-end rows through detect's pipeline (also the source of the tiles)."
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:<i>.")] = "cpu",
    variants: Annotated[
        str, typer.Option(help="Torch variants, comma list of eager, channels_last, compile, cuda_graphs.")
    ] = "eager",
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the full report as JSON.")] = None,
    markdown: Annotated[Path | None, typer.Option(help="Write the report as Markdown.")] = None,
    plot: Annotated[
        Path | None,
        typer.Option(help="Write a PNG chart: tiles/s by backend x precision x batch, with ceilings."),
    ] = None,
    min_time: Annotated[float, typer.Option(min=0.0, help="Minimum seconds of timed calls per row.")] = 2.0,
    min_iters: Annotated[int, typer.Option(min=1, help="Minimum timed calls per row.")] = 10,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed warm-up calls per row.")] = 2,
    peak_gflops: Annotated[
        float | None,
        typer.Option(
            help="Hardware ceiling in GFLOP/s at FP32 on a CPU, FP16 on a GPU (other precisions scale with "
            "the SIMD / datasheet ratios). Default: estimated."
        ),
    ] = None,
    measure_peak: Annotated[
        bool, typer.Option("--measure-peak", help="Measure the ceiling with a matrix-multiply probe.")
    ] = False,
    parity_tiles: Annotated[int, typer.Option(min=0, help="Tiles compared with the FP32 reference.")] = 4,
    threads: Annotated[int | None, typer.Option(min=1, help="CPU threads for the runtimes.")] = None,
    preset: Annotated[str | None, typer.Option(help="Description preset for IGN weights.")] = None,
) -> None:
    """Compare backends, precisions and batch sizes on this machine: latency, throughput, memory, parity.

    Model-only rows time backend.infer on realistic tiles (warm-up and session/engine creation reported
    apart; p50/p90/p99 latency, tiles/s, Mpx/s, GFLOP/s and the fraction of the hardware ceiling, peak
    memory, argmax agreement and max |Δlogit| against PyTorch FP32). With --raster, end-to-end rows run
    detect's real pipeline on the same backend (per-stage seconds, compute-busy share, km²/h).
    Variants that cannot run here are listed with the reason. Every report carries the environment
    (CPU and flags, threads, GPU, driver, versions). Existing report files are replaced.

    Typical uses:

      flair-deploy benchmark --model out/flair.fp32.onnx --backends onnxruntime --batch 4

      flair-deploy benchmark -m model.ckpt -m out/flair.fp32.onnx --precisions fp32,int8 --json bench.json --plot bench.png

      flair-deploy benchmark -m model.ckpt,out/flair.fp16.onnx --device cuda --variants eager,compile,cuda_graphs --batch 8,16

      flair-deploy benchmark -m out/flair.fp32.onnx --raster ortho.tif --batch 4 --markdown bench.md
    """
    from rich.console import Console

    from flair_deploy.benchmarking import (
        BenchmarkConfig,
        Row,
        Status,
        render_table,
        run_benchmark,
        write_json,
        write_markdown,
        write_plot,
    )
    from flair_deploy.config import load_config

    for path, flag in ((json_out, "--json"), (markdown, "--markdown"), (plot, "--plot")):
        _check_output(path, flag)
    if plot is not None:  # before minutes of measuring, not after
        require("matplotlib", purpose="--plot")
    base: dict[str, Any] = {
        "models": _split(model, "--model"),
        "batches": _ints(batch, "--batch"),
        "device": device,
        "variants": _split(variants, "--variants"),
        "raster": raster,
        "min_time": min_time,
        "min_iters": min_iters,
        "warmup_iters": warmup,
        "peak_gflops": peak_gflops,
        "measure_peak": measure_peak,
        "parity_tiles": parity_tiles,
        "threads": threads,
        "preset": preset,
    }
    for key, value in (
        ("backends", _split(backends, "--backends")),
        ("precisions", _split(precisions, "--precisions")),
        ("tiles", _ints(tile, "--tile")),
    ):
        if value is not None:
            base[key] = value
    cfg = load_config(BenchmarkConfig, base=base)
    err = Console(stderr=True)

    def progress(row: Row) -> None:
        where = f"batch {row.batch} tile {row.tile}" if row.batch else "all batches"
        if row.status is Status.OK:
            line = f"  {row.mode.value:10} {row.label:36} {where:20} {row.tiles_per_s or 0:8.2f} tiles/s"
        else:
            line = f"  {row.mode.value:10} {row.label:36} {row.status.value}: {row.reason}"
        err.print(line, markup=False, highlight=False, soft_wrap=True)

    report = run_benchmark(cfg, on_row=progress)
    render_table(report)
    if not report.ok_rows():
        raise BackendError(
            f"nothing could be measured: all {len(report.rows)} rows were skipped or failed (reasons above); "
            "check --backends/--precisions/--device and the model files"
        )
    if json_out is not None:
        write_json(report, json_out)
    if markdown is not None:
        write_markdown(report, markdown)
    if plot is not None:
        write_plot(report, plot)
