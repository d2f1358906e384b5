"""The one contract every inference runtime implements.

A :class:`Backend` runs a segmentation network on batches of tiles of *raw* band values (normalisation is
inside every artifact's graph). It is an ABC with template methods rather than a ``Protocol`` because
the lifecycle (resources exist only inside ``with backend:``), the input validation and the
post-processing are shared code. Two ways in:

* :meth:`Backend.run` is detect's: raw band values in the raster's own dtype (uint8 for 8-bit
  orthophotos) in, **logits on the backend's device** out (:attr:`Backend.arrays`, an
  :class:`~flair_deploy.inference.device.ArrayDevice`), possibly still being computed; the stitcher
  works on them there and only finished uint8 rows come back.
* :meth:`Backend.infer`, :meth:`~Backend.predict_probabilities` and :meth:`~Backend.predict_classes` are
  synchronous and return host arrays (evaluation, parity, benchmarks). Softmax and argmax run on the
  device, once, here, for every runtime (:mod:`flair_deploy.predictions`).

A host runtime implements ``_activate`` and ``_infer``; a device runtime also sets :attr:`arrays` when
activated and implements ``_run_device`` (inputs already on the device, raw dtype; cast there).

Class indices returned by :meth:`Backend.predict_classes` are *logit indices* (0-based positions in
``description.classes``), never FLAIR codes: mapping to codes is the writer's job.
"""

from __future__ import annotations

import abc
import os
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self

import numpy as np
import numpy.typing as npt

from flair_deploy.artifacts import Describer
from flair_deploy.description import ModelDescription, Precision
from flair_deploy.errors import BackendError, InputSpecError
from flair_deploy.inference.device import HOST, ArrayDevice
from flair_deploy.predictions import masked_classes, masked_softmax

__all__ = [
    "RAW_DTYPES",
    "Backend",
    "BackendName",
    "Batch",
    "Classes",
    "Confidence",
    "Logits",
    "MetadataBatch",
    "Probabilities",
    "RawBatch",
    "StageTimes",
    "check_options",
    "logits_output",
    "parse_device",
    "parse_precision",
    "physical_cores",
]

Batch = npt.NDArray[np.float32]
"""``(N, C, H, W)`` raw band values (not normalised: the graph does it)."""
RawBatch = npt.NDArray[Any]
"""``(N, C, H, W)`` raw band values in the raster's dtype: uint8, uint16, int16 or float32."""
#: Input dtypes :meth:`Backend.run` accepts (cast to the network's input type on its device).
RAW_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.int16), np.dtype(np.float32))
MetadataBatch = npt.NDArray[np.float32]
"""``(N, D)`` encoded aerial metadata, for models with a metadata input."""
Logits = npt.NDArray[np.float32]
"""``(N, K, H, W)`` one logit per class of the description, in its order."""
Probabilities = npt.NDArray[np.float32]
"""``(N, K, H, W)`` softmax over the active classes; 0 for inactive classes."""
Classes = npt.NDArray[np.uint8]
"""``(N, H, W)`` logit index of the most probable active class."""
Confidence = npt.NDArray[np.float32]
"""``(N, H, W)`` probability of the chosen class."""


class BackendName(StrEnum):
    """The inference runtimes flair-deploy knows (the ``--backend`` choices)."""

    TORCH = "torch"
    ONNXRUNTIME = "onnxruntime"
    TENSORRT = "tensorrt"
    #: No network: ready logits on the device, to measure the host side's ceiling.
    NULL = "null"


@dataclass(frozen=True, slots=True)
class StageTimes:
    """Wall-clock seconds spent in each stage of the last call, for the benchmark's breakdown.

    On asynchronous devices the stage boundaries are only exact when the backend synchronises at them
    (the torch backend's ``timing=True`` option); otherwise ``compute`` also absorbs queued work.

    Attributes:
        h2d: Host-to-device copy of the inputs (0 on CPU).
        compute: The network (and on-device softmax/argmax).
        d2h: Device-to-host copy of the results (0 on CPU).
    """

    h2d: float = 0.0
    compute: float = 0.0
    d2h: float = 0.0

    @property
    def total(self) -> float:
        """Sum of the three stages."""
        return self.h2d + self.compute + self.d2h


