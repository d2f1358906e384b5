"""``models.build_model``: the one place a network is built (raw bands in, logits at input resolution)."""

from __future__ import annotations

import pytest
import torch

from flair_deploy.description import ArchitectureSpec, MetadataSpec, ModelDescription, class_preset
from flair_deploy.errors import ConfigError
from flair_deploy.models import build_model


def _desc(**kw) -> ModelDescription:
    kw.setdefault("architecture", ArchitectureSpec(arch="unet", encoder="resnet18", encoder_depth=3))
    return ModelDescription(name="m", tile_size=32, overlap=8, classes=class_preset("flair15"), **kw)


@pytest.fixture(scope="module")
def model():
    return build_model(_desc()).eval()


def test_the_network_takes_raw_band_values_and_normalises_them_itself(model):
    desc = _desc()
    raw = torch.rand(2, desc.in_channels, 32, 32) * 255
    scale, offset = desc.normalization.affine(desc.in_channels)
    by_hand = raw * torch.tensor(scale).view(1, -1, 1, 1) + torch.tensor(offset).view(1, -1, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(raw), model.net(by_hand))
    # The statistics travel with the weights (buffers), so every runtime feeds the same raw values.
    assert {"normalize.scale", "normalize.offset"} <= set(model.state_dict())


@pytest.mark.parametrize(("h", "w"), [(32, 32), (48, 64)])
def test_logits_are_one_per_class_at_input_resolution(model, h, w):
    desc = _desc()
    with torch.no_grad():
        out = model(torch.zeros(1, desc.in_channels, h, w))
    assert tuple(out.shape) == (1, desc.num_classes, h, w)


def test_a_metadata_model_needs_its_vector_and_uses_it():
    desc = _desc(metadata=MetadataSpec(dim=4, fields=("a", "b", "c", "d")))
    model = build_model(desc).eval()
    assert model.uses_metadata
    x = torch.rand(1, desc.in_channels, 32, 32) * 255
    with pytest.raises(ValueError, match="metadata"):
        model(x)
    with torch.no_grad():
        a = model(x, torch.zeros(1, 4))
        b = model(x, torch.full((1, 4), 3.0))
    assert not torch.allclose(a, b)


def test_unknown_encoder_is_one_line():
    with pytest.raises(ConfigError, match="encoder='no-such-encoder'") as exc:
        build_model(_desc(architecture=ArchitectureSpec(encoder="no-such-encoder")))
    assert "\n" not in str(exc.value)
