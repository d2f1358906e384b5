"""INT8 Q/DQ graphs: the TensorRT scheme has no INT32 bias and dedicated Q/DQ pairs; u8s8 keeps them."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from flair_deploy.choices import Int8Scheme
from flair_deploy.exports.calibration import TileSet
from flair_deploy.exports.onnx import export_onnx
from flair_deploy.exports.precision import quantize_int8
from flair_deploy.models import build_model


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    from flair_deploy.description import ArchitectureSpec, ModelDescription, class_preset

    desc = ModelDescription(
        name="q",
        tile_size=32,
        overlap=8,
        architecture=ArchitectureSpec(encoder="resnet18", encoder_depth=3),
        classes=class_preset("flair15"),
    )
    path = tmp_path_factory.mktemp("q") / "q.fp32.onnx"
    desc = export_onnx(build_model(desc).eval(), desc, path, slim=False)
    rng = np.random.default_rng(0)
    tiles = TileSet(rng.uniform(0, 255, (4, 5, 32, 32)).astype(np.float32), None, None, "random")
    return path, desc, tiles


def _int8(fp32, tmp_path, scheme):
    src, desc, tiles = fp32
    dst = tmp_path / f"q.{scheme.value}.onnx"
    quantize_int8(src, dst, desc, tiles, scheme=scheme, preprocess=False)  # preprocessing is not under test
    return onnx.load(str(dst))


def _dq_input_types(model):
    inits = {i.name: i.data_type for i in model.graph.initializer}
    return [inits.get(n.input[0]) for n in model.graph.node if n.op_type == "DequantizeLinear"]


def test_tensorrt_scheme_has_no_int32_dequantize_and_dedicated_pairs(fp32, tmp_path):
    model = _int8(fp32, tmp_path, Int8Scheme.S8S8)
    types = _dq_input_types(model)
    assert types and onnx.TensorProto.INT32 not in types
    consumers: dict[str, int] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers[i] = consumers.get(i, 0) + 1
    q_outputs = [n.output[0] for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert q_outputs and all(consumers.get(o, 0) == 1 for o in q_outputs)


def test_cpu_scheme_keeps_int32_biases_for_qlinearconv(fp32, tmp_path):
    assert onnx.TensorProto.INT32 in _dq_input_types(_int8(fp32, tmp_path, Int8Scheme.U8S8))
