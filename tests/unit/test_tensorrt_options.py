"""One writer of TensorRT settings: the engine builder and onnxruntime's TensorRT provider agree."""

from __future__ import annotations

import pytest

from flair_deploy.description import MetadataSpec
from flair_deploy.tensorrt_options import tensorrt_provider_options


def test_provider_options_never_lower_precision_through_flags(tmp_path):
    # Precision is in the graph: with both flags off onnxruntime builds a strongly typed network on
    # TensorRT 10 as on 11 (either flag would make TensorRT 10's network weakly typed).
    shapes = {"image": ((1, 5, 64, 64), (4, 5, 64, 64), (8, 5, 64, 64)), "metadata": ((1, 3), (4, 3), (8, 3))}
    opts = tensorrt_provider_options(shapes=shapes, cache_dir=tmp_path, device_id=1)
    assert opts["trt_int8_enable"] == "False" and opts["trt_fp16_enable"] == "False"
    assert opts["trt_profile_min_shapes"] == "image:1x5x64x64,metadata:1x3"
    assert opts["trt_profile_max_shapes"] == "image:8x5x64x64,metadata:8x3"
    assert opts["device_id"] == "1" and opts["trt_engine_cache_path"] == str(tmp_path)
    assert "trt_max_workspace_size" not in opts  # onnxruntime's default unless asked
    assert all(isinstance(v, str) for v in opts.values())
    limited = tensorrt_provider_options(shapes=shapes, cache_dir=tmp_path, workspace_bytes=1 << 30)
    assert limited["trt_max_workspace_size"] == str(1 << 30)


def test_export_side_and_onnxruntime_backend_write_the_same_options(tiny_description, tmp_path):
    pytest.importorskip("onnx")
    from flair_deploy.exports.config import TensorRTOptions
    from flair_deploy.exports.tensorrt import ort_tensorrt_provider_options
    from flair_deploy.inference.backends.ort_backend import OrtBackend

    desc = tiny_description.model_copy(update={"metadata": MetadataSpec(dim=3)}).with_provenance(
        precision="int8"
    )
    exported = ort_tensorrt_provider_options(desc, options=TensorRTOptions(cache_dir=tmp_path))
    backend = OrtBackend(
        tmp_path / "m.onnx",
        desc,
        device="cuda",
        provider="tensorrt",
        cache_dir=tmp_path / "ort",
        profile_batches=(1, 16, 32),
    )
    backend._metadata_name = "metadata"  # as _activate sets it before building the providers
    (name, runtime), (fallback, _) = backend._providers(None)  # type: ignore[arg-type]
    assert (name, fallback) == ("TensorrtExecutionProvider", "CUDAExecutionProvider")
    assert (tmp_path / "ort").is_dir()  # the backend creates its cache folder
    differ = {k for k in exported.keys() | runtime.keys() if exported.get(k) != runtime.get(k)}
    # Only the workspace limit is the export's own choice (TensorRTOptions.workspace_gib).
    assert differ == {"trt_max_workspace_size"}


@pytest.mark.parametrize("provider", ["tensorrt", "cuda", "cpu"], ids=["trt-ep", "cuda-ep", "cpu-ep"])
def test_no_provider_lowers_an_fp32_graph_to_fp16(tiny_description, tmp_path, provider):
    from flair_deploy.description import Precision
    from flair_deploy.errors import BackendError
    from flair_deploy.inference.backends.ort_backend import OrtBackend

    device = "cpu" if provider == "cpu" else "cuda"
    with pytest.raises(BackendError, match=r"fp32 model but fp16 was requested.*\(m\.fp16\.onnx\)"):
        OrtBackend(
            tmp_path / "m.fp32.onnx",
            tiny_description,
            device=device,
            provider=provider,
            precision=Precision.FP16,
        )
