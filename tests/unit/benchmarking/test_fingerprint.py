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