class Backend(abc.ABC):
    """Run a land-cover segmentation network on batches of tiles.

    Use it as a context manager: sessions, engines and device buffers exist only inside
    ``with backend:``. Every public call is synchronous: results are numpy arrays on the host when it
    returns.

    Attributes:
        name: Which runtime this is.
        description: What the artifact says about itself (bands, classes, normalisation...).
        precision: Numerical precision the network runs at.
        device: ``"cpu"`` or ``"cuda:<i>"``.
        last_times: Stage times of the last call.
        supports_dynamic_hw: Whether any tile height/width (multiple of the output stride) is accepted;
            when False only ``fixed_hw`` is.
        fixed_hw: The only accepted ``(H, W)`` when ``supports_dynamic_hw`` is False.
        hw_multiple: Tile height and width must be multiples of this (the network's output stride).
        max_batch: Largest accepted batch, or None for no limit.
        activation_seconds: Time the last ``__enter__`` took (session creation, engine load,
            compilation happens later, on the first call).
        arrays: Where :meth:`run`'s logits live (the host until activated).
        preferred_batch: The batch the runtime is tuned for (a TensorRT profile's opt batch), or None.
    """

    name: ClassVar[BackendName]

    def __init__(
        self,
        description: ModelDescription,
        *,
        precision: Precision = Precision.FP32,
        device: str = "cpu",
    ) -> None:
        if description.num_classes > 255:
            raise BackendError(
                f"model has {description.num_classes} classes but class maps are uint8 with 255 as "
                "nodata; use at most 255 classes"
            )
        self.description = description
        self.precision = precision
        self.device = device
        self.last_times = StageTimes()
        self.supports_dynamic_hw: bool = True
        self.fixed_hw: tuple[int, int] | None = None
        self.max_batch: int | None = None
        self.hw_multiple: int = description.architecture.output_stride
        self.activation_seconds: float = 0.0
        self.arrays: ArrayDevice = HOST
        self.preferred_batch: int | None = None
        self._active = False
        mask = np.asarray(description.active_mask, dtype=bool)
        self._active_mask: npt.NDArray[np.bool_] = mask
        self._active_index: npt.NDArray[np.intp] = np.flatnonzero(mask)

    # ------------------------------------------------------------------ construction
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
        """Create the backend for a model file (used by :func:`create_backend`).

        Args:
            artifact: The model file.
            device: ``"cpu"``, ``"cuda"`` or ``"cuda:<i>"``.
            precision: Requested precision, or None for the artifact's own.
            options: Backend-specific options; unknown keys are an error.
            preset: Description preset for artifacts that carry none.

        Raises:
            BackendError: If this backend cannot be created from files.
        """
        raise BackendError(f"the {cls.name} backend cannot be created from a file ({artifact})")

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> Self:
        if self._active:
            raise BackendError(f"{self.name} backend is already active; do not nest `with backend:`")
        start = time.perf_counter()
        self._activate()
        self.activation_seconds = time.perf_counter() - start
        self._active = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._active = False
        self._deactivate()

    @property
    def active(self) -> bool:
        """Whether the backend is inside ``with backend:`` (resources allocated)."""
        return self._active

    def summary(self) -> str:
        """Return a one-line description for logs and output tags, e.g. ``onnxruntime fp32 cpu``."""
        return f"{self.name} {self.precision} {self.device}"

    # ------------------------------------------------------------------ public calls
    def run(self, images: RawBatch, metadata: MetadataBatch | None = None) -> Any:
        """Return a batch's logits on the backend's device, possibly still being computed.

        Work is queued on :attr:`arrays`' stream: use the result inside ``with backend.arrays.stream():``
        (the stitcher does) or download it with ``backend.arrays.download``. Pass a buffer from
        ``backend.arrays.staging`` filled in place to upload without an extra copy (pinned on CUDA).

        Args:
            images: ``(N, C, H, W)`` raw band values (uint8, uint16, int16 or float32), in the
                description's band order; cast to the network's input type on the device.
            metadata: ``(N, D)`` float32 metadata vectors, for metadata models.

        Returns:
            ``(N, K, H, W)`` logits (float32, or float16 for FP16 graphs) in :attr:`arrays`' namespace.

        Raises:
            InputSpecError: If the batch does not match the model's input specification.
            BackendError: Outside ``with backend:`` or when the runtime fails.
        """
        images, metadata = self._validate(images, metadata, raw=True)
        dev = self.arrays
        with dev.stream():
            return self._upload_and_run(images, metadata)

    def infer(self, images: Batch, metadata: MetadataBatch | None = None) -> Logits:
        """Return the logits for a batch.

        Args:
            images: ``(N, C, H, W)`` float32 raw band values, in the description's band order.
            metadata: ``(N, D)`` float32 metadata vectors; required exactly when the description has a
                metadata spec.

        Returns:
            ``(N, K, H, W)`` float32 logits.

        Raises:
            InputSpecError: If the batch does not match the model's input specification.
            BackendError: Outside ``with backend:`` or when the runtime fails.
        """
        images, metadata = self._validate(images, metadata)
        return self._infer(images, metadata)

    def predict_probabilities(self, images: Batch, metadata: MetadataBatch | None = None) -> Probabilities:
        """Return class probabilities: a softmax over the *active* classes, 0 for inactive ones.

        Args:
            images: As for :meth:`infer`.
            metadata: As for :meth:`infer`.

        Returns:
            ``(N, K, H, W)`` float32 probabilities summing to 1 over the active classes.

        Raises:
            InputSpecError: If the batch does not match the model's input specification.
            BackendError: Outside ``with backend:`` or when the runtime fails.
        """
        images, metadata = self._validate(images, metadata)
        return self._predict_probabilities(images, metadata)

    def predict_classes(
        self, images: Batch, metadata: MetadataBatch | None = None
    ) -> tuple[Classes, Confidence]:
        """Return the most probable active class and its probability.

        Args:
            images: As for :meth:`infer`.
            metadata: As for :meth:`infer`.

        Returns:
            ``(N, H, W)`` uint8 logit indices (never an inactive class) and ``(N, H, W)`` float32
            probabilities of those classes.

        Raises:
            InputSpecError: If the batch does not match the model's input specification.
            BackendError: Outside ``with backend:`` or when the runtime fails.
        """
        images, metadata = self._validate(images, metadata)
        return self._predict_classes(images, metadata)

    # ------------------------------------------------------------------ hooks
    @abc.abstractmethod
    def _activate(self) -> None:
        """Load the model and allocate resources."""

    def _deactivate(self) -> None:  # noqa: B027  (optional hook: not every runtime holds resources)
        """Release resources; the default does nothing."""

    @abc.abstractmethod
    def _infer(self, images: Batch, metadata: MetadataBatch | None) -> Logits:
        """Run the network on an already-validated batch and fill :attr:`last_times`.

        Device runtimes implement it as ``return self._host_logits(images, metadata)``.
        """

    def _run_device(self, images: Any, metadata: Any) -> Any:
        """Logits on the device for inputs already there (raw dtype). Host runtimes: :meth:`_infer`."""
        x = images if images.dtype == np.float32 else images.astype(np.float32)
        return self._infer(x, metadata)

    def _upload_and_run(self, images: Any, metadata: Any) -> Any:
        """Upload a validated batch and queue the network on the device (inside ``arrays.stream()``)."""
        dev = self.arrays
        return self._run_device(dev.upload(images), None if metadata is None else dev.upload(metadata))

    def _host_logits(self, images: Batch, metadata: MetadataBatch | None) -> Logits:
        """:meth:`_run_device`'s logits copied back as float32 (``_infer`` of device runtimes)."""
        dev = self.arrays
        with dev.stream():
            logits = self._upload_and_run(images, metadata)
            xp = dev.xp
            out: Logits = np.asarray(dev.download(xp.astype(logits, xp.float32)).result(), dtype=np.float32)
        return out

    def _predict_probabilities(self, images: Batch, metadata: MetadataBatch | None) -> Probabilities:
        """Softmax over the active classes on the device; only the probabilities come back."""
        dev = self.arrays
        with dev.stream():
            logits = self._upload_and_run(images, metadata)
            probs: Probabilities = np.asarray(
                dev.download(masked_softmax(logits, self._active_mask)).result()
            )
        return probs

    def _predict_classes(self, images: Batch, metadata: MetadataBatch | None) -> tuple[Classes, Confidence]:
        """Masked argmax and confidence on the device; only a uint8 map and a float32 plane come back."""
        dev = self.arrays
        with dev.stream():
            logits = self._upload_and_run(images, metadata)
            classes, confidence = masked_classes(logits, self._active_mask)
            c, p = dev.download(classes), dev.download(confidence)
            return np.asarray(c.result()), np.asarray(p.result())

    # ------------------------------------------------------------------ validation
    def _validate(
        self, images: Any, metadata: Any, *, raw: bool = False
    ) -> tuple[Batch, MetadataBatch | None]:
        """Check a batch once against the description; raise one-line InputSpecErrors.

        With *raw*, the raster dtypes of :data:`RAW_DTYPES` are accepted (:meth:`run`); otherwise float32.
        """
        if not self._active:
            raise BackendError(f"the {self.name} backend is not active; run inference inside `with backend:`")
        d = self.description
        c = d.in_channels
        if not isinstance(images, np.ndarray):
            raise InputSpecError(
                f"images must be a numpy array, got {type(images).__name__}; pass np.ndarray (N, {c}, H, W) "
                "float32"
            )
        if raw and images.dtype not in RAW_DTYPES:
            raise InputSpecError(
                f"images have dtype {images.dtype}, expected raw band values as uint8, uint16, int16 or "
                "float32; convert with .astype(np.float32) (normalisation happens inside the model)"
            )
        if not raw and images.dtype != np.float32:
            raise InputSpecError(
                f"images have dtype {images.dtype}, expected float32 raw band values; convert with "
                ".astype(np.float32) (normalisation happens inside the model)"
            )
        if images.ndim != 4 or images.shape[1] != c or images.shape[0] < 1:
            raise InputSpecError(
                f"images have shape {images.shape}, expected (N>=1, {c}, H, W) with bands "
                f"{list(d.bands)}; select and order the raster bands to match"
            )
        n, _, h, w = images.shape
        if self.max_batch is not None and n > self.max_batch:
            raise InputSpecError(
                f"batch of {n} tiles exceeds this {self.name} model's maximum batch {self.max_batch}; "
                f"use a batch size <= {self.max_batch} or rebuild it with a larger profile"
            )
        if not self.supports_dynamic_hw and self.fixed_hw is not None and (h, w) != self.fixed_hw:
            fh, fw = self.fixed_hw
            raise InputSpecError(
                f"tiles of {h}x{w} px given to a {self.name} model built for {fh}x{fw} px only; "
                f"use --tile {fh} or re-export with dynamic shapes"
            )
        stride = self.hw_multiple
        if h % stride or w % stride:
            raise InputSpecError(
                f"tiles of {h}x{w} px are not multiples of the network's output stride {stride}; "
                f"use tile sizes like {max(stride, h // stride * stride)}"
            )
        if d.metadata is None:
            if metadata is not None:
                raise InputSpecError(
                    f"metadata given to model {d.name!r}, which takes no metadata input; pass metadata=None"
                )
        else:
            dim = d.metadata.dim
            if metadata is None:
                raise InputSpecError(
                    f"model {d.name!r} needs a ({n}, {dim}) float32 metadata batch "
                    f"({d.metadata.encoding}) but none was given; pass metadata= alongside the images"
                )
            if not isinstance(metadata, np.ndarray) or metadata.dtype != np.float32:
                got = metadata.dtype if isinstance(metadata, np.ndarray) else type(metadata).__name__
                raise InputSpecError(f"metadata has type {got}, expected a float32 numpy array ({n}, {dim})")
            if metadata.shape != (n, dim):
                raise InputSpecError(
                    f"metadata has shape {metadata.shape}, expected ({n}, {dim}): one "
                    f"{d.metadata.encoding} vector per tile"
                )
            metadata = np.ascontiguousarray(metadata)
        # Runtimes read raw memory (IOBinding, pinned copies): hand them C-contiguous arrays.
        return np.ascontiguousarray(images), metadata


