from __future__ import annotations

import json

import pytest

from flair_deploy.benchmarking.fingerprint import (
    Fingerprint,
    collect_fingerprint,
    cpu_ceiling,
    gpu_ceiling,
)
from flair_deploy.description import Precision


def _fp(**kw) -> Fingerprint:
    base = {
        "timestamp": "t",
        "platform": "p",
        "python": "3.11",
        "cpu_model": "cpu",
        "cpu_vendor": "GenuineIntel",
        "cpu_family": 6,
        "cpu_flags": ("fma", "avx2"),
        "physical_cores": 2,
        "logical_cores": 4,
        "cpu_mhz": 3200.0,
        "torch_threads": 2,
        "torch_interop_threads": 2,
        "thread_env": {},
        "versions": {},
    }
    base.update(kw)
    return Fingerprint(**base)


def test_fingerprint_has_the_environment_keys():
    fp = collect_fingerprint("cpu")
    data = json.loads(fp.model_dump_json())
    for key in (
        "cpu_model",
        "cpu_flags",
        "physical_cores",
        "logical_cores",
        "cpu_mhz",
        "torch_threads",
        "thread_env",
        "gpu_name",
        "gpu_driver",
        "cuda",
        "ort_providers",
    ):
        assert key in data
    for lib in ("torch", "onnxruntime", "tensorrt", "gdal", "rasterio", "flair-deploy"):
        assert lib in data["versions"]
    assert data["versions"]["torch"] and data["versions"]["gdal"]
    assert data["physical_cores"] >= 1 and data["logical_cores"] >= data["physical_cores"]
    assert "CPUExecutionProvider" in data["ort_providers"]


def test_cpu_ceiling_avx2_matches_the_issue_figure():
    # 2 cores x 3.2 GHz x 32 FLOP/cycle (AVX2 + FMA) = 204.8 GFLOP/s
    c = cpu_ceiling(_fp(), Precision.FP32)
    assert c.gflops == pytest.approx(204.8)
    assert "32 FLOP/cycle" in c.source


@pytest.mark.parametrize(
    ("vendor", "family", "expected"),
    [("AuthenticAMD", 25, 32), ("AuthenticAMD", 26, 64), ("GenuineIntel", 6, 64)],
)
def test_avx512_width_depends_on_the_core(vendor, family, expected):
    fp = _fp(
        cpu_vendor=vendor,
        cpu_family=family,
        cpu_flags=("fma", "avx2", "avx512f"),
        physical_cores=1,
        cpu_mhz=1000.0,
    )
    assert cpu_ceiling(fp, Precision.FP32).gflops == pytest.approx(expected)


def test_int8_ceiling_uses_vnni_and_ghz_override():
    fp = _fp(cpu_flags=("fma", "avx2", "avx512_vnni"))
    assert cpu_ceiling(fp, Precision.INT8, ghz=1.0).gflops == pytest.approx(2 * 1.0 * 32 * 4)
    assert cpu_ceiling(_fp(), Precision.INT8, ghz=1.0).gflops == pytest.approx(2 * 1.0 * 32 * 2)


def test_gpu_ceiling_table():
    h100 = gpu_ceiling("NVIDIA H100 80GB HBM3", Precision.FP16)
    assert h100 is not None and h100.gflops == pytest.approx(989_400)
    pcie = gpu_ceiling("NVIDIA H100 PCIe", Precision.FP16)
    assert pcie is not None and pcie.gflops == pytest.approx(756_000)
    assert gpu_ceiling("Some Unknown GPU", Precision.FP16) is None


def test_peak_gflops_sets_the_fp32_ceiling_and_others_keep_the_estimate_ratio(tmp_path):
    from flair_deploy.benchmarking import BenchmarkConfig, resolve_ceilings

    fp = _fp(cpu_flags=("fma", "avx2", "avx512_vnni"))
    onnx = tmp_path / "m.onnx"
    given = resolve_ceilings(BenchmarkConfig(models=(onnx,), peak_gflops=205.0), fp)
    assert given[Precision.FP32].gflops == 205.0 and "--peak-gflops" in given[Precision.FP32].source
    assert given[Precision.INT8].gflops == pytest.approx(4 * 205.0)  # VNNI: x4 the FP32 rate
    estimated = resolve_ceilings(BenchmarkConfig(models=(onnx,)), fp)
    assert estimated[Precision.FP32].gflops == pytest.approx(204.8)
    assert estimated[Precision.FP32].source.startswith("estimated")


def test_unknown_gpu_has_no_ceiling_unless_given(tmp_path):
    from flair_deploy.benchmarking import BenchmarkConfig, resolve_ceilings

    fp = _fp(gpu_name="Mystery GPU")
    onnx = tmp_path / "m.onnx"
    assert resolve_ceilings(BenchmarkConfig(models=(onnx,), device="cuda"), fp) == {}
    given = resolve_ceilings(BenchmarkConfig(models=(onnx,), device="cuda", peak_gflops=500_000.0), fp)
    assert given[Precision.FP16].gflops == 500_000.0  # the anchor on a GPU is FP16
    assert given[Precision.FP32].gflops == 500_000.0 and "fp16 figure" in given[Precision.FP32].source


def test_measure_peak_probe_on_cpu():
    from flair_deploy.benchmarking import measure_peak_gflops

    c = measure_peak_gflops("cpu", Precision.FP32, seconds=0.05)
    assert c.gflops > 0 and c.source.startswith("measured")
