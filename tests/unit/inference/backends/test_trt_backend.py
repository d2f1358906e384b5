"""TensorRT backend: what can be checked without TensorRT (sidecars, errors, profiles), and real runs."""

from __future__ import annotations

import json
import types
from pathlib import Path

import numpy as np
import pytest

from flair_deploy.artifacts import read_engine_description
from flair_deploy.description import MetadataSpec, Precision
from flair_deploy.errors import BackendError, InputSpecError, MissingDependencyError, ModelDescriptionError
from flair_deploy.inference.backends import create_backend
from flair_deploy.inference.backends.trt_backend import (
    TensorProfile,
    TrtBackend,
    read_engine_io,
)


@pytest.fixture
def engine(tmp_path, tiny_description) -> Path:
    path = tmp_path / "model.engine"
    path.write_bytes(b"not a real plan")
    tiny_description.with_provenance(precision="fp16").save_sidecar(tmp_path / "model.engine.json")
    return path


def test_sidecar_is_read_from_the_one_sidecar_name(tmp_path, tiny_description):
    (tmp_path / "a.plan").write_bytes(b"")
    tiny_description.save_sidecar(tmp_path / "a.plan.json")
    assert read_engine_description(tmp_path / "a.plan") == tiny_description
    assert create_backend(None, tmp_path / "a.plan", device="cuda").description == tiny_description


def test_a_json_beside_the_engine_under_another_name_is_not_its_sidecar(tmp_path, tiny_description):
    (tmp_path / "m.engine").write_bytes(b"")
    tiny_description.save_sidecar(tmp_path / "m.json")  # <stem>.json: not the sidecar rule
    with pytest.raises(ModelDescriptionError, match=r"looked for m\.engine\.json\)") as info:
        create_backend(None, tmp_path / "m.engine", device="cuda")
    assert "\n" not in str(info.value)


def test_invalid_sidecar_is_one_line(tmp_path):
    (tmp_path / "b.engine").write_bytes(b"")
    (tmp_path / "b.engine.json").write_text(json.dumps({"description": {"bands": []}}))
    with pytest.raises(ModelDescriptionError, match="invalid model description") as info:
        create_backend(None, tmp_path / "b.engine", device="cuda")
    assert "\n" not in str(info.value)


def test_engine_on_cpu_device_is_refused(engine):
    with pytest.raises(BackendError, match="CUDA GPUs only, got device 'cpu'; use --device cuda"):
        create_backend(None, engine)


def test_precision_comes_from_the_sidecar_and_must_match(engine):
    assert create_backend(None, engine, device="cuda").precision is Precision.FP16
    with pytest.raises(BackendError, match="built for fp16 but int8 was requested"):
        create_backend(None, engine, device="cuda", precision="int8")


def test_preset_and_unknown_options_are_refused(engine):
    # An engine describes itself (its sidecar): a preset that disagrees with it is one line.
    with pytest.raises(ModelDescriptionError, match="describes itself and disagrees: --preset"):
        create_backend(None, engine, device="cuda", preset="flair-inc-rgbie-15cl-resnet34-unet")
    with pytest.raises(BackendError, match=r"unknown tensorrt backend option\(s\) \['workspace'\]"):
        create_backend(None, engine, device="cuda", options={"workspace": 1})


def test_without_tensorrt_activation_names_the_extra(engine, monkeypatch):
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here")
    backend = create_backend(None, engine, device="cuda")
    with pytest.raises(MissingDependencyError, match=r"flair-deploy\[tensorrt\]"), backend:
        pass


# ---------------------------------------------------------------------- engine I/O via a fake engine
class FakeEngine:
    def __init__(self, tensors):
        self._t = tensors  # name -> (mode, dtype, (min, opt, max))

    @property
    def num_io_tensors(self):
        return len(self._t)

    def get_tensor_name(self, i):
        return list(self._t)[i]

    def get_tensor_mode(self, name):
        return self._t[name][0]

    def get_tensor_dtype(self, name):
        return self._t[name][1]

    def get_tensor_profile_shape(self, name, profile):
        assert profile == 0
        return self._t[name][2]


FAKE_TRT = types.SimpleNamespace(TensorIOMode=types.SimpleNamespace(INPUT="in", OUTPUT="out"))


