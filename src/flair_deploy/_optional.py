"""Lazy imports of heavy optional dependencies, with an error that names the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from flair_deploy.errors import MissingDependencyError

__all__ = ["require"]

_EXTRAS = {
    "tensorrt": "pip install 'flair-deploy[tensorrt]' (needs an NVIDIA GPU and driver)",
    "onnxruntime": "pip install onnxruntime (or 'flair-deploy[gpu]' for CUDA/TensorRT providers)",
    "onnx": "pip install onnx",
    "onnxscript": "pip install onnxscript",
    "onnxslim": "pip install onnxslim",
}


def require(module: str, *, purpose: str) -> ModuleType:
    """Import *module* or raise a one-line error saying how to install it.

    Args:
        module: Top-level module name, e.g. ``"tensorrt"``.
        purpose: What it is needed for, e.g. ``"building TensorRT engines"``.

    Returns:
        The imported module.

    Raises:
        MissingDependencyError: If the import fails.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        how = _EXTRAS.get(module.split(".")[0], f"pip install {module.split('.')[0]}")
        raise MissingDependencyError(
            f"{module} is required for {purpose} but cannot be imported ({exc}); install it with: {how}"
        ) from None
