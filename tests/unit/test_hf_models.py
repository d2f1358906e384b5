"""HuggingFace SegFormer/UperNet built offline: table, any band count, logits, metadata, descriptions."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers", reason="the hf extra (transformers) is not installed")

from flair_deploy import hf_models
from flair_deploy.aerial import aerial_spec
from flair_deploy.description import ArchitectureSpec, ModelDescription
from flair_deploy.errors import ConfigError, ModelDescriptionError
from flair_deploy.hf_models import HF_MODELS, hf_architecture
from flair_deploy.models import build_model
from tests.hf_tiny import TINY, register_tiny


@pytest.fixture(autouse=True)
def tiny_models(monkeypatch):
    register_tiny(monkeypatch)


def describe(name: str, *, bands: int = 5, tile: int = 64, metadata: bool = False) -> ModelDescription:
    from flair_deploy.description import Normalization, NormalizationKind

    return ModelDescription(
        bands=tuple(f"B{i}" for i in range(bands)),
        normalization=Normalization(kind=NormalizationKind.SCALE, max_value=255.0),
        architecture=hf_architecture(name, source="test"),
        tile_size=tile,
        overlap=tile // 4,
        metadata=aerial_spec() if metadata else None,
    )


def test_table_holds_the_released_variants_with_their_library_defaults():
    tf = pytest.importorskip("transformers")
    # The smallest released variant of each backbone is its transformers config's default.
    b0 = tf.SegformerConfig()
    assert HF_MODELS["nvidia/mit-b0"].params == {
        "depths": list(b0.depths),
        "hidden_sizes": list(b0.hidden_sizes),
        "decoder_hidden_size": b0.decoder_hidden_size,
    }
    swin = tf.SwinConfig()
    assert HF_MODELS["openmmlab/upernet-swin-tiny"].params == {
        "embed_dim": swin.embed_dim,
        "depths": list(swin.depths),
        "num_heads": list(swin.num_heads),
        "window_size": swin.window_size,
    }
    convnext = tf.ConvNextConfig()
    assert HF_MODELS["openmmlab/upernet-convnext-tiny"].params == {
        "depths": list(convnext.depths),
        "hidden_sizes": list(convnext.hidden_sizes),
    }
    # IGN's default config names upernet-swin-small.
    assert hf_architecture("openmmlab/upernet-swin-small", source="t").encoder == "swin-small"


def test_unknown_org_model_is_one_line_listing_the_known_names():
    with pytest.raises(
        ConfigError, match=r"'nvidia/mit-b9'.*known: .*openmmlab/upernet-convnext-tiny"
    ) as err:
        hf_architecture("nvidia/mit-b9", source="cfg.yaml")
    assert "\n" not in str(err.value) and str(err.value).startswith("cfg.yaml:")


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"hf_model": "nvidia/mit-b0"}, "provider is 'smp'"),
        ({"provider": "huggingface"}, "needs hf_model"),
        ({"provider": "huggingface", "hf_model": "nvidia/mit-b7"}, "known:"),
        (
            {"provider": "huggingface", "hf_model": "nvidia/mit-b0", "arch": "upernet", "encoder": "mit-b0"},
            "match",
        ),
        (
            {"provider": "huggingface", "hf_model": "nvidia/mit-b0", "arch": "segformer", "encoder": "mit-b0"}
            | {"encoder_depth": 4},
            "SMP settings",
        ),
    ],
)
def test_inconsistent_architectures_are_refused(fields, match):
    with pytest.raises(ModelDescriptionError, match=match):
        ModelDescription.from_dict({"architecture": fields})


def test_smp_descriptions_serialise_as_before_and_load_as_smp():
    # No provider/hf_model keys for SMP models: earlier versions (extra keys forbidden) still read them.
    old = ModelDescription().to_dict()
    assert set(old["architecture"]) == {"arch", "encoder", "encoder_depth", "decoder_channels"}
    arch = ModelDescription.from_dict(old).architecture
    assert (arch.provider, arch.hf_model, arch.output_stride) == ("smp", None, 32)


def test_tile_size_must_be_a_multiple_of_32():
    spec = hf_architecture("test/mit-tiny", source="t").model_dump()
    with pytest.raises(ModelDescriptionError, match="multiple of the network's output stride 32"):
        ModelDescription.from_dict({"architecture": spec, "tile_size": 48, "overlap": 8})


@pytest.mark.parametrize("name", list(TINY))
@pytest.mark.parametrize("bands", [3, 5, 7])
def test_any_band_count_gives_input_resolution_logits(name, bands):
    model = build_model(describe(name, bands=bands)).eval()
    with torch.no_grad():
        out = model(torch.rand(2, bands, 64, 96) * 255)
    assert out.shape == (2, 19, 64, 96)
    assert {"normalize.scale", "normalize.offset"} <= set(model.state_dict())
    assert any(k.startswith("net.decode_head.classifier.") for k in model.state_dict())
    assert not any("auxiliary_head" in k for k in model.state_dict())


@pytest.mark.parametrize("name", list(TINY))
def test_logits_are_the_hf_model_own_logits_resized(name):
    """Our forward (no auxiliary head) reproduces HF's forward, upsampled bilinearly to the input."""
    model = build_model(describe(name)).eval()
    x = torch.rand(1, 5, 64, 64) * 255
    with torch.no_grad():
        ours = model(x)
        theirs = model.net(model.normalize(x)).logits
    theirs = torch.nn.functional.interpolate(theirs, size=(64, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(ours, theirs)


def test_normalisation_is_inside_the_network():
    desc = describe("test/mit-tiny")
    model = build_model(desc).eval()
    x = torch.rand(1, 5, 64, 64) * 255
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf_models.hf_logits(model.net, x / 255.0))


@pytest.mark.parametrize("name", list(TINY))
def test_metadata_is_fused_on_the_deepest_feature_map(name):
    desc = describe(name, metadata=True)
    model = build_model(desc).eval()
    assert model.uses_metadata
    x = torch.rand(1, 5, 64, 64) * 255
    with torch.no_grad():
        a = model(x, torch.zeros(1, desc.metadata.dim))
        b = model(x, torch.ones(1, desc.metadata.dim))
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="metadata"):
        model(x)


def test_train_config_picks_the_hf_model(tmp_path):
    from flair_deploy.training.config import ModelSection

    section = ModelSection(provider="huggingface", hf_model="openmmlab/upernet-convnext-tiny", tile_size=64)
    arch = section.architecture()
    assert (arch.provider, arch.arch, arch.encoder) == ("huggingface", "upernet", "convnext-tiny")
    with pytest.raises(ValueError, match=r"model.arch are SMP settings"):
        ModelSection(provider="huggingface", hf_model="nvidia/mit-b0", arch="unet")
    with pytest.raises(ValueError, match="known:"):
        ModelSection(provider="huggingface", hf_model="nvidia/mit-b9")
    with pytest.raises(ValueError, match=r"needs model\.provider=huggingface"):
        ModelSection(hf_model="nvidia/mit-b0")


def test_arch_spec_round_trips_through_json():
    spec = hf_architecture("openmmlab/upernet-swin-tiny", source="t")
    desc = ModelDescription(architecture=spec)
    assert ModelDescription.from_json(desc.to_json()).architecture == spec
    assert isinstance(spec, ArchitectureSpec)