def test_engine_io_is_read_and_checked_against_the_description(tiny_description):
    eng = FakeEngine(
        {
            "image": ("in", "float", ((1, 5, 64, 64), (4, 5, 64, 64), (8, 5, 64, 64))),
            "logits": ("out", "float", None),
        }
    )
    io = read_engine_io(eng, FAKE_TRT, tiny_description)
    assert io.image.max == (8, 5, 64, 64) and io.metadata is None and io.outputs == ("logits",)
    # The input dtype is recorded too, so the backend can cast on the device (FP16 or UINT8 inputs).
    assert io.input_dtypes == {"image": "float"} and io.output_dtypes == {"logits": "float"}
    io.image.check((3, 5, 64, 64))
    with pytest.raises(
        InputSpecError, match=r"outside the engine's profile \(1, 5, 64, 64\)\.\.\(8, 5, 64, 64\)"
    ):
        io.image.check((9, 5, 64, 64))


def test_engine_with_other_band_count_or_missing_metadata_is_refused(tiny_description):
    eng = FakeEngine(
        {
            "image": ("in", "float", ((1, 4, 64, 64),) * 3),
            "logits": ("out", "float", None),
        }
    )
    with pytest.raises(ModelDescriptionError, match="engine takes 4 bands but its sidecar describes 5"):
        read_engine_io(eng, FAKE_TRT, tiny_description)
    meta_desc = tiny_description.model_copy(update={"metadata": MetadataSpec(dim=6)})
    eng = FakeEngine({"image": ("in", "float", ((1, 5, 64, 64),) * 3), "logits": ("out", "float", None)})
    with pytest.raises(ModelDescriptionError, match="disagree on the metadata input"):
        read_engine_io(eng, FAKE_TRT, meta_desc)


def test_tensor_profile_rejects_wrong_rank():
    prof = TensorProfile("metadata", (1, 6), (4, 6), (8, 6))
    with pytest.raises(InputSpecError, match="metadata of shape"):
        prof.check((2, 6, 1))


# ---------------------------------------------------------------------- real TensorRT (GPU machines)
@pytest.mark.tensorrt
def test_real_engine_matches_torch(tmp_path, tiny_description):  # pragma: no cover - needs a GPU
    import tensorrt as trt

    from flair_deploy.exports.onnx import export_onnx
    from flair_deploy.inference.backends.torch_backend import TorchBackend
    from flair_deploy.models import build_model

    model = build_model(tiny_description).eval()
    onnx_path = tmp_path / "m.onnx"
    export_onnx(model, tiny_description, onnx_path, slim=False)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(onnx_path.read_bytes())
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("image", (1, 5, 64, 64), (2, 5, 64, 64), (4, 5, 64, 64))
    config.add_optimization_profile(profile)
    engine_path = tmp_path / "m.engine"
    engine_path.write_bytes(bytes(builder.build_serialized_network(network, config)))
    tiny_description.save_sidecar(tmp_path / "m.engine.json")
    tiles = np.random.default_rng(0).uniform(0, 255, (3, 5, 64, 64)).astype(np.float32)
    with (
        create_backend(None, engine_path, device="cuda") as b,
        TorchBackend.from_module(model, tiny_description) as ref,
    ):
        np.testing.assert_allclose(b.infer(tiles), ref.infer(tiles), atol=1e-2, rtol=1e-2)
        classes, _ = b.predict_classes(tiles)
        assert (classes == ref.predict_classes(tiles)[0]).mean() > 0.99
        with pytest.raises(InputSpecError, match="maximum batch 4"):
            b.infer(np.concatenate([tiles, tiles]))
    assert isinstance(b, TrtBackend)


def test_a_refused_tensorrt_setter_is_one_line_naming_the_tensor():
    from flair_deploy.errors import BackendError
    from flair_deploy.inference.backends.trt_backend import _checked

    _checked(True, "set_input_shape", "image", (4, 5, 64, 64))
    with pytest.raises(BackendError, match=r"refused set_input_shape\('image', \(9, 5, 64, 64\)\)") as info:
        _checked(False, "set_input_shape", "image", (9, 5, 64, 64))
    assert "\n" not in str(info.value)
