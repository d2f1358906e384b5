"""HuggingFace segmentation networks, as IGN's ``model_provider: HuggingFace`` offers, built offline.

IGN builds these with ``AutoModelForSemanticSegmentation.from_pretrained(org_model, ...)``, which
downloads a config and weights from the hub at build time and ignores the band count (only 3-band
input works). Here an ``org_model`` name is looked up in :data:`HF_MODELS`, a table of the real
hyper-parameters of each variant (those of transformers' own conversion scripts for the released
checkpoints), and the network is built from a transformers config with no hub access:

* **any band count**: the backbone config's ``num_channels`` is the description's band count;
* **input-resolution logits**: SegFormer's head predicts at 1/4 resolution and UperNet's at 1/4 before
  HF's resize; :func:`hf_logits` resizes both bilinearly (``align_corners=False``, as HF's UperNet
  does), so the network returns ``(N, K, H, W)`` like every other model;
* **metadata**: the metadata MLP's vector is added to every position of the deepest backbone feature
  map (stage 4), as the SMP path does;
* **no auxiliary head**: IGN's UperNet carries HF's auxiliary FCN head, but IGN's loss reads only
  ``.logits`` (it never passes labels), so that head is never trained and never used for prediction.
  It is not built; :func:`import_hf_state_dict` drops its keys (``auxiliary_head.*``) by name, and
  reports them, when an IGN checkpoint is imported.

IGN's checkpoints were written by transformers 4, whose key names transformers 5 changed (e.g. SegFormer's
``encoder.block.0.0.attention.self.query`` became ``encoder.stages.0.blocks.0.attention.q_proj``).
:func:`import_hf_state_dict` applies transformers' own renaming table for the installed version, the
one ``from_pretrained`` applies, so both layouts load strictly.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from flair_deploy._compat import ensure_torchvision_importable
from flair_deploy._optional import require
from flair_deploy.errors import CheckpointError, ConfigError

if TYPE_CHECKING:  # torch stays out of module import: description.py reads the table in torch-free installs
    from torch import Tensor, nn

    from flair_deploy.description import ArchitectureSpec

__all__ = [
    "HF_FAMILIES",
    "HF_MODELS",
    "HF_OUTPUT_STRIDE",
    "HFVariant",
    "build_hf_network",
    "deepest_channels",
    "has_adaptive_pooling",
    "hf_architecture",
    "hf_logits",
    "hf_variant",
    "import_hf_state_dict",
    "known_hf_models",
    "legacy_state_dict",
    "onnx_exportable",
]

HFFamily = Literal["segformer", "upernet"]
HF_FAMILIES: tuple[str, ...] = ("segformer", "upernet")
#: Every variant in the table downsamples by 4 (patch embedding) then 2, 2, 2: input height and width
#: must be multiples of 32 for the stages to tile the input exactly.
HF_OUTPUT_STRIDE = 32
_STAGES = ["stage1", "stage2", "stage3", "stage4"]


@dataclass(frozen=True)
class HFVariant:
    """One ``org_model`` name: its family, backbone and the transformers config values that define it.

    Attributes:
        family: ``segformer`` or ``upernet``.
        encoder: Backbone name as the description records it (``mit-b0``, ``swin-tiny``, ``convnext-tiny``).
        backbone: ``mit`` (SegFormer's own encoder), ``swin`` or ``convnext``.
        params: Keyword arguments of the SegFormer config (``mit``) or of the backbone config.
        head: Keyword arguments of the UperNet config (UperNet only).
    """

    family: HFFamily
    encoder: str
    backbone: Literal["mit", "swin", "convnext"]
    params: Mapping[str, Any]
    head: Mapping[str, Any] = field(default_factory=dict)


def _mit(depths: tuple[int, ...], hidden: tuple[int, ...], decoder: int) -> dict[str, Any]:
    # Values of transformers' convert_segformer_original_to_pytorch.py for sizes b0-b5 (the other
    # hyper-parameters, heads (1, 2, 5, 8), reduction (8, 4, 2, 1), patches (7, 3, 3, 3), strides
    # (4, 2, 2, 2), are SegformerConfig's defaults for every size).
    return {"depths": list(depths), "hidden_sizes": list(hidden), "decoder_hidden_size": decoder}


def _swin(embed: int, depths: tuple[int, ...], heads: tuple[int, ...], window: int) -> dict[str, Any]:
    # transformers' convert_swin_upernet_to_pytorch.py (mmsegmentation's upernet_swin_* configs).
    return {"embed_dim": embed, "depths": list(depths), "num_heads": list(heads), "window_size": window}


def _convnext(depths: tuple[int, ...], hidden: tuple[int, ...]) -> dict[str, Any]:
    # transformers' convert_convnext_upernet_to_pytorch.py (mmsegmentation's upernet_convnext_* configs).
    return {"depths": list(depths), "hidden_sizes": list(hidden)}


_MIT = {
    "b0": _mit((2, 2, 2, 2), (32, 64, 160, 256), 256),
    "b1": _mit((2, 2, 2, 2), (64, 128, 320, 512), 256),
    "b2": _mit((3, 4, 6, 3), (64, 128, 320, 512), 768),
    "b3": _mit((3, 4, 18, 3), (64, 128, 320, 512), 768),
    "b4": _mit((3, 8, 27, 3), (64, 128, 320, 512), 768),
    "b5": _mit((3, 6, 40, 3), (64, 128, 320, 512), 768),
}
_SWIN = {
    "tiny": _swin(96, (2, 2, 6, 2), (3, 6, 12, 24), 7),
    "small": _swin(96, (2, 2, 18, 2), (3, 6, 12, 24), 7),
    "base": _swin(128, (2, 2, 18, 2), (4, 8, 16, 32), 12),
    "large": _swin(192, (2, 2, 18, 2), (6, 12, 24, 48), 12),
}
_CONVNEXT = {
    "tiny": _convnext((3, 3, 9, 3), (96, 192, 384, 768)),
    "small": _convnext((3, 3, 27, 3), (96, 192, 384, 768)),
    "base": _convnext((3, 3, 27, 3), (128, 256, 512, 1024)),
    "large": _convnext((3, 3, 27, 3), (192, 384, 768, 1536)),
    "xlarge": _convnext((3, 3, 27, 3), (256, 512, 1024, 2048)),
}

#: ``org_model`` name (as IGN's config writes it) → variant. Tests may add tiny entries.
HF_MODELS: dict[str, HFVariant] = {
    **{f"nvidia/mit-{s}": HFVariant("segformer", f"mit-{s}", "mit", p) for s, p in _MIT.items()},
    **{f"openmmlab/upernet-swin-{s}": HFVariant("upernet", f"swin-{s}", "swin", p) for s, p in _SWIN.items()},
    **{
        f"openmmlab/upernet-convnext-{s}": HFVariant("upernet", f"convnext-{s}", "convnext", p)
        for s, p in _CONVNEXT.items()
    },
}


def known_hf_models() -> tuple[str, ...]:
    """Return the ``org_model`` names that can be built, sorted."""
    return tuple(sorted(HF_MODELS))


def hf_variant(org_model: str, *, source: str) -> HFVariant:
    """Return the variant of *org_model*.

    Raises:
        ConfigError: For an unknown name; the message lists the known ones.
    """
    try:
        return HF_MODELS[org_model]
    except KeyError:
        raise ConfigError(
            f"{source}: HuggingFace model {org_model!r} is not one flair-deploy can build offline; "
            f"known: {', '.join(known_hf_models())}"
        ) from None


def hf_architecture(org_model: str, *, source: str) -> ArchitectureSpec:
    """Return the :class:`~flair_deploy.description.ArchitectureSpec` that rebuilds *org_model*.

    Args:
        org_model: IGN's ``model_framework.HuggingFace.org_model``, e.g. ``nvidia/mit-b0``.
        source: What asked for it, for the message.

    Raises:
        ConfigError: For an unknown name (the message lists the known ones).
    """
    from flair_deploy.description import ArchitectureSpec

    v = hf_variant(org_model, source=source)
    return ArchitectureSpec(provider="huggingface", hf_model=org_model, arch=v.family, encoder=v.encoder)


def _transformers() -> Any:
    ensure_torchvision_importable()  # transformers' image utilities import torchvision
    return require("transformers", purpose="building HuggingFace segmentation models")


def build_hf_network(org_model: str, *, in_channels: int, num_classes: int) -> nn.Module:
    """Build the untrained HF ``...ForSemanticSegmentation`` module of *org_model* (no download).

    Args:
        org_model: A name of :data:`HF_MODELS`.
        in_channels: Number of input bands (the backbone's ``num_channels``).
        num_classes: Number of logits.

    Raises:
        ConfigError: For an unknown name.
    """
    v = hf_variant(org_model, source="architecture.hf_model")
    tf = _transformers()
    labels = {"num_labels": num_classes}
    if v.family == "segformer":
        # reshape_last_stage=True: the last stage comes out as (N, C, h, w), which non-square tiles need
        # (with False the head guesses a square side); it changes no parameter.
        config = tf.SegformerConfig(num_channels=in_channels, reshape_last_stage=True, **v.params, **labels)
        return tf.SegformerForSemanticSegmentation(config)  # type: ignore[no-any-return]
    backbone_cls = tf.SwinConfig if v.backbone == "swin" else tf.ConvNextConfig
    backbone = backbone_cls(num_channels=in_channels, out_features=list(_STAGES), **v.params)
    config = tf.UperNetConfig(backbone_config=backbone, use_auxiliary_head=False, **v.head, **labels)
    return tf.UperNetForSemanticSegmentation(config)  # type: ignore[no-any-return]


def deepest_channels(net: nn.Module) -> int:
    """Return the channel count of the deepest feature map of an HF network (metadata fusion width)."""
    hf: Any = net  # transformers modules: their attributes are untyped
    if hf.config.model_type == "segformer":
        return int(hf.config.hidden_sizes[-1])
    return int(hf.backbone.channels[-1])


def hf_logits(net: nn.Module, x: Tensor, bias: Tensor | None = None) -> Tensor:
    """Run an HF network on normalised input and return input-resolution logits.

    The auxiliary head is never run (it is not built); *bias* ``(N, C)``, when given, is added to
    every position of the deepest feature map before the decode head.
    """
    hf: Any = net  # transformers modules: their attributes are untyped
    if hf.config.model_type == "segformer":
        features = list(hf.segformer(x, output_hidden_states=True).hidden_states)
    else:
        features = list(hf.backbone(x).feature_maps)
    if bias is not None:
        features[-1] = features[-1] + bias[:, :, None, None]
    from torch.nn.functional import interpolate

    logits: Tensor = hf.decode_head(features)
    return interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def import_hf_state_dict(net: nn.Module, sd: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Map an HF state dict written by any transformers version onto *net*'s key names.

    Keys are renamed with transformers' own conversion table for the installed version (what
    ``from_pretrained`` applies to older checkpoints); ``auxiliary_head.*`` keys are dropped (see the
    module docstring), and so are buffers that transformers 5 no longer saves but recomputes: checked
    against the recomputed value where the name still matches, else dropped by transformers' own
    ``_keys_to_ignore_on_load_unexpected`` list (Swin's ``relative_position_index``). Keys already in the current layout are unchanged; any
    other key is kept, so the caller's strict load reports it.

    Args:
        net: The HF module the weights are for (``FlairSegmenter.net``).
        sd: Its weights, keys relative to *net* (no ``net.`` prefix).

    Returns:
        The renamed state dict and the dropped keys.

    Raises:
        CheckpointError: If a key needs a tensor conversion (merge or split) rather than a rename.
    """
    conv = _conversion_api()
    renamings: list[Any] = []
    converters: list[Any] = []
    if conv is not None:
        mapping_fn, renaming_cls, _ = conv
        for t in mapping_fn(net):
            (renamings if isinstance(t, renaming_cls) else converters).append(t)
    import torch

    expected = net.state_dict()
    derived = {k: b for k, b in net.named_buffers() if k not in expected}
    ignorable = _ignored_on_load(net)
    out: dict[str, Tensor] = {}
    dropped: list[str] = []
    for key, value in sd.items():
        if key.startswith("auxiliary_head."):
            dropped.append(key)
            continue
        new = key
        if conv is not None:
            new, converter = conv[2](key, renamings, converters)
            if converter is not None:
                raise CheckpointError(
                    f"HF checkpoint key {key!r} needs a tensor conversion ({converter}) that flair-deploy "
                    "does not apply; re-save the model with the installed transformers version"
                )
        if new not in expected and new in derived:
            # A buffer transformers 4 saved and transformers 5 recomputes (Swin's relative position
            # index): dropped, but only when it is the value the network derives itself.
            if tuple(value.shape) != tuple(derived[new].shape) or not torch.equal(value, derived[new]):
                raise CheckpointError(
                    f"HF checkpoint buffer {key!r} differs from the one the described architecture "
                    "computes; check architecture.hf_model (window size, depths)"
                )
            dropped.append(key)
            continue
        if new not in expected and any(p.search(new) for p in ignorable):
            # Keys transformers itself skips on load for this architecture (same list from_pretrained uses).
            dropped.append(key)
            continue
        out[new] = value
    return out, dropped


def _ignored_on_load(net: nn.Module) -> list[re.Pattern[str]]:
    """The ``_keys_to_ignore_on_load_unexpected`` patterns of *net*'s transformers sub-models."""
    patterns: dict[str, re.Pattern[str]] = {}
    for module in net.modules():
        for pattern in getattr(type(module), "_keys_to_ignore_on_load_unexpected", None) or ():
            patterns.setdefault(pattern, re.compile(pattern))
    return list(patterns.values())


def _conversion_api() -> tuple[Any, type, Any] | None:
    """Return transformers' renaming table and its applier (transformers >= 5), or None (older: no renames)."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightRenaming, rename_source_key
    except ImportError:
        return None
    return get_model_conversion_mapping, WeightRenaming, rename_source_key


def legacy_state_dict(net: nn.Module) -> dict[str, Tensor]:
    """Return *net*'s weights under the key names transformers 4 wrote (IGN's checkpoints' layout).

    This is transformers' own save-time reversal of its renaming table (what ``save_pretrained``
    writes); the tests use it to build IGN-layout checkpoints.
    """
    sd = {k: v.detach().clone() for k, v in net.state_dict().items()}
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # transformers 4: its layout is the current one
        return sd
    hf: Any = net
    return dict(revert_weight_conversion(hf, sd))


def _exact_adaptive_avg_pool(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Adaptive average pooling written as fixed slices: PyTorch's own bins, exportable to ONNX.

    The torchscript ONNX exporter refuses ``adaptive_avg_pool2d`` unless the output divides the
    input, which UperNet's pyramid pooling (scales 1, 2, 3, 6 of a 1/32 map) rarely satisfies. The
    bins are those of PyTorch (start ``floor(i*H/n)``, end ``ceil((i+1)*H/n)``), so the values are
    identical; the slice bounds are fixed when traced, hence static-H/W exports only.
    """
    import torch

    height, width = int(x.shape[-2]), int(x.shape[-1])
    rows = []
    for i in range(size[0]):
        top, bottom = (i * height) // size[0], -((-(i + 1) * height) // size[0])
        cols = []
        for j in range(size[1]):
            left, right = (j * width) // size[1], -((-(j + 1) * width) // size[1])
            cols.append(x[..., top:bottom, left:right].mean(dim=(-2, -1), keepdim=True))
        rows.append(torch.cat(cols, dim=-1))
    return torch.cat(rows, dim=-2)


def has_adaptive_pooling(net: nn.Module) -> bool:
    """Whether *net* pools adaptively (UperNet's pyramid pooling): its ONNX export needs fixed H/W."""
    from torch import nn

    return any(isinstance(m, nn.AdaptiveAvgPool2d) for m in net.modules())


@contextmanager
def onnx_exportable(net: nn.Module) -> Iterator[None]:
    """Within the block, *net*'s adaptive average pools run as :func:`_exact_adaptive_avg_pool`."""
    from torch import nn

    pools = [m for m in net.modules() if isinstance(m, nn.AdaptiveAvgPool2d)]
    for m in pools:
        out: Any = m.output_size  # UperNet's pools are given an int scale; a pair is handled too
        size = (int(out), int(out)) if isinstance(out, int) else (int(out[0]), int(out[1]))
        m.forward = functools.partial(_exact_adaptive_avg_pool, size=size)  # type: ignore[method-assign]
    try:
        yield
    finally:
        for m in pools:
            del m.forward  # the instance attribute goes: the class's forward is back
