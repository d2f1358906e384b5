from __future__ import annotations

import json

import numpy as np
import pytest

from flair_deploy.benchmarking import (
    BenchmarkConfig,
    Mode,
    Status,
    load_report,
    run_benchmark,
    to_markdown,
    write_json,
    write_markdown,
    write_plot,
)
from flair_deploy.description import Precision
from flair_deploy.errors import BackendError
from tests.fakes import EchoBackend

FAST = {"min_time": 0.0, "min_iters": 2, "warmup_iters": 1}


def _rows(report, backend, precision, status=Status.OK, mode=Mode.MODEL_ONLY):
    return [
        r
        for r in report.rows
        if r.backend == backend and r.precision is precision and r.status is status and r.mode is mode
    ]


def test_torch_and_onnxruntime_rows_with_parity_and_outputs(tiny_artifacts, tmp_path):
    ckpt, onnx_path = tiny_artifacts
    cfg = BenchmarkConfig(
        models=(ckpt, onnx_path),
        backends=("torch", "onnxruntime", "tensorrt"),
        precisions=(Precision.FP32, Precision.INT8),
        batches=(1, 2),
        parity_tiles=2,
        peak_gflops=100.0,
        **FAST,
    )
    seen = []
    report = run_benchmark(cfg, on_row=seen.append)
    assert seen == report.rows

    torch_rows = _rows(report, "torch", Precision.FP32)
    ort_rows = _rows(report, "onnxruntime", Precision.FP32)
    assert [r.batch for r in torch_rows] == [1, 2] and [r.batch for r in ort_rows] == [1, 2]
    for r in torch_rows + ort_rows:
        assert r.tile == 64 and r.iterations >= 2
        assert 0 < r.p50_ms <= r.p90_ms <= r.p99_ms
        assert r.tiles_per_s == pytest.approx(r.batch / (r.p50_ms / 1e3))
        assert r.mpx_per_s == pytest.approx(r.tiles_per_s * 64 * 64 / 1e6)
        assert r.gflop_per_tile and r.gflop_per_tile > 0
        assert r.ceiling_gflops == 100.0
        assert r.ceiling_fraction == pytest.approx(r.tiles_per_s * r.gflop_per_tile / 100.0)
        assert r.setup_s is not None and r.setup_s > 0 and r.warmup_s is not None
        assert r.peak_rss_mib > 0 and r.peak_device_mib is None
        assert set(r.stages) == {"h2d", "compute", "d2h"}
    # The reference is torch FP32 on the checkpoint: itself up to batch-dependent kernels, ORT within float noise.
    for r in torch_rows:
        assert r.argmax_agreement >= 0.999 and r.max_abs_dlogit < 1e-4
    for r in ort_rows:
        assert r.argmax_agreement >= 0.999 and r.max_abs_dlogit < 1e-3
    assert report.parity_reference and "tiny.ckpt" in report.parity_reference

    skipped = [r for r in report.rows if r.status is Status.SKIPPED]
    assert {(r.backend, r.precision) for r in skipped} >= {
        ("torch", Precision.INT8),
        ("onnxruntime", Precision.INT8),
        ("tensorrt", Precision.FP32),
    }
    assert all(r.reason for r in skipped)

    # Outputs: JSON round-trip, Markdown tables, PNG chart.
    write_json(report, tmp_path / "bench.json")
    data = json.loads((tmp_path / "bench.json").read_text())
    assert {"fingerprint", "ceilings", "parity_reference", "settings", "rows"} <= set(data)
    assert {"p50_ms", "tiles_per_s", "argmax_agreement", "max_abs_dlogit", "ceiling_fraction"} <= set(
        data["rows"][0]
    )
    assert load_report(tmp_path / "bench.json") == report
    write_markdown(report, tmp_path / "bench.md")
    md = (tmp_path / "bench.md").read_text()
    assert "## Model-only" in md and "## Skipped and failed" in md and "CPU:" in md
    assert md == to_markdown(report)
    write_plot(report, tmp_path / "bench.png")
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*.part"))


def test_end_to_end_rows_come_from_detect_summary(tiny_artifacts, write_geotiff):
    _, onnx_path = tiny_artifacts
    data = np.random.default_rng(0).integers(1, 255, (5, 150, 170), dtype=np.uint8)
    raster = write_geotiff(data)
    cfg = BenchmarkConfig(
        models=(onnx_path,),
        backends=("onnxruntime",),
        precisions=(Precision.FP32,),
        batches=(2,),
        raster=raster,
        **FAST,
    )
    report = run_benchmark(cfg)
    (e2e,) = report.ok_rows(Mode.END_TO_END)
    d = e2e.detect
    assert d is not None
    assert e2e.tiles_per_s == d["tiles_per_s"] and e2e.mpx_per_s == d["mpx_per_s"]
    assert e2e.compute_busy == d["busy"] and 0 < e2e.compute_busy <= 1
    assert e2e.stages == d["seconds"]
    assert {"read", "preprocess", "h2d", "compute", "d2h", "stitch", "write"} <= set(e2e.stages)
    assert e2e.km2_per_h == pytest.approx(d["km2"] / d["seconds"]["wall"] * 3600)
    assert d["pixels"] == 150 * 170 and e2e.batch == 2 and e2e.raster == str(raster)
    assert not list(raster.parent.glob("*map*"))  # the map went to a temporary folder


def test_backend_errors_become_rows_with_reasons(tiny_artifacts, tiny_description):
    ckpt, _ = tiny_artifacts

    def opener(case, tile, cfg):
        if case.variant == "reference":
            raise BackendError("reference checkpoint is unreadable")
        if case.precision is Precision.BF16:
            raise BackendError("bf16 is not supported by this fake")
        return EchoBackend(tiny_description, delay=0.002)

    cfg = BenchmarkConfig(
        models=(ckpt,),
        backends=("torch",),
        precisions=(Precision.FP32, Precision.BF16),
        batches=(3,),
        parity_tiles=2,
        **FAST,
    )
    report = run_benchmark(cfg, opener=opener)
    (ok,) = report.ok_rows()
    assert ok.p50_ms >= 2.0 and ok.argmax_agreement is None
    assert report.parity_reference == "unavailable (reference checkpoint is unreadable)"
    (bf16,) = [r for r in report.rows if r.precision is Precision.BF16]
    assert bf16.status is Status.SKIPPED and bf16.reason == "bf16 is not supported by this fake"
