"""TensorRT settings shared by the engine builder and onnxruntime's TensorRT execution provider.

Both ``flair-deploy export --tensorrt`` (:mod:`flair_deploy.exports.tensorrt`) and the onnxruntime
backend's ``tensorrt`` provider compile the same ONNX graphs with TensorRT, so the precision flags and
provider options are written here once. The module is torch-free and imports no runtime: the inference
side uses it without the export extras.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from flair_deploy.description import Precision

__all__ = ["Shape", "ShapeRange", "precision_flags", "tensorrt_provider_options"]

Shape = tuple[int, ...]
#: The (min, opt, max) shapes of one input of an optimisation profile.
ShapeRange = tuple[Shape, Shape, Shape]


def precision_flags(precision: Precision | str) -> tuple[str, ...]:
    """Return the TensorRT builder flags a weakly typed network needs for a graph of *precision*.

    Precision lives in the ONNX graph (FP16 casts, Q/DQ nodes); a weakly typed TensorRT network
    (TensorRT 10) must still be allowed to pick those kernels: ``FP16`` for the FP16 graph, ``INT8``
    for the Q/DQ graph, none for FP32. Strongly typed networks (TensorRT 11) take no flags.
    """
    return {Precision.FP16: ("FP16",), Precision.INT8: ("INT8",)}.get(Precision(precision), ())


def _ort_shapes(shapes: Mapping[str, ShapeRange], which: int) -> str:
    return ",".join(f"{n}:{'x'.join(str(d) for d in t[which])}" for n, t in sorted(shapes.items()))


def tensorrt_provider_options(
    *,
    precision: Precision | str,
    shapes: Mapping[str, ShapeRange],
    cache_dir: Path,
    device_id: int = 0,
    workspace_bytes: int | None = None,
    engine_cache: bool = True,
) -> dict[str, str]:
    """Return onnxruntime TensorRT execution-provider options for a flair-deploy ONNX graph.

    The precision flags are :func:`precision_flags`' (the same as the engine builder's); explicit
    profile shapes stop the provider from rebuilding its engine when a batch shape changes inside
    the profile; engine and timing caches make later sessions start in seconds.

    Usage::

        sess = ort.InferenceSession(path, providers=[
            ("TensorrtExecutionProvider", tensorrt_provider_options(...)), "CUDAExecutionProvider"])

    Args:
        precision: Precision of the ONNX graph.
        shapes: ``{input name: (min, opt, max) shape}`` of the optimisation profile.
        cache_dir: Folder of the engine and timing caches (the caller creates it).
        device_id: CUDA device index.
        workspace_bytes: TensorRT workspace limit; None keeps onnxruntime's default.
        engine_cache: Reuse engines the provider built earlier.

    Returns:
        Provider options as strings (onnxruntime's documented names).
    """
    flags = precision_flags(precision)
    options = {
        "device_id": str(device_id),
        "trt_fp16_enable": str("FP16" in flags),
        "trt_int8_enable": str("INT8" in flags),
        "trt_engine_cache_enable": str(engine_cache),
        "trt_engine_cache_path": str(cache_dir),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(cache_dir),
        "trt_profile_min_shapes": _ort_shapes(shapes, 0),
        "trt_profile_opt_shapes": _ort_shapes(shapes, 1),
        "trt_profile_max_shapes": _ort_shapes(shapes, 2),
    }
    if workspace_bytes is not None:
        options["trt_max_workspace_size"] = str(int(workspace_bytes))
    return options
