"""Export trained networks to verified, self-describing deployment artifacts.

Checkpoint → ONNX FP32 (→ FP16, → Q/DQ INT8) → TensorRT engines, each checked against PyTorch::

    from flair_deploy.exports import ExportConfig, export_model

    result = export_model(ExportConfig(checkpoint=Path("best.ckpt"), out_dir=Path("models"), fp16=True))
    read_description(result.onnx[Precision.FP32])   # everything a runtime needs, from the file alone

Heavy dependencies (onnx, onnxruntime, onnxslim, tensorrt) are imported only when a step needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Nothing is imported until used (PEP 562): `flair_deploy.exports.inspect` and the configs serve the
# runtime install, which has no torch, while `onnx`, `parity` and `pipeline` import it at the top.
if TYPE_CHECKING:
    from flair_deploy.exports.calibration import TileSet, read_tiles, synthetic_tiles
    from flair_deploy.exports.config import (
        CalibrationMethod,
        ExportConfig,
        Exporter,
        Head,
        Int8Scheme,
        ParityGate,
        ParityGates,
        TensorRTOptions,
    )
    from flair_deploy.exports.inspect import read_description, render_description
    from flair_deploy.exports.onnx import export_onnx, read_onnx_description
    from flair_deploy.exports.parity import ParityResult, compare_logits
    from flair_deploy.exports.pipeline import ExportResult, export_model
    from flair_deploy.exports.precision import convert_fp16, quantize_int8
    from flair_deploy.exports.tensorrt import (
        EngineFacts,
        EngineProfile,
        build_engine,
        engine_cache_key,
        ort_tensorrt_provider_options,
    )

__all__ = [
    "CalibrationMethod",
    "EngineFacts",
    "EngineProfile",
    "ExportConfig",
    "ExportResult",
    "Exporter",
    "Head",
    "Int8Scheme",
    "ParityGate",
    "ParityGates",
    "ParityResult",
    "TensorRTOptions",
    "TileSet",
    "build_engine",
    "compare_logits",
    "convert_fp16",
    "engine_cache_key",
    "export_model",
    "export_onnx",
    "ort_tensorrt_provider_options",
    "quantize_int8",
    "read_description",
    "read_onnx_description",
    "read_tiles",
    "render_description",
    "synthetic_tiles",
]

#: Submodule → the public names it holds (the imports above, for the lazy loader below).
_SUBMODULES: dict[str, tuple[str, ...]] = {
    "calibration": ("TileSet", "read_tiles", "synthetic_tiles"),
    "config": (
        "CalibrationMethod",
        "ExportConfig",
        "Exporter",
        "Head",
        "Int8Scheme",
        "ParityGate",
        "ParityGates",
        "TensorRTOptions",
    ),
    "inspect": ("read_description", "render_description"),
    "onnx": ("export_onnx", "read_onnx_description"),
    "parity": ("ParityResult", "compare_logits"),
    "pipeline": ("ExportResult", "export_model"),
    "precision": ("convert_fp16", "quantize_int8"),
    "tensorrt": (
        "EngineFacts",
        "EngineProfile",
        "build_engine",
        "engine_cache_key",
        "ort_tensorrt_provider_options",
    ),
}
_HOME = {name: module for module, names in _SUBMODULES.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
