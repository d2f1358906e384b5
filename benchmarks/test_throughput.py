"""Throughput of every backend x precision x variant the planner finds, with pytest-benchmark.

Uses the library's own planner, backend opener and tiles (``flair_deploy.benchmarking``), so these
numbers and ``flair-deploy benchmark``'s are the same measurement. Run with ``make bench``; each case
records tiles/s, GFLOP/s and the fraction of the hardware ceiling in ``extra_info``.
"""

from __future__ import annotations

import pytest

from conftest import BATCHES, DEVICE, ROUNDS
from flair_deploy.benchmarking import (
    BenchmarkConfig,
    collect_fingerprint,
    gflop_per_tile,
    open_backend,
    plan_cases,
)
from flair_deploy.description import Precision
from flair_deploy.inference.backends import available_backends
from flair_deploy.sample import sample_tiles

CASES = [
    ("torch", Precision.FP32, "eager"),
    ("torch", Precision.FP32, "channels_last"),
    ("torch", Precision.BF16, "eager"),
    ("onnxruntime", Precision.FP32, "cpu" if DEVICE == "cpu" else "cuda-iobinding"),
    ("onnxruntime", Precision.INT8, "cpu" if DEVICE == "cpu" else "cuda-iobinding"),
    ("onnxruntime", Precision.FP16, "cuda-iobinding"),
    ("tensorrt", Precision.FP16, "engine"),
]


def _case(cfg: BenchmarkConfig, backend: str, precision: Precision, variant: str):
    planned = plan_cases(cfg, available_backends(DEVICE), collect_fingerprint(DEVICE).ort_providers)
    for case in planned:
        if case.backend.value == backend and case.precision is precision and case.variant == variant:
            return case
    return None


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize(("backend", "precision", "variant"), CASES, ids=lambda v: str(v))
def test_infer_throughput(benchmark, bench_config, ceilings, backend, precision, variant, batch):
    case = _case(bench_config, backend, precision, variant)
    if case is None:
        pytest.skip(f"{backend} {precision} {variant} is not a variant on {DEVICE}")
    if case.skip is not None:
        pytest.skip(case.skip)
    with open_backend(case, 512, bench_config) as runtime:
        images = sample_tiles(runtime.description, batch, 512)
        runtime.infer(images)  # first call: allocation, kernel selection
        benchmark.pedantic(runtime.infer, args=(images,), rounds=ROUNDS, iterations=1, warmup_rounds=1)
        median = benchmark.stats.stats.median
        gflop = gflop_per_tile(runtime.description, 512) or 0.0
        tps = batch / median
        ceiling = ceilings.get(runtime.precision)
        benchmark.extra_info.update(
            {
                "tiles_per_s": round(tps, 3),
                "gflop_per_tile": gflop,
                "achieved_gflops": round(tps * gflop, 1),
                "ceiling_gflops": ceiling.gflops if ceiling else None,
                "ceiling_fraction": round(tps * gflop / ceiling.gflops, 3) if ceiling else None,
                "device": DEVICE,
            }
        )
