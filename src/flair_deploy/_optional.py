"""Lazy imports of heavy optional dependencies, with a one-line error that names the extra to install.

``pip install flair-deploy`` is the runtime: ``detect``, ``inspect`` and ``benchmark`` on ONNX models
with onnxruntime on the CPU, and nothing of PyTorch. Everything else comes with an extra (see
``[project.optional-dependencies]`` in ``pyproject.toml``); :data:`EXTRAS` is the same table, read by
the errors below so that a missing module always names the extra that provides it.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Mapping
from types import ModuleType
from typing import Final

from flair_deploy.errors import MissingDependencyError

__all__ = ["EXTRAS", "install_hint", "require", "require_extra"]

#: Extra → the top-level modules of the distributions it lists in ``pyproject.toml`` (``export`` also
#: installs ``train``; ``gpu`` swaps onnxruntime for onnxruntime-gpu, same module).
EXTRAS: Final[Mapping[str, tuple[str, ...]]] = {
    "train": (
        "torch",
        "lightning",
        "segmentation_models_pytorch",
        "safetensors",
        "tensorboard",
        "matplotlib",
    ),
    "export": ("onnx", "onnxscript", "onnxslim"),
    "tensorrt": ("tensorrt", "torch"),
    "distributed": ("ray",),
    "hf": ("transformers",),
}

# Where the extra alone is not the best advice: onnxruntime is in the base install (a missing one is a
# broken install), and onnxruntime-gpu replaces it on CUDA machines.
_HINTS: Final[Mapping[str, str]] = {
    "onnxruntime": "pip install onnxruntime (or 'flair-deploy[gpu]' for the CUDA and TensorRT providers)",
    "tensorrt": "pip install 'flair-deploy[tensorrt]' (needs an NVIDIA GPU and driver)",
    # Plots (benchmark --plot, map previews) are worth having without torch.
    "matplotlib": "pip install matplotlib (it also comes with 'flair-deploy[train]')",
}


def install_hint(module: str, *, extra: str | None = None) -> str:
    """Return the command that installs *module* (a top-level or dotted module name).

    Args:
        module: The module.
        extra: The extra to name when the caller knows better than the table (``torch`` is in
            ``train``, ``gpu`` and ``tensorrt``; the CUDA paths want ``gpu``).
    """
    top = module.split(".")[0]
    if extra is not None:
        return f"pip install 'flair-deploy[{extra}]'"
    if top in _HINTS:
        return _HINTS[top]
    for name, modules in EXTRAS.items():
        if top in modules:
            return f"pip install 'flair-deploy[{name}]'"
    return f"pip install {top}"


def require(module: str, *, purpose: str, extra: str | None = None) -> ModuleType:
    """Import *module* or raise a one-line error saying how to install it.

    Args:
        module: Module name, e.g. ``"tensorrt"`` or ``"onnxruntime.quantization"``.
        purpose: What it is needed for, e.g. ``"building TensorRT engines"``.
        extra: The extra to advise, when not the one :data:`EXTRAS` lists the module under.

    Returns:
        The imported module.

    Raises:
        MissingDependencyError: If the import fails; the message names the extra to install.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{purpose} needs {module}, which cannot be imported ({exc}); install it with: "
            f"{install_hint(module, extra=extra)}"
        ) from None


def require_extra(extra: str, *, purpose: str) -> None:
    """Check that every module of *extra* is installed, without importing any of them.

    Called before a command imports its stack (importing torch and Lightning takes seconds), so that a
    runtime install says what to install instead of failing on the first missing import.

    Args:
        extra: A key of :data:`EXTRAS` (``export`` also checks ``train``, which it includes).
        purpose: What it is needed for, e.g. ``"training"``.

    Raises:
        MissingDependencyError: If any module is missing; the message lists them and names the extra.
    """
    modules = (*EXTRAS["train"], *EXTRAS["export"]) if extra == "export" else EXTRAS[extra]
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        named = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise MissingDependencyError(
            f"{purpose} needs {named}, which the base install (ONNX models only) does not include; "
            f"install them with: pip install 'flair-deploy[{extra}]'"
        )