def logits_output(names: Iterable[str]) -> str:
    """Return the name of a graph's or engine's logits output.

    Exports name it ``logits``; extra heads (``probabilities``, ``class_index``, ``confidence``) are
    recognised by name, and a graph from elsewhere has its first other output taken as the logits.

    Raises:
        ModelDescriptionError: If there is no candidate.
    """
    from flair_deploy.errors import ModelDescriptionError

    names = list(names)
    if "logits" in names:
        return "logits"
    rest = [n for n in names if n not in ("probabilities", "class_index", "confidence")]
    if not rest:
        raise ModelDescriptionError(f"the model has no logits output (outputs: {names}); re-export it")
    return rest[0]


# ---------------------------------------------------------------------- option parsing
_DEVICE_RE = re.compile(r"^(cpu|cuda)(?::(\d+))?$")


def parse_device(device: str) -> tuple[str, int]:
    """Split ``"cpu"``, ``"cuda"`` or ``"cuda:<i>"`` into ``(kind, index)``.

    Raises:
        BackendError: For anything else.
    """
    m = _DEVICE_RE.match(device.strip().lower())
    if m is None or (m.group(1) == "cpu" and m.group(2) is not None):
        raise BackendError(f"unknown device {device!r}; use 'cpu', 'cuda' or 'cuda:<index>'")
    return m.group(1), int(m.group(2) or 0)


