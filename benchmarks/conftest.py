"""Artifacts for the throughput suite: the FLAIR U-Net/ResNet-34 (random weights) at 512² tiles.

Built once per session into a temporary folder: a self-describing checkpoint, and through the exports
package its FP32 and INT8 ONNX graphs; INT8 is calibrated on a small sample orthophoto (speed is what is
measured here, not accuracy, so parity gates are not enforced).

Environment: ``FLAIR_BENCH_DEVICE`` (default ``cpu``), ``FLAIR_BENCH_BATCHES`` (default ``1,4``),
``FLAIR_BENCH_ROUNDS`` (default 5).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from flair_deploy.artifacts import save_checkpoint
from flair_deploy.benchmarking import BenchmarkConfig, collect_fingerprint, resolve_ceilings
from flair_deploy.description import ModelDescription
from flair_deploy.models import build_model

DEVICE = os.environ.get("FLAIR_BENCH_DEVICE", "cpu")
BATCHES = tuple(int(b) for b in os.environ.get("FLAIR_BENCH_BATCHES", "1,4").split(","))
ROUNDS = int(os.environ.get("FLAIR_BENCH_ROUNDS", "5"))


def _export(ckpt: Path, out: Path, description: ModelDescription) -> None:
    from flair_deploy.exports import ExportConfig, export_model
    from flair_deploy.sample import make_sample_ortho

    ortho = make_sample_ortho(out / "calibration.tif", width=1536, height=1536)
    export_model(
        ExportConfig(
            checkpoint=ckpt,
            out_dir=out,
            name="flair",
            int8=True,
            calibration=(ortho,),
            calibration_tiles=8,
            parity_tiles=2,
            verify=False,
        ),
        progress=False,
    )


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ...]:
    """``flair.ckpt`` and the ``flair.<precision>.onnx`` files beside it."""
    out = tmp_path_factory.mktemp("bench-models")
    description = ModelDescription(name="flair")
    torch.manual_seed(0)
    model = build_model(description).eval()
    ckpt = save_checkpoint(out / "flair.ckpt", model, description)
    _export(ckpt, out, description)
    return (ckpt, out / "flair.fp32.onnx")


@pytest.fixture(scope="session")
def bench_config(artifacts: tuple[Path, ...]) -> BenchmarkConfig:
    """The benchmark configuration the suite's cases come from (same planner as the CLI)."""
    return BenchmarkConfig(
        models=artifacts,
        backends=("torch", "onnxruntime", "tensorrt"),
        device=DEVICE,
        batches=BATCHES,
        tiles=(512,),
        variants=("eager", "channels_last"),
    )


@pytest.fixture(scope="session")
def ceilings(bench_config: BenchmarkConfig):
    return resolve_ceilings(bench_config, collect_fingerprint(DEVICE))
