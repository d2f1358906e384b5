import pytest
import torch

from flair_deploy.checkpoints import PRESETS, load_checkpoint, read_state
from flair_deploy.description import class_preset
from flair_deploy.errors import CheckpointError
from flair_deploy.models import build_model


@pytest.fixture
def reference(tiny_description):
    model = build_model(tiny_description).eval()
    x = torch.rand(1, 5, 64, 64) * 255
    with torch.no_grad():
        y = model(x)
    return model, x, y


@pytest.mark.parametrize("prefix", ["model.seg_model.", "seg_model.", ""])
def test_ign_layouts_reproduce_logits_exactly(tmp_path, tiny_description, reference, prefix):
    model, x, y = reference
    sd = {prefix + k: v for k, v in model.net.state_dict().items()}
    path = tmp_path / "weights.pth"
    torch.save(sd, path)
    loaded = load_checkpoint(path, description=tiny_description)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), y)
    assert loaded.description.provenance.source_sha256 == loaded.sha256


def test_ign_lightning_ckpt_reads_active_classes_from_criterion(tmp_path, tiny_description, reference):
    model, x, y = reference
    sd = {"model.seg_model." + k: v for k, v in model.net.state_dict().items()}
    w = torch.ones(19)
    w[[12, 13, 17]] = 0
    sd["criterion.weight"] = w
    path = tmp_path / "ign.ckpt"
    torch.save({"state_dict": sd, "epoch": 1}, path)
    desc19 = tiny_description.model_copy(update={"classes": class_preset("flair19")})
    loaded = load_checkpoint(path, description=desc19)
    assert [c.code for c in loaded.description.classes if not c.active] == [13, 14, 18]
    with torch.no_grad():
        assert torch.equal(loaded.model(x), y)


def test_missing_and_unexpected_keys_are_listed(tmp_path, tiny_description, reference):
    model, _, _ = reference
    sd = dict(model.net.state_dict())
    sd.pop("encoder.conv1.weight")
    sd["encoder.extra.weight"] = torch.zeros(1)
    path = tmp_path / "w.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"missing 1 keys \['net.encoder.conv1.weight'\].*unexpected 1"):
        load_checkpoint(path, description=tiny_description)


def test_class_count_mismatch(tmp_path, tiny_description, reference):
    model, _, _ = reference
    path = tmp_path / "w.pth"
    torch.save(model.net.state_dict(), path)
    desc13 = tiny_description.model_copy(update={"classes": class_preset("flair13")})
    with pytest.raises(CheckpointError, match=r"class-count mismatch: .* 19 logits .* 13 classes"):
        load_checkpoint(path, description=desc13)


def test_corrupt_and_undescribed_files(tmp_path, reference):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(bad)
    model, _, _ = reference
    path = tmp_path / "w.pth"
    torch.save(model.net.state_dict(), path)
    with pytest.raises(CheckpointError, match="carries no model description; give --preset"):
        load_checkpoint(path)


def test_self_describing_checkpoint_refuses_a_preset_that_disagrees(tmp_path, tiny_description, reference):
    from flair_deploy.artifacts import save_checkpoint

    model, x, y = reference
    path = save_checkpoint(tmp_path / "m.ckpt", model, tiny_description)
    with pytest.raises(CheckpointError, match="describes itself and disagrees: --preset flair-inc"):
        load_checkpoint(path, preset="flair-inc-rgbie-15cl-resnet34-unet")
    loaded = load_checkpoint(path, description=tiny_description)  # the same description is accepted
    with torch.no_grad():
        assert torch.equal(loaded.model(x), y)


class Evil:
    """Stands for any non-tensor object a malicious checkpoint could smuggle in."""


def test_unsafe_pickles_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, path)
    with pytest.raises(CheckpointError, match="never arbitrary objects") as info:
        load_checkpoint(path)
    text = str(info.value)
    # One line that names the refused class and never advises the unsafe way out.
    assert "\n" not in text and "\x1b" not in text
    assert "weights_only" not in text
    assert f"pickled {Evil.__module__}.Evil, which is not a tensor" in text


def test_numpy_arrays_in_a_checkpoint_are_named_when_refused(tmp_path):
    import numpy as np

    path = tmp_path / "np.ckpt"
    torch.save({"state_dict": {"w": np.zeros(3)}}, path)
    with pytest.raises(CheckpointError, match=r"refusing to load checkpoint .*pickled numpy\.") as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value) and "weights_only" not in str(info.value)


@pytest.mark.parametrize(
    ("content", "what"),
    [
        (b"not a checkpoint", "not a PyTorch file"),
        (b"", "empty or truncated"),
        ("half", "failed reading zip archive"),
    ],
)
def test_corrupt_checkpoints_are_one_line_without_unsafe_advice(tmp_path, content, what):
    import io

    if content == "half":
        buf = io.BytesIO()
        torch.save({"a": torch.zeros(8)}, buf)
        content = buf.getvalue()[: len(buf.getvalue()) // 2]
    path = tmp_path / "bad.ckpt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=f"cannot read checkpoint .*{what}") as info:
        read_state(path)
    text = str(info.value)
    assert "\n" not in text and "weights_only" not in text and "\x1b" not in text


@pytest.mark.parametrize("name", ["model.onnx", "model.fp16.engine"])
def test_other_artifact_kinds_are_not_read_as_checkpoints(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"\x08\x07")
    with pytest.raises(CheckpointError, match=r"is an (onnx|engine) file, not a checkpoint; .*\.safetensors"):
        read_state(path)


def test_corrupt_safetensors_is_one_line(tmp_path):
    pytest.importorskip("safetensors")
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match="cannot read safetensors file") as info:
        read_state(path)
    assert "\n" not in str(info.value)


