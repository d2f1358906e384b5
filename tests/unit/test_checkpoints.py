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
