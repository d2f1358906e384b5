"""The null backend: no network, ready logits on the device. What the host side can sustain at best.

``benchmark --backend null`` maps a raster through detect's whole pipeline (reads, batching, upload,
stitching on the backend's device, copies back, compression, overviews) with a backend whose
:meth:`~flair_deploy.inference.backends.base.Backend.run` costs nothing: it returns a preallocated logits
batch that is already on its device. The throughput measured is the host-side ceiling: no GPU, however
fast, can make detect go faster on this machine. On a CPU "device" the stitching is host work too, and
the benchmark reports it as its own stage.

The logits are a fixed pseudo-random field (seeded), so argmax and blending do real work; the maps it
writes mean nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

import numpy as np

from flair_deploy.artifacts import Describer
from flair_deploy.description import ModelDescription, Precision
from flair_deploy.errors import BackendError
from flair_deploy.inference.backends.base import (
    Backend,
    BackendName,
    Batch,
    Logits,
    MetadataBatch,
    check_options,
    parse_device,
)
from flair_deploy.inference.device import HOST, TorchDevice

__all__ = ["NullBackend"]


class NullBackend(Backend):
    """Return ready logits without computing anything (see the module docstring).

    Args:
        description: The description of the model whose outputs are imitated (classes, bands, tile).
        device: ``"cpu"`` (numpy logits) or ``"cuda[:i]"`` (torch CUDA logits; needs torch with CUDA).
        precision: Reported precision (nothing is computed).
    """

    name = BackendName.NULL

    def __init__(
        self, description: ModelDescription, *, device: str = "cpu", precision: Precision = Precision.FP32
    ) -> None:
        kind, index = parse_device(device)
        super().__init__(
            description, precision=precision, device=f"cuda:{index}" if kind == "cuda" else "cpu"
        )
        self._cache: dict[tuple[int, int], Any] = {}

    @classmethod
    def from_artifact(
        cls,
        artifact: Path,
        *,
        device: str = "cpu",
        precision: Precision | None = None,
        options: Mapping[str, Any] | None = None,
        preset: Describer | None = None,
    ) -> Self:
        """Imitate the model of any artifact kind (its description is read, its weights are not).

        Raises:
            BackendError: For options (the null backend takes none).
            ModelDescriptionError: If the artifact carries no description and no preset is given.
        """
        from flair_deploy.artifacts import read_description

        check_options("null", options, ())
        description = read_description(artifact, preset=preset)
        return cls(description, device=device, precision=precision or description.provenance.precision)

    def _activate(self) -> None:
        if self.device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise BackendError(f"device {self.device} requested but torch sees no CUDA device")
            self.arrays = TorchDevice(self.device)

    def _deactivate(self) -> None:
        if isinstance(self.arrays, TorchDevice):
            self.arrays.close()
        self.arrays = HOST
        self._cache.clear()

    def _logits(self, n: int, h: int, w: int) -> Any:
        tile = self._cache.get((h, w))
        if tile is None:
            k = self.description.num_classes
            rng = np.random.default_rng(0)
            # Smooth-ish fields so classes form regions (as real maps do) rather than salt and pepper.
            coarse = rng.normal(0.0, 3.0, (1, k, h // 16 + 1, w // 16 + 1)).astype(np.float32)
            field = np.repeat(np.repeat(coarse, 16, axis=2), 16, axis=3)[:, :, :h, :w]
            tile = self._cache[(h, w)] = self.arrays.asarray(np.ascontiguousarray(field))
        # The same tile n times, as a read-only broadcast view: no per-batch cost at all.
        xp = self.arrays.xp
        return xp.broadcast_to(tile, (n, *tuple(tile.shape[1:])))

    def _run_device(self, images: Any, metadata: Any) -> Any:
        n, _, h, w = (int(v) for v in images.shape)
        return self._logits(n, h, w)

    def _infer(self, images: Batch, metadata: MetadataBatch | None) -> Logits:
        logits: Logits = np.asarray(self.arrays.download(self._run_device(images, metadata)).result())
        return logits
