"""Test doubles: inference backends whose output is a known function of their input.

Import them as ``from tests.fakes import EchoBackend, ContextBackend`` (pytest's ``pythonpath``
puts the repository root on ``sys.path``, so plain ``pytest`` and ``python -m pytest`` agree).

``EchoBackend`` lets tiling, stitching, writing and benchmarking code be tested exactly, with no
runtime and no network weights:

* logit ``k`` at a pixel is ``-|v - centre_k| / spacing`` where ``v`` is the pixel's band-0 value
  (plus ``metadata_weight * metadata.sum()`` of its tile, for metadata models), and the centres are
  evenly spaced over ``[0, value_range)``. The most probable class is therefore a step function of band 0:
  ``value_to_class(v)`` (restricted to active classes).
* The output at a pixel depends on that pixel only (no receptive field, no position): a tiled pass and a
  whole-image pass give identical logits, so stitching tests can compare exactly.
* Any tile height/width and batch size is accepted (unless ``max_batch``/``fixed_hw`` are set to
  emulate a static engine).

``ContextBackend`` is its opposite: the output at a pixel depends on the pixel's neighbourhood (a
box filter, edge-replicated at the tile border) and on its position inside the tile (a ramp), so two
overlapping tiles disagree on the pixels they share. A tiled pass differs from a whole-image pass
exactly where tiling matters: wrong blend weights, a missing ramp or an off-by-one in keep intervals
show up as seams.

Example::

    with EchoBackend(tiny_description) as backend:
        classes, conf = backend.predict_classes(tiles)
"""

from __future__ import annotations

import time

import numpy as np
import numpy.typing as npt

from flair_deploy.description import ModelDescription, Precision
from flair_deploy.inference.backends.base import (
    Backend,
    BackendName,
    Batch,
    Logits,
    MetadataBatch,
    StageTimes,
)

__all__ = ["BackendFactory", "ContextBackend", "CrashOnceBackend", "EchoBackend", "context_logits"]


class EchoBackend(Backend):
    """Deterministic, position-independent backend (see the module docstring).

    Args:
        description: Model description (bands, classes, metadata spec).
        value_range: Band-0 values are mapped onto classes over ``[0, value_range)``.
        metadata_weight: How much the sum of a tile's metadata vector shifts its band-0 value.
        max_batch: Emulate a backend with a batch limit.
        fixed_hw: Emulate a static-shape backend accepting only this ``(H, W)``.
        delay: Seconds to sleep per call (emulates compute time for pipeline tests).
    """

    name = BackendName.TORCH  # a stand-in: reports itself as the reference backend

    def __init__(
        self,
        description: ModelDescription,
        *,
        value_range: float = 256.0,
        metadata_weight: float = 0.0,
        max_batch: int | None = None,
        fixed_hw: tuple[int, int] | None = None,
        delay: float = 0.0,
    ) -> None:
        super().__init__(description, precision=Precision.FP32, device="cpu")
        k = description.num_classes
        self.spacing = value_range / k
        self.centres = (np.arange(k, dtype=np.float32) + 0.5) * np.float32(self.spacing)
        self.metadata_weight = metadata_weight
        self.max_batch = max_batch
        self.hw_multiple = 1
        if fixed_hw is not None:
            self.supports_dynamic_hw = False
            self.fixed_hw = fixed_hw
        self.delay = delay
        #: Shapes of every batch run, in order (for batching tests).
        self.calls: list[tuple[int, ...]] = []
        self.activations = 0

    def _activate(self) -> None:
        self.activations += 1

    def _infer(self, images: Batch, metadata: MetadataBatch | None) -> Logits:
        start = time.perf_counter()
        self.calls.append(images.shape)
        v = images[:, 0].astype(np.float32)
        if metadata is not None and self.metadata_weight:
            v = v + np.float32(self.metadata_weight) * metadata.sum(axis=1, dtype=np.float32)[:, None, None]
        logits = -np.abs(v[:, None] - self.centres[None, :, None, None]) / np.float32(self.spacing)
        if self.delay:
            time.sleep(self.delay)
        self.last_times = StageTimes(compute=time.perf_counter() - start)
        return logits.astype(np.float32, copy=False)

    def value_to_class(self, values: npt.ArrayLike) -> npt.NDArray[np.uint8]:
        """Return the logit index ``predict_classes`` gives for band-0 *values* (active classes only)."""
        v = np.asarray(values, dtype=np.float32)
        active = np.flatnonzero(self._active_mask)
        dist = np.abs(v[..., None] - self.centres[active])
        out: npt.NDArray[np.uint8] = active[dist.argmin(axis=-1)].astype(np.uint8)
        return out

    def class_value(self, index: int) -> float:
        """Return a band-0 value that ``predict_classes`` maps to logit *index*."""
        return float(self.centres[index])


