"""`flair-deploy benchmark`: backends and precisions side by side, model-only and end to end."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flair_deploy._optional import require
from flair_deploy.benchmarking.plan import TORCH_VARIANTS
from flair_deploy.cli._options import (
    ConfigOption,
    SetOption,
    VersionOption,
    echo_notes,
    given_flags,
    split_list,
)
from flair_deploy.description import Precision
from flair_deploy.errors import BackendError, OutputError
from flair_deploy.inference.backends import BackendName

__all__ = ["command"]


def _check_output(path: Path | None, flag: str) -> None:
    # Fail before minutes of measuring, not after.
    if path is not None and not path.parent.is_dir():
        raise OutputError(f"{flag} {path}: folder {path.parent} does not exist; create it first")


CONFIG_MODEL = "flair_deploy.benchmarking.plan:BenchmarkConfig"

#: Option → BenchmarkConfig key (see cli._options).
FLAGS = {
    "model": "models",
    "backends": "backends",
    "precisions": "precisions",
    "batch": "batches",
    "tile": "tiles",
    "raster": "raster",
    "device": "device",
    "variants": "variants",
    "min_time": "min_time",
    "min_iters": "min_iters",
    "warmup": "warmup_iters",
    "peak_gflops": "peak_gflops",
    "measure_peak": "measure_peak",
    "parity_tiles": "parity_tiles",
    "threads": "threads",
    "preset": "preset",
}

EXAMPLES = (
    "flair-deploy benchmark --model out/flair.fp32.onnx --backends onnxruntime",
    (
        "flair-deploy benchmark -m model.ckpt -m out/flair.fp32.onnx \\\n"
        "    --precisions fp32,int8 --json bench.json --plot bench.png"
    ),
    (
        "flair-deploy benchmark -m model.ckpt,out/flair.fp16.onnx --device cuda \\\n"
        "    --variants eager,compile,cuda_graphs --batch 8,16"
    ),
    "flair-deploy benchmark -m out/m.fp32.onnx --raster ortho.tif --markdown b.md",
    "flair-deploy benchmark -m m.fp32.onnx --backends null --raster ortho.tif",
)


def command(
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            "-m",
            metavar="FILE",
            help="Model file(s): checkpoint (torch rows), .onnx (onnxruntime rows), .engine (TensorRT "
            "rows). Repeat or comma-separate; <name>.fp16/.int8.onnx beside them are found automatically.",
        ),
    ] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
    backends: Annotated[
        str | None,
        typer.Option(
            metavar="NAME,...",
            help=f"Comma list of {', '.join(b.value for b in BackendName)} (default: all but null). "
            "null runs no network: with --raster, detect's host-side ceiling on this machine.",
        ),
    ] = None,
    precisions: Annotated[
        str | None,
        typer.Option(
            metavar="NAME,...", help=f"Comma list of {', '.join(p.value for p in Precision)} (default: all)."
        ),
    ] = None,
    batch: Annotated[str | None, typer.Option(metavar="N,...", help="Batch sizes, comma list.")] = None,
    tile: Annotated[
        str | None, typer.Option(metavar="PX,...", help="Tile edges, comma list (default: the model's).")
    ] = None,
    raster: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="Raster for end-to-end rows through detect's pipeline (also the source of the tiles).",
        ),
    ] = None,
    device: Annotated[str | None, typer.Option(metavar="DEVICE", help="cpu, cuda or cuda:<i>.")] = None,
    variants: Annotated[
        str | None,
        typer.Option(metavar="NAME,...", help=f"Torch variants, comma list of {', '.join(TORCH_VARIANTS)}."),
    ] = None,
    json_: Annotated[
        Path | None, typer.Option("--json", metavar="FILE", help="Write the full report as JSON.")
    ] = None,
    markdown: Annotated[
        Path | None, typer.Option(metavar="FILE", help="Write the report as Markdown.")
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option(metavar="FILE", help="Write a PNG chart: tiles/s by backend x precision x batch."),
    ] = None,
    min_time: Annotated[
        float | None, typer.Option(metavar="S", help="Minimum seconds of timed calls per row.")
    ] = None,
    min_iters: Annotated[int | None, typer.Option(metavar="N", help="Minimum timed calls per row.")] = None,
    warmup: Annotated[int | None, typer.Option(metavar="N", help="Untimed warm-up calls per row.")] = None,
    peak_gflops: Annotated[
        float | None,
        typer.Option(
            metavar="GFLOPS",
            help="Hardware ceiling in GFLOP/s at FP32 on a CPU, FP16 on a GPU (other precisions scale with "
            "the SIMD / datasheet ratios). Default: estimated.",
        ),
    ] = None,
    measure_peak: Annotated[
        bool, typer.Option("--measure-peak", help="Measure the ceiling with a matrix-multiply probe.")
    ] = False,
    parity_tiles: Annotated[
        int | None, typer.Option(metavar="N", help="Tiles compared with the FP32 reference.")
    ] = None,
    threads: Annotated[int | None, typer.Option(metavar="N", help="CPU threads for the runtimes.")] = None,
    preset: Annotated[
        str | None, typer.Option(metavar="NAME", help="Description preset for IGN weights.")
    ] = None,
    version: VersionOption = False,
) -> None:
    """Compare backends, precisions and batch sizes on this machine.

    Latency, throughput, memory and parity, side by side.

    Model-only rows time backend.infer on realistic tiles (warm-up and
    session/engine creation reported apart; p50/p90/p99 latency, tiles/s,
    Mpx/s, GFLOP/s and the fraction of the hardware ceiling, peak memory,
    argmax agreement and max |Δlogit| against PyTorch FP32). With --raster,
    end-to-end rows run detect's real pipeline on the same backend (per-stage
    seconds, compute-busy share, km²/h). Variants that cannot run here are
    listed with the reason. Every report carries the environment (CPU and
    flags, threads, GPU, driver, versions). Existing report files are
    replaced.
    """
    from rich.console import Console

    from flair_deploy.benchmarking import (
        Row,
        Status,
        render_table,
        run_benchmark,
        write_json,
        write_markdown,
        write_plot,
    )
    from flair_deploy.benchmarking.plan import load_benchmark_config

    for path, flag in ((json_, "--json"), (markdown, "--markdown"), (plot, "--plot")):
        _check_output(path, flag)
    if plot is not None:  # before minutes of measuring, not after
        require("matplotlib", purpose="--plot")
    flags, names = given_flags(
        FLAGS,
        model=split_list(model, "--model"),
        backends=split_list(backends, "--backends"),
        precisions=split_list(precisions, "--precisions"),
        batch=split_list(batch, "--batch"),
        tile=split_list(tile, "--tile"),
        raster=raster,
        device=device,
        variants=split_list(variants, "--variants"),
        min_time=min_time,
        min_iters=min_iters,
        warmup=warmup,
        peak_gflops=peak_gflops,
        measure_peak=measure_peak or None,
        parity_tiles=parity_tiles,
        threads=threads,
        preset=preset,
    )
    cfg, notes = load_benchmark_config(config, set_ or (), flags, flag_names=names)
    echo_notes(config, notes)
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
    if json_ is not None:
        write_json(report, json_)
    if markdown is not None:
        write_markdown(report, markdown)
    if plot is not None:
        write_plot(report, plot)