def test_presets_cover_ign_inc_models():
    assert PRESETS["flair-inc-rgb-12cl-resnet34-unet"].in_channels == 3
    assert PRESETS["flair-inc-rgbie-15cl-resnet34-unet"].num_classes == 19


@pytest.mark.parametrize(("arch", "depth"), [("unet", 3), ("unetplusplus", 4), ("deeplabv3plus", 5)])
def test_shallow_and_other_architectures_build_at_input_resolution(tiny_description, arch, depth):
    from flair_deploy.description import ArchitectureSpec

    desc = tiny_description.model_copy(
        update={"architecture": ArchitectureSpec(arch=arch, encoder="resnet18", encoder_depth=depth)}
    )
    model = build_model(desc).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 5, 64, 64) * 255).shape == (1, 19, 64, 64)


def test_architecture_with_reduced_output_is_refused(tiny_description):
    from flair_deploy.description import ArchitectureSpec
    from flair_deploy.errors import ConfigError

    desc = tiny_description.model_copy(
        update={"architecture": ArchitectureSpec(arch="fpn", encoder="resnet18", encoder_depth=3)}
    )
    with pytest.raises(ConfigError, match="use encoder_depth=5"):
        build_model(desc)


# ------------------------------------------------------------------ IGN-trained HuggingFace checkpoints


def _ign_hf_checkpoint(tmp_path, monkeypatch, name, *, extra=None, drop=None):
    """An IGN-layout HF checkpoint: transformers-4 key names under model.seg_model., criterion.weight."""
    pytest.importorskip("transformers", reason="the hf extra (transformers) is not installed")
    from flair_deploy.description import ModelDescription
    from flair_deploy.hf_models import hf_architecture, legacy_state_dict
    from tests.hf_tiny import register_tiny

    register_tiny(monkeypatch)
    desc = ModelDescription(architecture=hf_architecture(name, source="test"), tile_size=64, overlap=16)
    model = build_model(desc).eval()
    sd = {"model.seg_model." + k: v for k, v in legacy_state_dict(model.net).items()}
    if "upernet" in name:  # IGN's UperNet carries HF's (never trained) auxiliary head
        sd["model.seg_model.auxiliary_head.classifier.weight"] = torch.zeros(19, 16, 1, 1)
    weights = torch.ones(19)
    weights[[14, 15, 16, 18]] = 0
    sd["criterion.weight"] = weights
    sd.update(extra or {})
    for key in drop or ():
        sd.pop(key)
    path = tmp_path / "ign-hf.ckpt"
    torch.save({"state_dict": sd, "epoch": 3}, path)
    return path, desc, model


@pytest.mark.parametrize("name", ["test/mit-tiny", "test/upernet-swin-tiny", "test/upernet-convnext-tiny"])
def test_ign_hf_checkpoint_loads_strictly_and_reproduces_logits(tmp_path, monkeypatch, name):
    path, desc, model = _ign_hf_checkpoint(tmp_path, monkeypatch, name)
    with torch.no_grad():
        ref = model(torch.full((1, 5, 64, 64), 100.0))
    loaded = load_checkpoint(path, description=desc)
    assert loaded.layout == "ign-lightning"
    assert [c.code for c in loaded.description.classes if not c.active] == [15, 16, 17, 19]
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(torch.full((1, 5, 64, 64), 100.0)), ref)


def test_ign_swin_checkpoint_drops_the_position_index_transformers_recomputes(tmp_path, monkeypatch):
    # transformers 4 saved Swin's relative_position_index; transformers 5 recomputes it and skips it on load.
    key = "model.seg_model.backbone.encoder.layers.0.blocks.0.attention.self.relative_position_index"
    path, desc, _ = _ign_hf_checkpoint(
        tmp_path, monkeypatch, "test/upernet-swin-tiny", extra={key: torch.zeros(49, dtype=torch.long)}
    )
    assert load_checkpoint(path, description=desc).layout == "ign-lightning"


def test_ign_hf_checkpoint_with_foreign_or_missing_keys_is_refused_naming_them(tmp_path, monkeypatch):
    extra = {"model.seg_model.decode_head.extra.weight": torch.zeros(1)}
    path, desc, _ = _ign_hf_checkpoint(tmp_path, monkeypatch, "test/mit-tiny", extra=extra)
    with pytest.raises(CheckpointError, match=r"unexpected 1 keys \['net.decode_head.extra.weight'\]"):
        load_checkpoint(path, description=desc)
    path, desc, _ = _ign_hf_checkpoint(
        tmp_path, monkeypatch, "test/mit-tiny", drop=["model.seg_model.decode_head.classifier.bias"]
    )
    with pytest.raises(CheckpointError, match=r"missing 1 keys \['net.decode_head.classifier.bias'\]"):
        load_checkpoint(path, description=desc)


def test_ign_hf_checkpoint_for_another_architecture_is_refused(tmp_path, monkeypatch):
    from flair_deploy.hf_models import hf_architecture

    path, desc, _ = _ign_hf_checkpoint(tmp_path, monkeypatch, "test/upernet-convnext-tiny")
    other = desc.model_copy(update={"architecture": hf_architecture("test/mit-tiny", source="t")})
    with pytest.raises(CheckpointError, match="do not match the described architecture"):
        load_checkpoint(path, description=other)


def test_hf_logit_count_is_read_from_the_decode_head(tmp_path, monkeypatch):
    path, desc, _ = _ign_hf_checkpoint(tmp_path, monkeypatch, "test/mit-tiny")
    fewer = desc.model_copy(update={"classes": class_preset("flair13")})
    with pytest.raises(CheckpointError, match="has 19 logits but the description gives 13 classes"):
        load_checkpoint(path, description=fewer)