def context_logits(
    images: npt.NDArray[np.float32], num_classes: int, *, box: int = 5, ramp: float = 40.0
) -> npt.NDArray[np.float32]:
    """Return ``(N, K, H, W)`` logits that depend on the neighbourhood and on the position in the tile.

    ``s = box-filtered band 0 (edge-replicated) + ramp × (y + x) / (H + W)`` with ``y, x`` the pixel's
    position in the tile; logit ``k`` is ``-|s - centre_k| / 7`` with centres evenly spaced over
    ``[0, 300)``. The same raster pixel therefore gets different logits from different tiles.
    """
    h, w = images.shape[2:]
    v = images[:, 0].astype(np.float32)
    r = box // 2
    p = np.pad(v, ((0, 0), (r, r), (r, r)), mode="edge")
    s = sum(p[:, i : i + h, j : j + w] for i in range(box) for j in range(box)) / float(box * box)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    s = s + np.float32(ramp) * (yy + xx) / np.float32(h + w)
    centres = (np.arange(num_classes, dtype=np.float32) + 0.5) * np.float32(300.0 / num_classes)
    logits = -np.abs(s[:, None] - centres[None, :, None, None]) / np.float32(7.0)
    return logits.astype(np.float32)


class ContextBackend(Backend):
    """Deterministic backend whose output depends on context and tile position (see the module docstring).

    Args:
        description: Model description (bands, classes).
        fail_on_call: Raise ``RuntimeError("simulated backend crash")`` from this call on (1-based).
        delay: Seconds to sleep per call.
    """

    name = BackendName.TORCH

    def __init__(
        self, description: ModelDescription, *, fail_on_call: int | None = None, delay: float = 0.0
    ) -> None:
        super().__init__(description, precision=Precision.FP32, device="cpu")
        self.hw_multiple = 1
        self.fail_on_call = fail_on_call
        self.delay = delay
        #: Number of ``_infer`` calls so far.
        self.calls = 0
        #: Every batch run, in order (copies of the raw input).
        self.batches: list[npt.NDArray[np.float32]] = []

    def _activate(self) -> None:
        pass

    def _infer(self, images: Batch, metadata: MetadataBatch | None) -> Logits:
        self.calls += 1
        if self.fail_on_call is not None and self.calls >= self.fail_on_call:
            raise RuntimeError("simulated backend crash")
        self.batches.append(np.array(images, dtype=np.float32))
        if self.delay:
            time.sleep(self.delay)
        self.last_times = StageTimes(compute=0.0)
        return context_logits(images, self.description.num_classes)


class CrashOnceBackend(ContextBackend):
    """A :class:`ContextBackend` whose process dies (``os._exit``) on its first call, once per marker file.

    Stands in for a worker killed mid-chunk (OOM killer, lost node): the first process to run a batch
    creates *marker* and exits at once; every later one (a restarted or another worker) runs normally.
    """

    def __init__(self, description: ModelDescription, marker: str) -> None:
        super().__init__(description)
        self.marker = marker

    def _infer(self, images: Batch, metadata: MetadataBatch | None) -> Logits:
        import os

        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return super()._infer(images, metadata)
        os.close(fd)
        os._exit(1)


class BackendFactory:
    """A picklable recipe for a fake backend, built inside each (Ray) worker."""

    def __init__(self, cls: type[Backend], description: ModelDescription, **kwargs: object) -> None:
        self.cls, self.description, self.kwargs = cls, description, kwargs

    def __call__(self) -> Backend:
        return self.cls(self.description, **self.kwargs)  # type: ignore[call-arg]
