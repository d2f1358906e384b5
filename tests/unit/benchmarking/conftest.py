"""Tiny artifacts for the benchmark harness: a self-describing checkpoint and its FP32 ONNX export."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch

from flair_deploy.description import ArchitectureSpec, ModelDescription, class_preset
from flair_deploy.models import build_model


@pytest.fixture(scope="module")
def tiny_artifacts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``tiny.ckpt`` (Lightning layout with the description) and ``tiny.fp32.onnx`` of the same weights.

    Module-scoped (an export takes seconds); the description is the shared ``tiny_description``'s.
    """
    tmp_path = tmp_path_factory.mktemp("artifacts")
    tiny_description = ModelDescription(
        name="tiny",
        tile_size=64,
        overlap=16,
        architecture=ArchitectureSpec(arch="unet", encoder="resnet18", encoder_depth=5),
        classes=class_preset("flair15"),
    )
    torch.manual_seed(0)
    model = build_model(tiny_description).eval()
    ckpt = tmp_path / "tiny.ckpt"
    torch.save(
        {
            "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
            "hyper_parameters": {"description": tiny_description.to_dict()},
        },
        ckpt,
    )
    onnx_path = tmp_path / "tiny.fp32.onnx"
    x = torch.rand(1, tiny_description.in_channels, 64, 64) * 255
    torch.onnx.export(
        model,
        (x,),
        str(onnx_path),
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}},
        opset_version=17,
        dynamo=False,
    )
    proto = onnx.load(str(onnx_path))
    for key, value in tiny_description.to_metadata_props().items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(onnx_path))
    return ckpt, onnx_path
