"""End-to-end export: artifacts, gates, self-description after every transform, ORT runs."""

from __future__ import annotations

import errno
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from flair_deploy.description import ONNX_KEY, Precision
from flair_deploy.errors import ConfigError, InputDataError, OutputError, ParityError
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
    assert json.loads(props["tile_size"]) == 64
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


def test_failed_gate_keeps_no_artifact_only_the_report_and_the_rerun_needs_no_overwrite(
    export_data, tmp_path
):
    impossible = ParityGates(fp32=ParityGate(min_agreement=1.0, max_abs_logit=0.0))
    cfg = ExportConfig(
        checkpoint=export_data["checkpoint"], out_dir=tmp_path, gates=impossible, parity_tiles=2, slim=False
    )
    with pytest.raises(ParityError, match=r"fp32 failed parity.*no artifact was kept") as info:
        export_model(cfg, progress=False)
    assert "\n" not in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.parity.json", "tiny.parity.md"]
    report = json.loads((tmp_path / "tiny.parity.json").read_text())
    assert report["passed"] is False
    assert "max |Δlogit|" in report["variants"][0]["failures"][0]
    # The report of the failed attempt does not block the fixed rerun, which replaces it.
    fixed = export_model(cfg.model_copy(update={"gates": ParityGates()}), progress=False)
    assert fixed.passed and fixed.onnx[Precision.FP32].is_file()
    assert json.loads(fixed.parity_json.read_text())["passed"] is True
    # A failing --overwrite rerun leaves the earlier, good export whole, reports included.
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(ParityError, match=r"earlier export .* is untouched"):
        export_model(cfg.model_copy(update={"overwrite": True}), progress=False)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def _fake_quantize(fail: bool):
    """A stand-in for INT8 calibration: writes part of its output, then fails, or copies FP32."""
    from flair_deploy.errors import ExportError
    from flair_deploy.exports.onnx import load_onnx, save_onnx

    def quantize(src, dst, description, tiles, **_kw):
        if fail:
            dst.write_bytes(b"half a graph")
            raise ExportError("INT8 quantization failed: calibration diverged")
        stamped = description.with_provenance(precision="int8", calibration_sha256=tiles.sha256)
        save_onnx(load_onnx(src), dst, stamped)
        return stamped

    return quantize


def test_failed_int8_calibration_leaves_nothing_and_the_rerun_needs_no_overwrite(
    export_data, tmp_path, monkeypatch
):
    from flair_deploy.errors import ExportError
    from flair_deploy.exports import pipeline

    out = tmp_path / "out"
    cfg = ExportConfig(
        checkpoint=export_data["checkpoint"],
        out_dir=out,
        int8=True,
        calibration=(export_data["csv"],),
        calibration_tiles=2,
        parity_tiles=2,
        slim=False,  # the graph simplifier is not under test: seconds saved
    )
    monkeypatch.setattr(pipeline, "quantize_int8", _fake_quantize(fail=True))
    with pytest.raises(ExportError, match="calibration diverged"):
        export_model(cfg, progress=False)
    assert not out.exists(), "a failed export must leave nothing, not even its folder"
    monkeypatch.setattr(pipeline, "quantize_int8", _fake_quantize(fail=False))
    result = export_model(cfg, progress=False)
    assert sorted(p.name for p in out.iterdir()) == [
        "tiny.fp32.onnx",
        "tiny.int8.onnx",
        "tiny.parity.json",
        "tiny.parity.md",
    ]
    assert read_description(result.onnx[Precision.INT8]).provenance.parity is not None


