"""TensorRT settings shared by the engine builder and onnxruntime's TensorRT execution provider.

Both ``flair-deploy export --tensorrt`` (:mod:`flair_deploy.exports.tensorrt`) and the onnxruntime
backend's ``tensorrt`` provider compile the same ONNX graphs with TensorRT, so the precision flags and
provider options are written here once. The module is torch-free and imports no runtime: the inference
side uses it without the export extras.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

__all__ = ["Shape", "ShapeRange", "tensorrt_provider_options"]

Shape = tuple[int, ...]
#: The (min, opt, max) shapes of one input of an optimisation profile.
ShapeRange = tuple[Shape, Shape, Shape]


def _ort_shapes(shapes: Mapping[str, ShapeRange], which: int) -> str:
    return ",".join(f"{n}:{'x'.join(str(d) for d in t[which])}" for n, t in sorted(shapes.items()))


def tensorrt_provider_options(
    *,
    shapes: Mapping[str, ShapeRange],
    cache_dir: Path,
    device_id: int = 0,
    workspace_bytes: int | None = None,
    engine_cache: bool = True,
) -> dict[str, str]:
    """Return onnxruntime TensorRT execution-provider options for a flair-deploy ONNX graph.

    Precision lives in the graph (FP16 casts, Q/DQ nodes), so both provider precision flags are off
    for every graph: onnxruntime then builds a strongly typed TensorRT network on TensorRT 10 as on 11
    (either flag would make TensorRT 10's network weakly typed, free to demote the graph's FP32
    islands), the same network the engine builder makes. Explicit profile shapes stop the provider
    from rebuilding its engine when a batch shape changes inside the profile; engine and timing
    caches make later sessions start in seconds.

    Usage::

        sess = ort.InferenceSession(path, providers=[
            ("TensorrtExecutionProvider", tensorrt_provider_options(...)), "CUDAExecutionProvider"])

    Args:
        shapes: ``{input name: (min, opt, max) shape}`` of the optimisation profile.
        cache_dir: Folder of the engine and timing caches (the caller creates it).
        device_id: CUDA device index.
        workspace_bytes: TensorRT workspace limit; None keeps onnxruntime's default.
        engine_cache: Reuse engines the provider built earlier.

    Returns:
        Provider options as strings (onnxruntime's documented names).
    """
    options = {
        "device_id": str(device_id),
        "trt_fp16_enable": "False",
        "trt_int8_enable": "False",
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
