"""The only place a network is constructed: :func:`build_model` turns a description into a module.

:class:`FlairSegmenter` takes **raw band values** (float32, in the description's band order) and, for
metadata models, the encoded metadata vector; it normalises inside the network, so the checkpoint, the
ONNX graph and every runtime are fed the same way. Its state-dict keys are

* ``normalize.scale`` / ``normalize.offset`` (buffers rebuilt from the description),
* ``net.*`` (the SMP model: ``net.encoder.*``, ``net.decoder.*``, ``net.segmentation_head.*``; or the
  HuggingFace model of :mod:`flair_deploy.hf_models`: ``net.segformer.*`` or ``net.backbone.*``, and
  ``net.decode_head.*``, so IGN's ``model.seg_model.X`` is ``net.X``),
* ``metadata_mlp.*`` (metadata models only).

Metadata fusion: the MLP maps the vector to as many values as the deepest encoder feature map has
channels, and that vector is added to every position of the map (for SMP and HuggingFace models alike). Unlike IGN's
``repeat(1, 512, 1, 16)``, this works for any tile size that is a multiple of the output stride and
exports to ONNX with dynamic height and width.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from flair_deploy._compat import ensure_torchvision_importable
from flair_deploy._optional import require
from flair_deploy.description import ModelDescription
from flair_deploy.errors import ConfigError

__all__ = ["BandNormalization", "FlairSegmenter", "MetadataMLP", "build_model"]


class BandNormalization(nn.Module):
    """Per-band affine normalisation ``x * scale + offset`` with the values as buffers."""

    scale: Tensor
    offset: Tensor

    def __init__(self, scale: Sequence[float], offset: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("offset", torch.tensor(offset, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        """Normalise a ``(N, C, H, W)`` batch of raw band values."""
        return x * self.scale + self.offset


class MetadataMLP(nn.Module):
    """Map the encoded aerial-metadata vector to one value per channel of the deepest feature map."""

    def __init__(
        self, in_features: int, hidden: Sequence[int], out_features: int, dropout: float = 0.1
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, out_features))
        self.layers = nn.Sequential(*layers)

    def forward(self, metadata: Tensor) -> Tensor:
        """Return ``(N, out_features)`` from ``(N, in_features)``."""
        out: Tensor = self.layers(metadata)
        return out


class FlairSegmenter(nn.Module):
    """SMP or HuggingFace segmentation network with in-graph normalisation and optional metadata fusion."""

    net: Any  # an SMP or transformers module; their submodules are untyped

    def __init__(self, description: ModelDescription) -> None:
        super().__init__()
        ensure_torchvision_importable()
        arch = description.architecture
        self.provider = arch.provider
        if arch.provider == "huggingface":
            from flair_deploy import hf_models

            assert arch.hf_model is not None  # ArchitectureSpec's validator
            self.net = hf_models.build_hf_network(
                arch.hf_model, in_channels=description.in_channels, num_classes=description.num_classes
            )
            deepest = hf_models.deepest_channels(self.net)
        else:
            self.net = self._build_smp(description)
            deepest = int(self.net.encoder.out_channels[-1])
        scale, offset = description.normalization.affine(description.in_channels)
        self.normalize = BandNormalization(scale, offset)
        self.metadata_mlp: MetadataMLP | None = None
        if description.metadata is not None:
            self.metadata_mlp = MetadataMLP(description.metadata.dim, description.metadata.hidden, deepest)
        self.in_channels = description.in_channels
        self.num_classes = description.num_classes

    @staticmethod
    def _build_smp(description: ModelDescription) -> nn.Module:
        smp = require("segmentation_models_pytorch", purpose="building the network")
        arch = description.architecture
        kwargs: dict[str, object] = {"encoder_depth": arch.encoder_depth}
        if arch.decoder_channels is not None:
            kwargs["decoder_channels"] = list(arch.decoder_channels)
        else:
            default = _default_decoder_channels(smp, arch.arch)
            if default is not None and len(default) != arch.encoder_depth:
                # SMP's U-Net family defaults to five decoder blocks and refuses a shallower encoder
                # unless given one width per block: keep the default widths of the deepest blocks.
                kwargs["decoder_channels"] = list(default[: arch.encoder_depth])
        try:
            net: nn.Module = smp.create_model(
                arch.arch,
                encoder_name=arch.encoder,
                encoder_weights=None,  # never download: weights come from checkpoints or local files
                in_channels=description.in_channels,
                classes=description.num_classes,
                **kwargs,
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise ConfigError(
                f"cannot build SMP model arch={arch.arch!r} encoder={arch.encoder!r}: {exc}; "
                "see segmentation_models_pytorch's list of architectures and encoders"
            ) from None
        return net

    @property
    def uses_metadata(self) -> bool:
        """Whether the network takes a metadata vector as second input."""
        return self.metadata_mlp is not None

    def forward(self, image: Tensor, metadata: Tensor | None = None) -> Tensor:
        """Return logits ``(N, K, H, W)`` for raw band values ``(N, C, H, W)``.

        Args:
            image: Raw band values as float32.
            metadata: ``(N, D)`` encoded metadata; required exactly when the model uses metadata.
        """
        x = self.normalize(image)
        if self.metadata_mlp is not None and metadata is None:
            raise ValueError("this model fuses aerial metadata: pass a (N, D) metadata tensor")
        if self.provider == "huggingface":
            from flair_deploy.hf_models import hf_logits

            bias = None if self.metadata_mlp is None else self.metadata_mlp(metadata)
            return hf_logits(self.net, x, bias)
        if self.metadata_mlp is None:
            logits: Tensor = self.net(x)
            return logits
        features = list(self.net.encoder(x))
        bias = self.metadata_mlp(metadata)
        features[-1] = features[-1] + bias[:, :, None, None]
        decoded = self.net.decoder(features)
        out: Tensor = self.net.segmentation_head(decoded)
        return out


def _default_decoder_channels(smp: Any, arch: str) -> tuple[int, ...] | None:
    """Return the default ``decoder_channels`` of an SMP architecture, if it has that parameter."""
    cls = {name.lower(): obj for name, obj in vars(smp).items() if isinstance(obj, type)}.get(arch.lower())
    if cls is None:
        return None
    param = inspect.signature(cls).parameters.get("decoder_channels")
    if param is None or not isinstance(param.default, (list, tuple)):
        return None
    return tuple(int(c) for c in param.default)


def build_model(description: ModelDescription) -> FlairSegmenter:
    """Build an untrained network for *description* (no weight download, ever).

    Args:
        description: The model description.

    Returns:
        The network in training mode, on the CPU.

    Raises:
        ConfigError: If SMP does not know the architecture or encoder.
    """
    model = FlairSegmenter(description)
    _check_output_size(model, description)
    return model


def _check_output_size(model: FlairSegmenter, description: ModelDescription) -> None:
    """Refuse architectures whose logits are not at input resolution (e.g. SMP's FPN below depth 5).

    A probe at twice the output stride is cheap and catches every such combination before it could
    silently produce misaligned maps.
    """
    side = 2 * description.architecture.output_stride
    was_training = model.training
    model.eval()
    with torch.no_grad():
        image = torch.zeros(1, description.in_channels, side, side)
        meta = None if description.metadata is None else torch.zeros(1, description.metadata.dim)
        out = model(image, meta)
    model.train(was_training)
    if tuple(out.shape[-2:]) != (side, side):
        arch = description.architecture
        raise ConfigError(
            f"arch={arch.arch!r} with encoder_depth={arch.encoder_depth} returns {tuple(out.shape[-2:])} "
            f"logits for a {side}x{side} input; land-cover maps need input resolution: use encoder_depth=5 "
            "or another architecture"
        )
