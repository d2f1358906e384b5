"""Where a backend's outputs live, and the one implementation of copies between the host and there.

Every backend runs its network on a device: the host for CPU runtimes, a CUDA GPU for PyTorch,
onnxruntime-CUDA and TensorRT. It hands ``detect`` its logits *on that device*; the stitcher
(:mod:`~flair_deploy.inference.stitching`) works on them in place through the array API, and only
finished uint8 rows come back. An :class:`ArrayDevice` is what a backend says about that device:

* :class:`HostDevice`: numpy arrays; staging and copies are no-ops. No torch import.
* :class:`TorchDevice`: torch tensors on one torch device, with its own stream. On CUDA the three GPU
  runtimes share this code (it was copied into each of them before):

  - **three streams**: compute (the network and the stitching), uploads and downloads, joined by
    events, so the upload of batch n+1 and the download of finished rows overlap batch n's compute;
  - **uploads** go through a ring of pinned host buffers per batch shape (:meth:`TorchDevice.staging`
    hands out the next free slot, the caller fills it, :meth:`~TorchDevice.upload` copies it to the
    device asynchronously on the upload stream and records an event the compute stream waits for; a
    slot is refilled only once its event has completed, so the host never overwrites memory a copy is
    still reading, and never waits for anything else);
  - **downloads** wait (on the device) for the compute queued so far, copy into a pinned buffer on the
    download stream and return a :class:`Download` whose :meth:`~Download.result` waits on that copy's
    event alone: the thread that writes the map waits, not the one that feeds the GPU;
  - the tensors are raw band values (uint8 for 8-bit orthophotos): the cast to float happens on the
    device, so a batch crosses the bus at one byte per band and pixel.

  On a CPU torch device the same code runs without pinning, streams or events: that is how the test
  suite runs the GPU logic on CPU tensors.
"""

from __future__ import annotations

import abc
import contextlib
import threading
import warnings
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

__all__ = ["HOST", "ArrayDevice", "Download", "HostDevice", "Ready", "TorchDevice"]


class Download(Protocol):
    """A copy to the host that may still be in flight."""

    def result(self) -> npt.NDArray[Any]:
        """Wait for the copy (if needed) and return the host array."""
        ...


@dataclass(frozen=True, slots=True)
class Ready:
    """A host array that is already there."""

    array: npt.NDArray[Any]

    def result(self) -> npt.NDArray[Any]:
        """Return the array."""
        return self.array


class ArrayDevice(abc.ABC):
    """Arrays on one device, and the copies between it and the host.

    Attributes:
        name: ``"cpu"`` or ``"cuda:<i>"``.
        is_host: True when device arrays are host memory (no copies cross a bus).
    """

    name: str
    is_host: bool

    @property
    @abc.abstractmethod
    def xp(self) -> Any:
        """The array namespace of device arrays (``array_api_compat``'s numpy or torch)."""

    @property
    @abc.abstractmethod
    def array_device(self) -> Any:
        """The device object of device arrays, for ``xp.zeros(..., device=...)``."""

    @abc.abstractmethod
    def staging(self, shape: tuple[int, ...], dtype: npt.DTypeLike) -> npt.NDArray[Any]:
        """Return a host buffer to fill and pass to :meth:`upload` (pinned on CUDA).

        The buffer is valid until the next :meth:`upload` of it; do not keep it afterwards.
        """

    @abc.abstractmethod
    def upload(self, host: npt.NDArray[Any]) -> Any:
        """Return *host*'s values as a device array (queued on the device's stream)."""

    @abc.abstractmethod
    def download(self, array: Any) -> Download:
        """Start copying a device array to the host; the array must not change until the copy is done."""

    def asarray(self, host: npt.ArrayLike) -> Any:
        """Return a small host constant (blend window, lookup table) as a device array, synchronously."""
        return self.upload(np.ascontiguousarray(host))

    def stream(self) -> contextlib.AbstractContextManager[None]:
        """Context in which device work is queued on this device's stream."""
        return contextlib.nullcontext()

    def synchronize(self) -> None:  # noqa: B027  (nothing to wait for on the host)
        """Wait until all work queued on the device's stream is done."""


