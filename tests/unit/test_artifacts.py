"""`flair_deploy.artifacts`: one suffix table, one sidecar rule, one preset rule, every kind round trips."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from flair_deploy.artifacts import (
    DEEPNESS_KEYS,
    PRESETS,
    SUFFIXES,
    ArtifactKind,
    artifact_kind,
    kind_suffixes,
    read_description,
    read_onnx_props,
    resolve_description,
    save_checkpoint,
    save_sidecar,
    sidecar_path,
    stamp_onnx_description,
)
from flair_deploy.checkpoints import load_checkpoint, read_state
from flair_deploy.description import ONNX_KEY, MetadataSpec, ModelDescription
from flair_deploy.errors import CheckpointError, ModelDescriptionError
from flair_deploy.models import build_model

onnx = pytest.importorskip("onnx")
PRESET = "flair-inc-rgbie-15cl-resnet34-unet"


def _one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(exc.value)
    assert "\n" not in text and text
    return text


def write_onnx(path: Path, description: ModelDescription | None, extra: dict[str, str] | None = None) -> Path:
    """A valid one-node ONNX graph (image → logits), stamped with *description* (if any)."""
    from onnx import TensorProto, helper

    c = description.in_channels if description else 5
    graph = helper.make_graph(
        [helper.make_node("Identity", ["image"], ["logits"])],
        "g",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", c, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", c, 8, 8])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    for key, value in (extra or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    if description is not None:
        stamp_onnx_description(proto, description)
    onnx.save(proto, str(path))
    return path


# ---------------------------------------------------------------------- the suffix table
@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("m.ckpt", "checkpoint"),
        ("m.pth", "checkpoint"),
        ("m.PT", "checkpoint"),
        ("m.safetensors", "checkpoint"),
        ("m.fp16.onnx", "onnx"),
        ("m.engine", "engine"),
        ("m.plan", "engine"),
        ("m.TRT", "engine"),
    ],
)
def test_suffix_table(name, kind):
    assert artifact_kind(Path(name)) is ArtifactKind(kind)


def test_unknown_suffix_is_one_line_listing_every_known_suffix():
    with pytest.raises(ModelDescriptionError, match=r"unknown model file type '\.tif'") as info:
        artifact_kind(Path("ortho.tif"))
    text = _one_line(info)
    assert all(s in text for s in SUFFIXES)
    with pytest.raises(ModelDescriptionError, match="no suffix"):
        artifact_kind(Path("model"))


def test_backends_derive_their_suffixes_from_the_one_table():
    from flair_deploy.inference.backends import BACKEND_OF_KIND, BackendName, backend_for_artifact
    from flair_deploy.inference.backends import SUFFIXES as BACKEND_SUFFIXES

    assert set(BACKEND_SUFFIXES) == set(SUFFIXES)
    assert set(BACKEND_OF_KIND) == set(ArtifactKind)
    for suffix, kind in SUFFIXES.items():
        assert backend_for_artifact(Path("m" + suffix)) is BACKEND_OF_KIND[kind]
    assert kind_suffixes(ArtifactKind.ENGINE) == (".engine", ".plan", ".trt")
    assert backend_for_artifact(Path("m.trt")) is BackendName.TENSORRT


# ---------------------------------------------------------------------- ONNX
def test_onnx_round_trip_keeps_foreign_keys_and_replaces_stale_ones(tmp_path, tiny_description):
    stale = {"flair_deploy.old": "x", "tiles_size": "999", "producer.note": "kept"}
    path = write_onnx(tmp_path / "m.onnx", tiny_description, extra=stale)
    assert read_description(path) == tiny_description
    props = read_onnx_props(path)
    assert props["producer.note"] == "kept" and "flair_deploy.old" not in props
    assert json.loads(props["tile_size"]) == tiny_description.tile_size and "tiles_size" not in props
    assert set(DEEPNESS_KEYS) <= set(props)


def test_metadata_models_get_no_deepness_keys(tmp_path, tiny_description):
    desc = tiny_description.model_copy(update={"metadata": MetadataSpec(dim=3)})
    path = write_onnx(tmp_path / "m.onnx", tiny_description, extra={"model_type": '"Segmentor"'})
    proto = onnx.load(str(path))
    stamp_onnx_description(proto, desc)  # re-stamping as a metadata model drops the Deepness keys
    onnx.save(proto, str(path))
    assert read_description(path) == desc
    assert not set(DEEPNESS_KEYS) & set(read_onnx_props(path))


def test_onnx_description_reads_without_torch_or_onnx(tmp_path, tiny_description):
    """The torch-free runtime install: onnxruntime's model metadata is enough."""
    pytest.importorskip("onnxruntime")
    path = write_onnx(tmp_path / "m.onnx", tiny_description)
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07garbage")
    script = textwrap.dedent(
        f"""
        import sys
        for name in ("torch", "onnx"):
            sys.modules[name] = None  # any import of them fails
        from pathlib import Path
        from flair_deploy.artifacts import read_description
        from flair_deploy.errors import ModelDescriptionError
        try:
            read_description(Path({str(corrupt)!r}))
        except ModelDescriptionError as exc:
            assert "cannot read ONNX model" in str(exc) and "\\n" not in str(exc), str(exc)
        else:
            raise AssertionError("a corrupt ONNX file was read")
        print(read_description(Path({str(path)!r})).to_json())
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert ModelDescription.from_json(out.stdout) == tiny_description


def test_corrupt_onnx_is_one_line(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"\x08\x07garbage that is no protobuf \xff\xfe")
    with pytest.raises(ModelDescriptionError, match=r"cannot read ONNX model .*m\.onnx") as info:
        read_description(path)
    _one_line(info)


# ---------------------------------------------------------------------- engines
def test_sidecar_rule_and_round_trip(tmp_path, tiny_description):
    engine = tmp_path / "tiny.fp16.engine"
    engine.write_bytes(b"plan bytes")
    assert sidecar_path(engine) == tmp_path / "tiny.fp16.engine.json"
    desc = tiny_description.with_provenance(precision="fp16")
    assert save_sidecar(engine, desc) == sidecar_path(engine)
    assert read_description(engine) == desc
    assert engine.read_bytes() == b"plan bytes"  # the plan is never touched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.fp16.engine", "tiny.fp16.engine.json"]


def test_missing_or_corrupt_sidecar_is_one_line(tmp_path, tiny_description):
    engine = tmp_path / "m.plan"
    engine.write_bytes(b"")
    with pytest.raises(ModelDescriptionError, match=r"looked for m\.plan\.json") as info:
        read_description(engine)
    _one_line(info)
    sidecar_path(engine).write_text("{not json")
    with pytest.raises(ModelDescriptionError, match="invalid model description") as info:
        read_description(engine)
    _one_line(info)


def test_engines_refuse_a_preset_that_disagrees(tmp_path, tiny_description):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"")
    save_sidecar(engine, tiny_description)
    with pytest.raises(ModelDescriptionError, match=f"describes itself and disagrees: --preset {PRESET}"):
        read_description(engine, preset=PRESET)


# ---------------------------------------------------------------------- checkpoints
def test_save_checkpoint_writes_the_training_layout(tmp_path, tiny_description):
    torch.manual_seed(0)
    model = build_model(tiny_description).eval()
    path = save_checkpoint(tmp_path / "m.ckpt", model, tiny_description, extra={"epoch": 3})
    assert [p.name for p in tmp_path.iterdir()] == ["m.ckpt"]  # no temporary left behind
    state = torch.load(path, map_location="cpu", weights_only=True)  # plain types only
    assert state["epoch"] == 3
    assert state["hyper_parameters"]["description"] == tiny_description.to_dict()
    assert set(state["state_dict"]) == {f"model.{k}" for k in model.state_dict()}
    loaded = load_checkpoint(path)
    assert loaded.layout == "flair-deploy"
    x = torch.rand(1, 5, 64, 64) * 255
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))
    desc = read_description(path)
    assert desc.model_copy(update={"provenance": tiny_description.provenance}) == tiny_description
    assert desc.provenance.source == "m.ckpt" and desc.provenance.source_sha256 == loaded.sha256


def test_save_checkpoint_refuses_extra_that_replaces_the_layout(tmp_path, tiny_description):
    model = build_model(tiny_description)
    with pytest.raises(ValueError, match="state_dict"):
        save_checkpoint(tmp_path / "m.ckpt", model, tiny_description, extra={"state_dict": {}})
    assert not (tmp_path / "m.ckpt").exists()


def test_corrupt_checkpoint_is_one_line(tmp_path):
    path = tmp_path / "m.ckpt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint") as info:
        read_description(path)
    assert "weights_only" not in _one_line(info)


# ---------------------------------------------------------------------- the preset rule
def test_preset_rule(tiny_description):
    preset = PRESETS[PRESET]
    assert resolve_description(tiny_description, source="a") == tiny_description
    assert resolve_description(tiny_description, source="a", description=tiny_description) == tiny_description
    assert resolve_description(None, source="a", preset=PRESET) == preset
    assert resolve_description(None, source="a", description=tiny_description) == tiny_description
    # A self-describing artifact keeps its own; a preset that disagrees on what it sets names the field.
    with pytest.raises(ModelDescriptionError, match="a describes itself and disagrees") as info:
        resolve_description(tiny_description, source="a", preset=PRESET)
    assert "gives architecture unet/resnet34, the model has unet/resnet18" in _one_line(info)
    assert resolve_description(preset, source="a", preset=PRESET) == preset  # agreeing: kept
    with pytest.raises(CheckpointError, match="describes itself"):
        resolve_description(tiny_description, source="a", description=preset, error=CheckpointError)
    with pytest.raises(ModelDescriptionError, match="either a preset or a description, not both"):
        resolve_description(None, source="a", preset=PRESET, description=tiny_description)
    with pytest.raises(ModelDescriptionError, match="a carries no model description; give --preset") as info:
        resolve_description(None, source="a")
    assert PRESET in _one_line(info)
    with pytest.raises(CheckpointError, match="unknown preset 'nope'"):
        resolve_description(None, source="a", preset="nope")


def test_preset_rule_on_every_kind(tmp_path, tiny_description):
    described = write_onnx(tmp_path / "described.onnx", tiny_description)
    bare = write_onnx(tmp_path / "bare.onnx", None)
    assert read_description(bare, preset=PRESET) == PRESETS[PRESET]
    with pytest.raises(ModelDescriptionError, match=r"bare\.onnx carries no model description"):
        read_description(bare)
    with pytest.raises(ModelDescriptionError, match="describes itself"):
        read_description(described, preset=PRESET)
    ckpt = save_checkpoint(tmp_path / "m.ckpt", build_model(tiny_description), tiny_description)
    with pytest.raises(CheckpointError, match=r"m\.ckpt \(flair-deploy\) describes itself"):
        read_description(ckpt, preset=PRESET)
    assert ONNX_KEY not in read_onnx_props(bare)


def test_checkpoint_without_description_takes_a_preset(tmp_path):
    desc = PRESETS["flair-inc-rgb-12cl-resnet34-unet"]
    sd = {
        k.removeprefix("net."): v for k, v in build_model(desc).state_dict().items() if k.startswith("net.")
    }
    path = tmp_path / "ign_weights.pth"
    torch.save(sd, path)  # IGN's released layout: a bare SMP state dict (deliberately not save_checkpoint)
    got = read_description(path, preset="flair-inc-rgb-12cl-resnet34-unet")
    assert got.bands == ("R", "G", "B") and sum(got.active_mask) == 12
    assert "state_dict" not in read_state(path)


def test_missing_file_is_one_line(tmp_path):
    with pytest.raises(ModelDescriptionError, match="does not exist") as info:
        read_description(tmp_path / "missing.engine")
    _one_line(info)
