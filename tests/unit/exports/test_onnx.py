"""FP32 export details: metadata models, dynamic H/W, re-stamping, graph regions."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from flair_deploy.description import MetadataSpec, Precision
from flair_deploy.errors import ExportError, ModelDescriptionError
from flair_deploy.exports.config import Head
from flair_deploy.exports.onnx import (
    export_onnx,
    graph_regions,
    load_onnx,
    read_onnx_description,
    restamp_onnx,
)
from flair_deploy.exports.precision import convert_fp16
from flair_deploy.models import build_model


@pytest.fixture(scope="module")
def metadata_export(tmp_path_factory):
    from flair_deploy.description import ArchitectureSpec, ModelDescription, class_preset

    desc = ModelDescription(
        name="tiny-meta",
        tile_size=64,
        overlap=16,
        architecture=ArchitectureSpec(encoder="resnet18"),
        classes=class_preset("flair15"),
        metadata=MetadataSpec(dim=8, fields=tuple(f"f{i}" for i in range(8))),
    )
    torch.manual_seed(0)
    model = build_model(desc).eval()
    path = tmp_path_factory.mktemp("meta") / "tiny-meta.fp32.onnx"
    stamped = export_onnx(model, desc, path, heads=(Head.LOGITS, Head.CLASSES), dynamic_hw=True)
    return model, stamped, path


def test_metadata_model_has_two_inputs_and_matches_pytorch(metadata_export):
    model, _, path = metadata_export
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [(i.name, i.type) for i in sess.get_inputs()] == [
        ("image", "tensor(float)"),
        ("metadata", "tensor(float)"),
    ]
    # Dynamic height and width: a 96×128 tile runs on the graph exported at 64×64.
    x = torch.rand(3, 5, 96, 128) * 255
    m = torch.rand(3, 8)
    logits = sess.run(["logits"], {"image": x.numpy(), "metadata": m.numpy()})[0]
    with torch.no_grad():
        ref = model(x, m).numpy()
    assert np.abs(logits - ref).max() < 1e-3
    assert model.training is False, "export must restore the model's mode"


def test_metadata_model_keeps_no_deepness_keys_and_survives_fp16(metadata_export, tmp_path):
    _, desc, path = metadata_export
    back = read_onnx_description(path)
    assert back == desc and back.metadata is not None and back.metadata.dim == 8
    keys = {p.key for p in load_onnx(path).metadata_props}
    assert "tile_size" not in keys  # Deepness cannot feed a second input
    d16 = convert_fp16(path, tmp_path / "m.fp16.onnx", desc)
    assert read_onnx_description(tmp_path / "m.fp16.onnx") == d16
    assert d16.provenance.precision is Precision.FP16
    sess = ort.InferenceSession(str(tmp_path / "m.fp16.onnx"), providers=["CPUExecutionProvider"])
    assert [i.type for i in sess.get_inputs()] == ["tensor(float)", "tensor(float)"]


def test_restamp_replaces_description_without_touching_the_graph(metadata_export, tmp_path):
    _, desc, path = metadata_export
    copy = tmp_path / "copy.onnx"
    copy.write_bytes(path.read_bytes())
    before = load_onnx(copy).graph.SerializeToString()
    new = desc.with_provenance(parity={"agreement": 0.5})
    restamp_onnx(copy, new)
    assert read_onnx_description(copy).provenance.parity == {"agreement": 0.5}
    assert load_onnx(copy).graph.SerializeToString() == before


def test_graph_regions_find_normalisation_stem_and_head(metadata_export):
    _, _, path = metadata_export
    proto = load_onnx(path)
    regions = graph_regions(proto)
    ops = {n.name: n.op_type for n in proto.graph.node}
    assert {ops[n] for n in regions["normalization"]} <= {"Mul", "Add"} and regions["normalization"]
    assert [ops[n] for n in regions["stem"]] == ["Conv"]
    assert ops[regions["head"][-1]] == "Conv"
    assert "ArgMax" in {ops[n] for n in regions["outputs"]} or "ReduceMax" in {
        ops[n] for n in regions["outputs"]
    }


def test_tile_not_multiple_of_stride_is_an_error(tiny_description, tmp_path):
    with pytest.raises(ExportError, match="multiple of the network's output stride 32"):
        export_onnx(build_model(tiny_description), tiny_description, tmp_path / "x.onnx", tile_size=48)
    assert not list(tmp_path.iterdir())


def test_reading_a_foreign_onnx_says_how_to_fix(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    path = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(ModelDescriptionError, match="flair-deploy export"):
        read_onnx_description(path)
