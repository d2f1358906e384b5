"""Inference backends: one :class:`Backend` contract, three runtimes, chosen by name or by model file.

No runtime is imported here: the registry maps each :class:`BackendName` to a lazy factory, so
``import flair_deploy.inference.backends`` stays cheap and works without onnxruntime or TensorRT.

Example:
    >>> from flair_deploy.inference.backends import create_backend  # doctest: +SKIP
    >>> with create_backend(None, Path("model.onnx")) as backend:  # doctest: +SKIP
    ...     classes, confidence = backend.predict_classes(tiles)
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

from flair_deploy._optional import install_hint, require
from flair_deploy.artifacts import SUFFIXES as ARTIFACT_SUFFIXES
from flair_deploy.artifacts import ArtifactKind, Describer
from flair_deploy.description import Precision
from flair_deploy.errors import BackendError
from flair_deploy.inference.backends.base import (
    Backend,
    BackendName,
    StageTimes,
    parse_device,
    parse_precision,
)

__all__ = [
    "BACKEND_OF_KIND",
    "SUFFIXES",
    "Backend",
    "BackendName",
    "StageTimes",
    "available_backends",
    "backend_for_artifact",
    "create_backend",
    "parse_device",
    "parse_precision",
]

#: Artifact kind → the backend that reads it by default.
BACKEND_OF_KIND: Final[Mapping[ArtifactKind, BackendName]] = {
    ArtifactKind.CHECKPOINT: BackendName.TORCH,
    ArtifactKind.ONNX: BackendName.ONNXRUNTIME,
    ArtifactKind.ENGINE: BackendName.TENSORRT,
}

#: Model-file suffix → the backend that reads it, derived from the one suffix table
#: (:data:`flair_deploy.artifacts.SUFFIXES`).
SUFFIXES: Final[Mapping[str, BackendName]] = {s: BACKEND_OF_KIND[k] for s, k in ARTIFACT_SUFFIXES.items()}


def _lazy(module: str, cls: str) -> Callable[[], type[Backend]]:
    def load() -> type[Backend]:
        backend_cls: type[Backend] = getattr(importlib.import_module(module), cls)
        return backend_cls

    return load


#: Lazy class loaders; adding a runtime is one module plus one line here.
_REGISTRY: Final[Mapping[BackendName, Callable[[], type[Backend]]]] = {
    BackendName.TORCH: _lazy("flair_deploy.inference.backends.torch_backend", "TorchBackend"),
    BackendName.ONNXRUNTIME: _lazy("flair_deploy.inference.backends.ort_backend", "OrtBackend"),
    BackendName.TENSORRT: _lazy("flair_deploy.inference.backends.trt_backend", "TrtBackend"),
    BackendName.NULL: _lazy("flair_deploy.inference.backends.null_backend", "NullBackend"),
}


def _parse_name(name: BackendName | str) -> BackendName:
    try:
        return BackendName(str(name).lower())
    except ValueError:
        choices = ", ".join(b.value for b in BackendName)
        raise BackendError(f"unknown backend {name!r}; choose one of: {choices}") from None


def backend_for_artifact(artifact: Path) -> BackendName:
    """Return the backend that reads *artifact*, from its suffix.

    Raises:
        BackendError: For an unknown suffix, listing the known ones.
    """
    key = artifact.suffix.lower()
    if key not in SUFFIXES:
        known = ", ".join(f"{s} ({b.value})" for s, b in SUFFIXES.items())
        raise BackendError(
            f"cannot tell which backend reads {artifact.name!r} (suffix {key or 'none'!r}); "
            f"known model files: {known}; or pass --backend"
        )
    return SUFFIXES[key]


def create_backend(
    name: BackendName | str | None,
    artifact: Path,
    *,
    device: str = "cpu",
    precision: Precision | str | None = None,
    options: Mapping[str, Any] | None = None,
    preset: Describer | None = None,
) -> Backend:
    """Create a backend for a model file; use the result as a context manager.

    Args:
        name: ``torch``, ``onnxruntime``, ``tensorrt`` or ``null`` (no network: the host-side ceiling);
            None chooses from the file suffix
            (:data:`SUFFIXES`: checkpoints → torch, ``.onnx`` → onnxruntime, engines → tensorrt).
        artifact: The model file.
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:<i>"``.
        precision: Requested precision (``fp32``, ``fp16``, ``bf16``, ``int8``), or None for the
            artifact's own.
        options: Backend-specific options (e.g. ``threads``, ``provider``, ``compile``); unknown keys
            are an error.
        preset: Description preset for checkpoints that carry none (IGN weights).

    Returns:
        The backend, not yet active.

    Raises:
        BackendError: Unknown backend, device or precision, missing file, runtime failures.
        MissingDependencyError: If the runtime is not installed.
    """
    key = backend_for_artifact(artifact) if name is None else _parse_name(name)
    parse_device(device)  # fail on a bad device before importing any runtime
    prec = parse_precision(precision)
    if not artifact.exists():
        raise BackendError(f"model file {artifact} does not exist; check the path")
    if key is BackendName.TORCH:
        require(
            "torch", purpose=f"running the checkpoint {artifact.name} (its ONNX export runs without PyTorch)"
        )
    cls = _REGISTRY[key]()
    return cls.from_artifact(artifact, device=device, precision=prec, options=options, preset=preset)


def available_backends(device: str = "cpu") -> dict[BackendName, str | None]:
    """Say which backends can run here.

    Args:
        device: ``"cpu"`` or ``"cuda[:i]"``: a CUDA device also needs CUDA in torch and the CUDA
            provider in onnxruntime.

    Returns:
        For each backend, None if usable, else the reason it is not (for the benchmark's skip column).
    """
    kind, _ = parse_device(device)
    out: dict[BackendName, str | None] = {}

    def cuda_reason() -> str | None:
        if importlib.util.find_spec("torch") is None:
            return f"CUDA here goes through PyTorch, which is not installed ({install_hint('torch', extra='gpu')})"
        import torch

        if not torch.cuda.is_available():
            return "no CUDA device visible to torch"
        return None

    if importlib.util.find_spec("torch") is None:
        out[BackendName.TORCH] = f"PyTorch is not installed ({install_hint('torch')})"
    else:
        out[BackendName.TORCH] = cuda_reason() if kind == "cuda" else None

    if importlib.util.find_spec("onnxruntime") is None:
        out[BackendName.ONNXRUNTIME] = "onnxruntime is not installed (pip install onnxruntime)"
    else:
        import onnxruntime as ort

        providers = ort.get_available_providers()
        if kind == "cuda" and "CUDAExecutionProvider" not in providers:
            out[BackendName.ONNXRUNTIME] = (
                f"onnxruntime has no CUDAExecutionProvider (has {', '.join(providers)}); "
                "pip install onnxruntime-gpu"
            )
        else:
            out[BackendName.ONNXRUNTIME] = None

    if importlib.util.find_spec("tensorrt") is None:
        out[BackendName.TENSORRT] = "tensorrt is not installed (pip install 'flair-deploy[tensorrt]')"
    else:
        out[BackendName.TENSORRT] = cuda_reason() or (
            "TensorRT engines run on CUDA only; use --device cuda" if kind == "cpu" else None
        )
    out[BackendName.NULL] = cuda_reason() if kind == "cuda" else None
    return out
