"""Tiny artifacts for the benchmark harness: a self-describing checkpoint and its FP32 ONNX export."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from flair_deploy.artifacts import save_checkpoint
from flair_deploy.description import ArchitectureSpec, ModelDescription, class_preset
from flair_deploy.exports.onnx import export_onnx
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
    ckpt = save_checkpoint(tmp_path / "tiny.ckpt", model, tiny_description)
    onnx_path = tmp_path / "tiny.fp32.onnx"
    export_onnx(model, tiny_description, onnx_path, slim=False)
    return ckpt, onnx_path
