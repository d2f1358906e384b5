"""ONNX export of HuggingFace SegFormer/UperNet: parity with PyTorch, UperNet's fixed tile size."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("transformers", reason="the hf extra (transformers) is not installed")
ort = pytest.importorskip("onnxruntime")

from flair_deploy.description import ModelDescription
from flair_deploy.errors import ExportError
from flair_deploy.exports.onnx import export_onnx, read_onnx_description
from flair_deploy.hf_models import _exact_adaptive_avg_pool, hf_architecture
from flair_deploy.models import build_model
from tests.hf_tiny import register_tiny


@pytest.fixture(autouse=True)
def tiny_models(monkeypatch):
    register_tiny(monkeypatch)


def _model(name):
    desc = ModelDescription(architecture=hf_architecture(name, source="test"), tile_size=64, overlap=16)
    torch.manual_seed(0)
    return build_model(desc).eval(), desc


@pytest.mark.parametrize("size", [(1, 1), (2, 2), (3, 3), (6, 6), (3, 2)])
def test_exact_adaptive_pool_equals_torch_even_when_the_output_does_not_divide_the_input(size):
    x = torch.randn(2, 3, 7, 5)
    expected = torch.nn.functional.adaptive_avg_pool2d(x, size)
    torch.testing.assert_close(_exact_adaptive_avg_pool(x, size), expected)


@pytest.mark.parametrize("name", ["test/mit-tiny", "test/upernet-swin-tiny", "test/upernet-convnext-tiny"])
def test_fp32_onnx_matches_pytorch_and_keeps_the_description(tmp_path, name):
    model, desc = _model(name)
    path = tmp_path / "m.onnx"
    export_onnx(model, desc, path)
    x = torch.rand(2, 5, 64, 64) * 255
    with torch.no_grad():
        ref = model(x).numpy()
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": x.numpy()})[
        0
    ]
    assert out.shape == (2, 19, 64, 64)
    assert float(np.abs(out - ref).max()) < 1e-4
    assert read_onnx_description(path).architecture == desc.architecture
    # the adaptive pools are restored once the export is done
    assert all("forward" not in vars(m) for m in model.modules() if isinstance(m, torch.nn.AdaptiveAvgPool2d))


def test_segformer_exports_with_dynamic_height_and_width(tmp_path):
    model, desc = _model("test/mit-tiny")
    path = tmp_path / "m.onnx"
    export_onnx(model, desc, path, dynamic_hw=True)
    x = torch.rand(1, 5, 96, 128) * 255
    with torch.no_grad():
        ref = model(x).numpy()
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": x.numpy()})[
        0
    ]
    assert float(np.abs(out - ref).max()) < 1e-4


def test_upernet_dynamic_height_and_width_is_refused_in_one_line(tmp_path):
    model, desc = _model("test/upernet-convnext-tiny")
    with pytest.raises(ExportError, match=r"pyramid pooling.*without --dynamic-hw") as err:
        export_onnx(model, desc, tmp_path / "m.onnx", dynamic_hw=True)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "m.onnx").exists()


def test_ign_hf_weights_are_described_by_their_org_model(tmp_path):
    from flair_deploy.exports import ExportConfig
    from flair_deploy.exports.pipeline import describe_from_flags

    cfg = ExportConfig(checkpoint=tmp_path / "ign.ckpt", out_dir=tmp_path, hf_model="test/mit-tiny")
    desc = describe_from_flags(cfg)
    assert desc is not None and desc.architecture.hf_model == "test/mit-tiny"
    assert desc.architecture.provider == "huggingface"
    with pytest.raises(ValueError, match=r"drop --arch/--encoder"):
        ExportConfig(
            checkpoint=tmp_path / "ign.ckpt", out_dir=tmp_path, hf_model="test/mit-tiny", arch="unet"
        )
    with pytest.raises(ValueError, match="either a preset or IGN config, or description flags"):
        ExportConfig(
            checkpoint=tmp_path / "ign.ckpt",
            out_dir=tmp_path,
            hf_model="test/mit-tiny",
            preset="flair-inc-rgbie-15cl-resnet34-unet",
        )