def parse_precision(precision: Precision | str | None) -> Precision | None:
    """Parse a precision name (None stays None: the artifact's own precision).

    Raises:
        BackendError: For an unknown precision, listing the choices.
    """
    if precision is None or isinstance(precision, Precision):
        return precision
    try:
        return Precision(str(precision).lower())
    except ValueError:
        choices = ", ".join(p.value for p in Precision)
        raise BackendError(f"unknown precision {precision!r}; choose one of: {choices}") from None


def check_options(backend: str, options: Mapping[str, Any] | None, allowed: Iterable[str]) -> dict[str, Any]:
    """Return *options* as a dict, refusing keys the backend does not know.

    Raises:
        BackendError: For an unknown key, listing the known ones.
    """
    opts = dict(options or {})
    known = sorted(allowed)
    unknown = sorted(set(opts) - set(known))
    if unknown:
        raise BackendError(
            f"unknown {backend} backend option(s) {unknown}; known options: {', '.join(known) or '(none)'}"
        )
    return opts


def physical_cores() -> int:
    """Number of physical CPU cores available to this process (logical count if unknown)."""
    logical = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        import psutil

        phys = psutil.cpu_count(logical=False)
    except ImportError:
        phys = None
    if not phys:
        return max(1, logical)
    # Affinity may restrict us below the machine's core count (containers, taskset).
    return max(1, min(int(phys), logical))
