"""End-to-end export: artifacts, gates, self-description after every transform, ORT runs."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from flair_deploy.description import ONNX_KEY, Precision
from flair_deploy.errors import OutputError, ParityError
from flair_deploy.exports import ExportConfig, ParityGate, ParityGates, export_model, read_description


def test_every_variant_passes_its_gate_and_is_written(exported):
    assert set(exported.onnx) == {Precision.FP32, Precision.FP16, Precision.INT8}
    by_variant = {r.variant: r for r in exported.parity}
    assert by_variant["fp32"].agreement >= 0.9999
    assert by_variant["fp32"].max_abs_logit <= 1e-3
    assert by_variant["fp16"].agreement >= 0.999
    assert by_variant["int8"].agreement >= 0.99
    # Masks came with the validation CSV, so ΔmIoU is reported and within the INT8 gate.
    assert by_variant["int8"].delta_miou is not None and by_variant["int8"].delta_miou <= 1.0
    assert exported.parity_json.is_file() and exported.parity_markdown.is_file()
    report = json.loads(exported.parity_json.read_text())
    assert report["passed"] is True
    assert [v["variant"] for v in report["variants"]] == ["fp32", "fp16", "int8"]
    assert "| int8 |" in exported.parity_markdown.read_text()


@pytest.mark.parametrize("precision", [Precision.FP32, Precision.FP16, Precision.INT8])
def test_description_survives_each_transform_with_its_provenance(exported, precision):
    path = exported.onnx[precision]
    desc = read_description(path)
    assert desc.provenance.precision is precision
    assert desc.provenance.opset == 17
    assert desc.provenance.source_sha256 is not None
    assert desc.provenance.parity is not None and desc.provenance.parity["agreement"] >= 0.99
    if precision is Precision.INT8:
        assert desc.provenance.calibration_sha256 and len(desc.provenance.calibration_sha256) == 64
        assert desc.provenance.calibration_method.startswith("percentile/u8s8/per-channel/24 tiles")
    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    assert ONNX_KEY in props
    # QGIS Deepness keys for this single-input model.
    assert json.loads(props["tiles_size"]) == 64
    assert json.loads(props["model_type"]) == "Segmentor"


def test_all_variants_run_on_ort_cpu_with_fp32_io_and_heads(exported):
    desc = read_description(exported.onnx[Precision.FP32])
    x = np.random.default_rng(0).uniform(0, 255, (2, 5, 64, 64)).astype(np.float32)
    for precision, path in exported.onnx.items():
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert [i.name for i in sess.get_inputs()] == ["image"]
        assert sess.get_inputs()[0].type == "tensor(float)"
        names = [o.name for o in sess.get_outputs()]
        assert names == ["logits", "probabilities", "class_index", "confidence"], precision
        logits, probs, index, conf = sess.run(None, {"image": x})
        assert logits.dtype == np.float32 and logits.shape == (2, 19, 64, 64)
        assert index.dtype == np.uint8 and index.shape == (2, 64, 64)
        inactive = [i for i, a in enumerate(desc.active_mask) if not a]
        assert np.all(probs[:, inactive] == 0.0), "inactive classes must get probability 0"
        assert not np.isin(index, inactive).any()
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)
        np.testing.assert_allclose(conf, probs.max(1), atol=1e-6)


def test_dynamic_batch(exported):
    sess = ort.InferenceSession(str(exported.onnx[Precision.FP32]), providers=["CPUExecutionProvider"])
    for n in (1, 3):
        out = sess.run(["logits"], {"image": np.zeros((n, 5, 64, 64), np.float32)})[0]
        assert out.shape[0] == n


def test_existing_artifacts_are_not_overwritten(exported, export_data):
    cfg = ExportConfig(checkpoint=export_data["checkpoint"], out_dir=exported.out_dir)
    before = exported.onnx[Precision.FP32].read_bytes()
    with pytest.raises(OutputError, match="--overwrite"):
        export_model(cfg, progress=False)
    assert exported.onnx[Precision.FP32].read_bytes() == before


def test_failed_gate_removes_the_artifact_keeps_the_report(export_data, tmp_path):
    impossible = ParityGates(fp32=ParityGate(min_agreement=1.0, max_abs_logit=0.0))
    cfg = ExportConfig(
        checkpoint=export_data["checkpoint"], out_dir=tmp_path, gates=impossible, parity_tiles=2
    )
    with pytest.raises(ParityError, match="fp32 failed parity") as info:
        export_model(cfg, progress=False)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "tiny.fp32.onnx").exists()
    assert not list(tmp_path.glob(".*.part")), "no temporary file may be left behind"
    report = json.loads((tmp_path / "tiny.parity.json").read_text())
    assert report["passed"] is False
    assert "max |Δlogit|" in report["variants"][0]["failures"][0]


def test_int8_scheme_defaults_to_u8s8_on_cpu_and_s8s8_for_tensorrt(tmp_path):
    from flair_deploy.exports.config import ExportConfig, Int8Scheme

    base = {"checkpoint": tmp_path / "m.ckpt", "out_dir": tmp_path, "int8": True, "calibration": [tmp_path]}
    assert ExportConfig(**base).resolved_int8_scheme is Int8Scheme.U8S8
    assert ExportConfig(**base, tensorrt=True).resolved_int8_scheme is Int8Scheme.S8S8
    assert ExportConfig(**base, int8_scheme="s8s8").resolved_int8_scheme is Int8Scheme.S8S8
    with pytest.raises(ValueError, match="TensorRT accepts only symmetric signed INT8"):
        ExportConfig(**base, tensorrt=True, int8_scheme="u8s8")
