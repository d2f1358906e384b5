from __future__ import annotations

from pathlib import Path

import pytest

from flair_deploy.benchmarking.plan import BenchmarkConfig, parity_reference, plan_cases
from flair_deploy.config import load_config
from flair_deploy.description import Precision
from flair_deploy.errors import ConfigError
from flair_deploy.inference.backends import BackendName

ALL_OK = {b: None for b in BackendName}


def _touch(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def _by(cases, backend, precision, variant=None):
    return [
        c
        for c in cases
        if c.backend is backend and c.precision is precision and (variant is None or c.variant == variant)
    ]


def test_precisions_map_to_artifacts_beside_the_model(tmp_path):
    ckpt = _touch(tmp_path / "m.ckpt")
    fp32 = _touch(tmp_path / "m.fp32.onnx")
    int8 = _touch(tmp_path / "m.int8.onnx")
    cfg = BenchmarkConfig(models=(ckpt, fp32))
    cases = plan_cases(cfg, ALL_OK)

    (ort_int8,) = _by(cases, BackendName.ONNXRUNTIME, Precision.INT8)
    assert ort_int8.skip is None and ort_int8.artifact == int8 and ort_int8.request_precision is None
    (ort_fp16,) = _by(cases, BackendName.ONNXRUNTIME, Precision.FP16)
    assert ort_fp16.skip is not None and "m.fp16.onnx" in ort_fp16.skip and "--fp16" in ort_fp16.skip
    (ort_bf16,) = _by(cases, BackendName.ONNXRUNTIME, Precision.BF16)
    assert "torch" in (ort_bf16.skip or "")
    (torch_fp16,) = _by(cases, BackendName.TORCH, Precision.FP16)
    assert torch_fp16.skip is None and torch_fp16.artifact == ckpt
    assert torch_fp16.request_precision is Precision.FP16  # autocast
    (torch_int8,) = _by(cases, BackendName.TORCH, Precision.INT8)
    assert "int8.onnx" in (torch_int8.skip or "")


def test_every_skip_has_a_reason_and_unavailable_backends_say_why(tmp_path):
    onnx = _touch(tmp_path / "m.fp32.onnx")
    available = {**ALL_OK, BackendName.TENSORRT: "tensorrt is not installed"}
    cfg = BenchmarkConfig(models=(onnx,), variants=("eager", "cuda_graphs"))
    cases = plan_cases(cfg, available)
    trt = [c for c in cases if c.backend is BackendName.TENSORRT]
    assert trt and all(c.skip == "tensorrt is not installed" for c in trt)
    torch_cases = [c for c in cases if c.backend is BackendName.TORCH]
    assert torch_cases and all(
        "checkpoint" in (c.skip or "") or "INT8" in (c.skip or "") for c in torch_cases
    )
    assert all(c.skip or c.artifact for c in cases)


def test_cuda_graphs_need_cuda_and_cuda_adds_ort_variants(tmp_path):
    ckpt = _touch(tmp_path / "m.ckpt")
    onnx = _touch(tmp_path / "m.fp32.onnx")
    cpu = plan_cases(
        BenchmarkConfig(models=(ckpt,), variants=("cuda_graphs",), precisions=(Precision.FP32,)), ALL_OK
    )
    (graphs,) = _by(cpu, BackendName.TORCH, Precision.FP32, "cuda_graphs")
    assert "CUDA" in (graphs.skip or "")
    cuda = plan_cases(
        BenchmarkConfig(models=(onnx,), device="cuda", precisions=(Precision.FP32,)),
        ALL_OK,
        ort_providers=("CUDAExecutionProvider", "CPUExecutionProvider"),
    )
    variants = {c.variant: c for c in cuda if c.backend is BackendName.ONNXRUNTIME}
    assert set(variants) == {"cuda-iobinding", "trt-ep"}
    assert variants["cuda-iobinding"].skip is None
    assert "TensorrtExecutionProvider" in (variants["trt-ep"].skip or "")
    assert "_skip" not in variants["trt-ep"].options


def test_parity_reference_prefers_the_checkpoint(tmp_path):
    ckpt = _touch(tmp_path / "m.ckpt")
    onnx = _touch(tmp_path / "m.fp32.onnx")
    assert parity_reference(BenchmarkConfig(models=(onnx, ckpt))) == (BackendName.TORCH, ckpt)
    assert parity_reference(BenchmarkConfig(models=(onnx,))) == (BackendName.ONNXRUNTIME, onnx)
    assert parity_reference(BenchmarkConfig(models=(_touch(tmp_path / "x.int8.onnx"),))) is None


@pytest.mark.parametrize(
    ("base", "needle"),
    [
        ({"models": ["m.txt"]}, "suffix"),
        ({"models": ["m.onnx"], "batches": [0]}, "batches"),
        ({"models": ["m.onnx"], "batches": [4, 4]}, "duplicates"),
        ({"models": ["m.onnx"], "variants": ["turbo"]}, "variants"),
        ({"models": ["m.onnx"], "precisions": ["fp8"]}, "precisions"),
    ],
)
def test_bad_options_are_one_line_config_errors(base, needle):
    with pytest.raises(ConfigError) as err:
        load_config(BenchmarkConfig, base=base)
    assert needle in str(err.value) and "\n" not in str(err.value)