def _refuse_export(*_a, **_k):
    raise AssertionError("the export started although an input is bad")


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"calibration": ("missing.csv",)}, InputDataError, "missing.csv"),
        # 6 patches of 128 px hold 6 x 65² distinct 64-px windows: fewer than asked.
        ({"calibration_tiles": 100_000}, InputDataError, "calibration sources give only"),
        ({"validation": "missing.csv"}, InputDataError, "missing.csv"),
        ({"validation": "garbage.csv"}, InputDataError, r"garbage\.csv, line 1: .*does not exist"),
        ({"keep_fp32": ("stem, head",)}, ConfigError, "one pattern per item"),
        ({"keep_fp32": ("/model/[abc",)}, ConfigError, "unbalanced"),
        ({"keep_fp32": ("",)}, ConfigError, "empty pattern"),
    ],
)
def test_bad_inputs_are_refused_before_any_work(export_data, tmp_path, monkeypatch, change, error, match):
    from flair_deploy.exports import pipeline

    monkeypatch.setattr(pipeline, "export_onnx", _refuse_export)
    (tmp_path / "garbage.csv").write_text("not_a_raster.tif,not_a_mask.tif\n")
    change = {
        k: (
            tuple(tmp_path / p for p in v) if k == "calibration" else tmp_path / v if k == "validation" else v
        )
        for k, v in change.items()
    }
    base = {"int8": True, "calibration": (export_data["csv"],), "calibration_tiles": 2, "parity_tiles": 2}
    cfg = ExportConfig(checkpoint=export_data["checkpoint"], out_dir=tmp_path / "out", **{**base, **change})
    with pytest.raises(error, match=match) as info:
        export_model(cfg, progress=False)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()


def test_not_enough_space_is_refused_before_any_work(export_data, tmp_path, monkeypatch):
    from flair_deploy import atomic
    from flair_deploy.exports import pipeline

    class Usage:
        free = 1 << 20

    monkeypatch.setattr(pipeline, "export_onnx", _refuse_export)
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda _p: Usage)
    cfg = ExportConfig(checkpoint=export_data["checkpoint"], out_dir=tmp_path / "out", fp16=True)
    with pytest.raises(OutputError, match=r"not enough space for the tiny export .* MiB needed, 1 MiB free"):
        export_model(cfg, progress=False)
    assert not (tmp_path / "out").exists()


def test_full_disk_while_writing_is_one_line_and_leaves_nothing(export_data, tmp_path, monkeypatch):
    def full(_proto, f, *_a, **_k):
        open(f, "wb").write(b"partial")  # noqa: SIM115 - a partial write, then the failure
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(onnx, "save", full)
    out = tmp_path / "out"
    cfg = ExportConfig(checkpoint=export_data["checkpoint"], out_dir=out, parity_tiles=2, slim=False)
    with pytest.raises(OutputError, match="No space left on device; free some space") as info:
        export_model(cfg, progress=False)
    assert "\n" not in str(info.value)
    assert not out.exists()


def test_int8_scheme_defaults_to_u8s8_on_cpu_and_s8s8_for_tensorrt(tmp_path):
    from flair_deploy.exports.config import ExportConfig, Int8Scheme

    base = {"checkpoint": tmp_path / "m.ckpt", "out_dir": tmp_path, "int8": True, "calibration": [tmp_path]}
    assert ExportConfig(**base).resolved_int8_scheme is Int8Scheme.U8S8
    assert ExportConfig(**base, tensorrt=True).resolved_int8_scheme is Int8Scheme.S8S8
    assert ExportConfig(**base, int8_scheme="s8s8").resolved_int8_scheme is Int8Scheme.S8S8
    with pytest.raises(ValueError, match="TensorRT accepts only symmetric signed INT8"):
        ExportConfig(**base, tensorrt=True, int8_scheme="u8s8")


def test_export_says_why_its_files_are_not_for_deepness_and_names_the_flag(exported):
    # Fixed H/W but four outputs, logits first: Deepness would fail to load them (one class_names
    # entry for four outputs); every kept file gets its line, naming the variant --for would write.
    assert len(exported.qgis_notes) == len(exported.onnx) == 3
    for note, path in zip(exported.qgis_notes, exported.onnx.values(), strict=True):
        assert note.startswith(f"{path.name} is not for QGIS Deepness")
        assert "4 outputs" in note and "--for deepness" in note and f"{path.stem}.deepness.onnx" in note
    assert not exported.qgis_variants