class HostDevice(ArrayDevice):
    """The host: numpy arrays, no copies."""

    name = "cpu"
    is_host = True

    @property
    def xp(self) -> Any:
        """``array_api_compat.numpy``."""
        import array_api_compat.numpy as xp

        return xp

    @property
    def array_device(self) -> str:
        """``"cpu"``."""
        return "cpu"

    def staging(self, shape: tuple[int, ...], dtype: npt.DTypeLike) -> npt.NDArray[Any]:
        """Return a new host array (nothing needs pinning)."""
        return np.empty(shape, dtype=dtype)

    def upload(self, host: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """Return *host* itself."""
        return np.asarray(host)

    def download(self, array: Any) -> Ready:
        """Return the array itself, ready."""
        return Ready(np.asarray(array))


#: The host device (a stateless singleton).
HOST = HostDevice()


@dataclass
class _Slot:
    tensor: Any  # pinned host tensor
    view: npt.NDArray[Any]  # numpy view of it
    event: Any = None  # CUDA event recorded after the last upload from it


@dataclass
class _CudaDownload:
    buffer: Any  # pinned host tensor being filled
    event: Any

    def result(self) -> npt.NDArray[Any]:
        self.event.synchronize()
        out: npt.NDArray[Any] = self.buffer.numpy()  # keeps the pinned tensor alive
        return out


class TorchDevice(ArrayDevice):
    """Torch tensors on one device with their own stream; pinned staging rings and events on CUDA.

    Args:
        device: A torch device or its name (``"cuda:0"``, ``"cpu"``).
        slots: Pinned staging buffers per batch shape (CUDA): how many uploads may be in flight.
        stream: The stream to queue work on (CUDA); None creates one (never the legacy default
            stream, on which TensorRT and cuDNN add synchronisations).
    """

    def __init__(self, device: Any, *, slots: int = 3, stream: Any = None) -> None:
        import torch

        self._torch = torch
        self.device = torch.device(device)
        self.is_cuda = self.device.type == "cuda"
        self.name = f"cuda:{self.device.index or 0}" if self.is_cuda else self.device.type
        self.is_host = not self.is_cuda
        self.slots = max(1, int(slots))
        self._stream = stream
        self._h2d: Any = None
        self._d2h: Any = None
        if self.is_cuda:
            if self._stream is None:
                self._stream = torch.cuda.Stream(device=self.device)  # type: ignore[no-untyped-call]
            # Copies run on streams of their own, so that the upload of the next batch and the download
            # of finished rows overlap the compute stream's work instead of queueing behind it.
            self._h2d = torch.cuda.Stream(device=self.device)  # type: ignore[no-untyped-call]
            self._d2h = torch.cuda.Stream(device=self.device)  # type: ignore[no-untyped-call]
        self._rings: dict[tuple[tuple[int, ...], str], list[_Slot]] = {}
        self._next: dict[tuple[tuple[int, ...], str], int] = {}
        self._by_address: dict[int, _Slot] = {}
        self._lock = threading.Lock()

    @property
    def xp(self) -> Any:
        """``array_api_compat.torch``."""
        import array_api_compat.torch as xp

        return xp

    @property
    def array_device(self) -> Any:
        """The ``torch.device``."""
        return self.device

    @property
    def cuda_stream(self) -> Any:
        """The torch CUDA stream (None on a CPU device)."""
        return self._stream

    def stream(self) -> contextlib.AbstractContextManager[None]:
        """Queue device work on this device's stream."""
        if not self.is_cuda:
            return contextlib.nullcontext()
        return self._torch.cuda.stream(self._stream)

    def synchronize(self) -> None:
        """Wait for the device's streams (compute and copies)."""
        if self.is_cuda:
            for stream in (self._h2d, self._stream, self._d2h):
                stream.synchronize()

    # ------------------------------------------------------------------ uploads
    def staging(self, shape: tuple[int, ...], dtype: npt.DTypeLike) -> npt.NDArray[Any]:
        """Return the next slot of the pinned ring for this shape, once its last upload has landed."""
        dt = np.dtype(dtype)
        if not self.is_cuda:
            return np.empty(shape, dtype=dt)
        key = (tuple(shape), dt.str)
        with self._lock:
            ring = self._rings.get(key)
            if ring is None:
                ring = self._rings[key] = []
                self._next[key] = 0
            i = self._next[key]
            self._next[key] = (i + 1) % self.slots
            if i == len(ring):
                tensor = self._torch.empty(shape, dtype=_torch_dtype(self._torch, dt), pin_memory=True)
                view = tensor.numpy()
                slot = _Slot(tensor, view)
                ring.append(slot)
                self._by_address[view.__array_interface__["data"][0]] = slot
            slot = ring[i]
        if slot.event is not None:
            # The ring's back-pressure: this slot's previous upload must have left host memory.
            slot.event.synchronize()
            slot.event = None
        return slot.view

    def upload(self, host: npt.NDArray[Any]) -> Any:
        """Copy a host array to the device on the stream (asynchronously from a staging slot)."""
        torch = self._torch
        if not self.is_cuda:
            with warnings.catch_warnings():
                # Tiles sliced from a reader's band are read-only views; sharing them is safe because
                # every consumer (the cast, the in-graph normalisation) makes new tensors, never in place.
                warnings.filterwarnings("ignore", "The given NumPy array is not writable", UserWarning)
                return torch.from_numpy(np.ascontiguousarray(host))
        with self._lock:
            slot = self._by_address.get(host.__array_interface__["data"][0])
        if slot is None or slot.view.shape != host.shape or slot.view.dtype != host.dtype:
            staged = self.staging(tuple(host.shape), host.dtype)
            np.copyto(staged, host)
            return self.upload(staged)
        with torch.cuda.stream(self._h2d):
            out = slot.tensor.to(self.device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self._h2d)
        # The compute stream waits for this copy only; the tensor, allocated on the copy stream, is
        # used on the compute stream: the caching allocator must not reuse it before that work is done.
        self._stream.wait_event(event)
        out.record_stream(self._stream)
        slot.event = event
        return out

    def asarray(self, host: npt.ArrayLike) -> Any:
        """Copy a small host constant to the device (synchronously, outside the staging rings)."""
        t = self._torch.from_numpy(np.ascontiguousarray(host))
        if not self.is_cuda:
            return t
        with self._torch.cuda.stream(self._stream):
            return t.to(self.device)

    # ------------------------------------------------------------------ downloads
    def download(self, array: Any) -> Download:
        """Copy a device tensor into pinned host memory asynchronously; the result waits on its event."""
        torch = self._torch
        if not self.is_cuda:
            return Ready(array.detach().contiguous().numpy())
        produced = torch.cuda.Event()
        produced.record(self._stream)  # the work that computes *array*, queued so far
        self._d2h.wait_event(produced)
        with torch.cuda.stream(self._d2h):
            # torch's pinned allocator caches blocks and reuses one only after the copies recorded on
            # it have completed, so a fresh buffer per download costs no allocation in steady state.
            buf = torch.empty(tuple(array.shape), dtype=array.dtype, pin_memory=True)
            buf.copy_(array, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self._d2h)
        array.record_stream(self._d2h)  # read on the copy stream: keep its memory until then
        return _CudaDownload(buf, event)

    def close(self) -> None:
        """Drop the staging rings (waits for their last uploads)."""
        self.synchronize()
        with self._lock:
            self._rings.clear()
            self._next.clear()
            self._by_address.clear()


def _torch_dtype(torch: Any, dtype: np.dtype[Any]) -> Any:
    return getattr(torch, dtype.name)
