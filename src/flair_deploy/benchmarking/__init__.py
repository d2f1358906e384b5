"""``flair-deploy benchmark``: backends and precisions side by side, model-only and end to end.

One call, :func:`run_benchmark`, expands a :class:`BenchmarkConfig` into cases (backend x precision x
variant x artifact, skipped ones with their reason), measures each at every batch and tile size
(warm-up excluded, p50/p90/p99, tiles/s, Mpx/s, memory, parity against the FP32 reference) and, with a
raster, runs detect's real pipeline on the same backend. The :class:`BenchmarkReport` carries the
environment :class:`Fingerprint` and the hardware :class:`Ceiling` per precision, and renders as a
terminal table, JSON, Markdown and a PNG chart.

Example:
    >>> from flair_deploy.benchmarking import BenchmarkConfig, run_benchmark, write_json  # doctest: +SKIP
    >>> report = run_benchmark(BenchmarkConfig(models=(Path("model.fp32.onnx"),), batches=(4,)))  # doctest: +SKIP
    >>> write_json(report, Path("bench.json"))  # doctest: +SKIP
"""

from __future__ import annotations

from flair_deploy.benchmarking.fingerprint import (
    Ceiling,
    Fingerprint,
    collect_fingerprint,
    cpu_ceiling,
    gpu_ceiling,
    measure_peak_gflops,
)
from flair_deploy.benchmarking.plan import BenchmarkConfig, Case, plan_cases
from flair_deploy.benchmarking.report import (
    BenchmarkReport,
    Mode,
    Row,
    Status,
    load_report,
    render_table,
    to_markdown,
    write_json,
    write_markdown,
    write_plot,
)
from flair_deploy.benchmarking.runner import open_backend, resolve_ceilings, run_benchmark
from flair_deploy.benchmarking.timing import LatencyStats, MemoryPeak, measure
from flair_deploy.benchmarking.workload import UNET_RESNET34_GFLOP_512, gflop_per_tile

__all__ = [
    "UNET_RESNET34_GFLOP_512",
    "BenchmarkConfig",
    "BenchmarkReport",
    "Case",
    "Ceiling",
    "Fingerprint",
    "LatencyStats",
    "MemoryPeak",
    "Mode",
    "Row",
    "Status",
    "collect_fingerprint",
    "cpu_ceiling",
    "gflop_per_tile",
    "gpu_ceiling",
    "load_report",
    "measure",
    "measure_peak_gflops",
    "open_backend",
    "plan_cases",
    "render_table",
    "resolve_ceilings",
    "run_benchmark",
    "to_markdown",
    "write_json",
    "write_markdown",
    "write_plot",
]
