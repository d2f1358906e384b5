"""PyTorch backend: a checkpoint or an in-memory network, on CPU or CUDA. The parity reference.

Variants (``options``): autocast precision (``fp16``, ``bf16`` — bf16 autocast also works on CPU),
``channels_last``, ``compile`` (``torch.compile``; True or a mode name), ``cuda_graphs`` (CUDA only; one
graph captured per input shape), ``threads`` (CPU intra-op threads) and ``timing`` (synchronise at stage
boundaries so :attr:`Backend.last_times` splits host→device, compute and device→host exactly).

Inputs and outputs move through the shared :class:`~flair_deploy.inference.device.TorchDevice` (pinned
staging ring, own stream and events on CUDA): raw band values are uploaded in the raster's dtype and cast
to float on the device; :meth:`Backend.run` leaves the logits there for detect's stitcher, and softmax
and argmax for the synchronous calls run there too, so only the requested result comes back.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Self

import torch
from torch import Tensor, nn

from flair_deploy.artifacts import Describer
from flair_deploy.description import ModelDescription, Precision
from flair_deploy.errors import BackendError
from flair_deploy.inference.backends.base import (
    Backend,
    BackendName,
    Batch,
    Logits,
    MetadataBatch,
    StageTimes,
    check_options,
    parse_device,
    parse_precision,
)
from flair_deploy.inference.device import HOST, TorchDevice

__all__ = ["TorchBackend"]

_OPTIONS = ("channels_last", "compile", "cuda_graphs", "threads", "timing")
_AUTOCAST: dict[Precision, torch.dtype] = {Precision.FP16: torch.float16, Precision.BF16: torch.bfloat16}
_COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

_Forward = Callable[[Tensor, Tensor | None], Tensor]


class _GraphRunner:
    """A network replayed through one CUDA graph per input shape (static shapes, static buffers)."""

    def __init__(self, forward: _Forward, device: torch.device) -> None:
        self._forward = forward
        self._device = device
        self._graphs: dict[
            tuple[tuple[int, ...], tuple[int, ...] | None], tuple[Any, Tensor, Tensor | None, Tensor]
        ] = {}

    def __call__(self, x: Tensor, m: Tensor | None) -> Tensor:
        key = (tuple(x.shape), None if m is None else tuple(m.shape))
        if key not in self._graphs:
            self._graphs[key] = self._capture(x, m)
        graph, static_x, static_m, static_out = self._graphs[key]
        static_x.copy_(x, non_blocking=True)
        if m is not None and static_m is not None:
            static_m.copy_(m, non_blocking=True)
        graph.replay()
        # The output buffer is overwritten by the next replay; every caller consumes it before then
        # (post-processing is enqueued on the same stream before the next call can start).
        return static_out

    def _capture(self, x: Tensor, m: Tensor | None) -> tuple[Any, Tensor, Tensor | None, Tensor]:
        static_x = x.clone()
        static_m = None if m is None else m.clone()
        # Warm up on a side stream first, as the CUDA-graphs docs require (lazy init, cuDNN autotune).
        side = torch.cuda.Stream(device=self._device)  # type: ignore[no-untyped-call]
        side.wait_stream(torch.cuda.current_stream(self._device))
        with torch.cuda.stream(side):
            for _ in range(3):
                self._forward(static_x, static_m)
        torch.cuda.current_stream(self._device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self._forward(static_x, static_m)
        return graph, static_x, static_m, static_out


class TorchBackend(Backend):
    """Run a :class:`~flair_deploy.models.FlairSegmenter` (or any module with its signature) with PyTorch.

    Args:
        model: Network taking raw ``(N, C, H, W)`` float32 bands (and ``(N, D)`` metadata when the
            description has a metadata spec) and returning ``(N, K, H, W)`` logits. It is moved to the
            device (and set to eval mode) while the backend is active, and moved back on exit.
        description: The network's description.
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:<i>"``.
        precision: ``fp32``, or ``fp16``/``bf16`` autocast. INT8 is not a torch variant (use onnxruntime).
        channels_last: Use the NHWC memory format (faster convolutions on tensor cores and oneDNN).
        compile: ``torch.compile`` the network (True, or a mode such as ``"max-autotune"``);
            compilation happens on the first call of each shape, not in ``__enter__``.
        cuda_graphs: Replay one CUDA graph per input shape (CUDA only).
        threads: CPU intra-op threads while active (None: torch's default).
        timing: Synchronise the device at stage boundaries so ``last_times`` is exact (costs a little
            overlap; off for throughput runs).

    Raises:
        BackendError: For an unsupported precision or inconsistent options.
    """

    name = BackendName.TORCH

    def __init__(
        self,
        model: nn.Module,
        description: ModelDescription,
        *,
        device: str = "cpu",
        precision: Precision = Precision.FP32,
        channels_last: bool = False,
        compile: bool | str = False,
        cuda_graphs: bool = False,
        threads: int | None = None,
        timing: bool = False,
    ) -> None:
        kind, index = parse_device(device)
        if precision is Precision.INT8:
            raise BackendError(
                "the torch backend runs fp32, fp16 or bf16; for int8 export a quantised ONNX model and "
                "use --backend onnxruntime"
            )
        if cuda_graphs and kind != "cuda":
            raise BackendError("cuda_graphs needs a CUDA device; use --device cuda or drop cuda_graphs")
        if isinstance(compile, str) and compile not in _COMPILE_MODES:
            raise BackendError(
                f"unknown torch.compile mode {compile!r}; choose one of: {', '.join(_COMPILE_MODES)}"
            )
        if cuda_graphs and compile in ("reduce-overhead", "max-autotune"):
            # Those modes capture CUDA graphs themselves (cudagraph trees): capturing them again in our
            # graph would nest one capture inside another.
            raise BackendError(
                f"cuda_graphs cannot be combined with compile={compile!r}, which captures CUDA graphs "
                "itself; drop cuda_graphs, or use compile='max-autotune-no-cudagraphs'"
            )
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise BackendError(f"threads must be a positive integer, got {threads!r}")
        super().__init__(
            description, precision=precision, device=f"cuda:{index}" if kind == "cuda" else "cpu"
        )
        self.model = model
        self.channels_last = bool(channels_last)
        self.compile = compile
        self.cuda_graphs = bool(cuda_graphs)
        self._saved_cudnn_benchmark: bool | None = None
        self.threads = threads
        self.timing = bool(timing)
        self._torch_device = torch.device(self.device)
        self._is_cuda = kind == "cuda"
        self._forward: _Forward | None = None
        self._saved_threads: int | None = None
        self._was_training = False

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_module(
        cls,
        model: nn.Module,
        description: ModelDescription,
        *,
        device: str = "cpu",
        precision: Precision | str | None = None,
        **options: Any,
    ) -> Self:
        """Wrap an in-memory network (e.g. straight from training) with its description.

        Args:
            model: The network (see the class docstring).
            description: Its description.
            device: ``"cpu"``, ``"cuda"`` or ``"cuda:<i>"``.
            precision: ``fp32`` (default), ``fp16`` or ``bf16``.
            **options: ``channels_last``, ``compile``, ``cuda_graphs``, ``threads``, ``timing``.

        Raises:
            BackendError: For unknown options or an unsupported precision.
        """
        opts = check_options("torch", options, _OPTIONS)
        return cls(
            model, description, device=device, precision=parse_precision(precision) or Precision.FP32, **opts
        )

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
        """Load a checkpoint (``.ckpt``, ``.pth``, ``.pt``, ``.safetensors``) with :func:`load_checkpoint`.

        Raises:
            BackendError: For unknown options or an unsupported precision.
            CheckpointError: For unreadable or undescribed checkpoints.
        """
        from flair_deploy.checkpoints import load_checkpoint

        opts = check_options("torch", options, _OPTIONS)
        loaded = load_checkpoint(artifact, preset=preset)
        return cls(
            loaded.model, loaded.description, device=device, precision=precision or Precision.FP32, **opts
        )

    def summary(self) -> str:
        """One line: backend, precision, device and the active variants."""
        extras = [
            n for n, on in (("channels_last", self.channels_last), ("cuda_graphs", self.cuda_graphs)) if on
        ]
        if self.compile:
            extras.append("compile" if self.compile is True else f"compile={self.compile}")
        return " ".join([super().summary(), *extras])

    # ------------------------------------------------------------------ lifecycle
    def _activate(self) -> None:
        if self._is_cuda:
            if not torch.cuda.is_available():
                raise BackendError(
                    f"device {self.device} requested but torch sees no CUDA device (torch {torch.__version__}, "
                    f"CUDA build {torch.version.cuda or 'none'}); use --device cpu or install a CUDA build of torch"
                )
            count = torch.cuda.device_count()
            if self._torch_device.index is not None and self._torch_device.index >= count:
                raise BackendError(f"device {self.device} requested but only {count} CUDA device(s) exist")
        if self.threads is not None:
            self._saved_threads = torch.get_num_threads()
            torch.set_num_threads(self.threads)
        if self._torch_device.type == "cuda":
            # Tile shapes are fixed for a whole run: let cuDNN time its algorithms once and keep the
            # fastest (restored on exit).
            self._saved_cudnn_benchmark = bool(torch.backends.cudnn.benchmark)
            torch.backends.cudnn.benchmark = True
        self.arrays = TorchDevice(self._torch_device)
        self._was_training = self.model.training
        self.model.eval()
        self.model.to(self._torch_device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        module: nn.Module | Callable[..., Tensor] = self.model
        if self.compile:
            mode = None if self.compile is True else str(self.compile)
            module = torch.compile(self.model, mode=mode)
        uses_metadata = self.description.metadata is not None
        autocast_dtype = _AUTOCAST.get(self.precision)
        device_type = self._torch_device.type

        def forward(x: Tensor, m: Tensor | None) -> Tensor:
            ctx = (
                torch.autocast(device_type=device_type, dtype=autocast_dtype)
                if autocast_dtype is not None
                else contextlib.nullcontext()
            )
            with ctx:
                out: Tensor = module(x, m) if uses_metadata else module(x)
            # Softmax/argmax and parity are computed in fp32 whatever the compute precision.
            return out.float()

        self._forward = _GraphRunner(forward, self._torch_device) if self.cuda_graphs else forward

    def _deactivate(self) -> None:
        self._forward = None
        if isinstance(self.arrays, TorchDevice):
            self.arrays.close()
        self.arrays = HOST
        if self._saved_cudnn_benchmark is not None:
            torch.backends.cudnn.benchmark = self._saved_cudnn_benchmark
            self._saved_cudnn_benchmark = None
        if self.channels_last:
            self.model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
        self.model.to("cpu")
        self.model.train(self._was_training)
        if self._saved_threads is not None:
            torch.set_num_threads(self._saved_threads)
            self._saved_threads = None
        if self._is_cuda and torch.cuda.is_available():
            torch.cuda.empty_cache()

    # ------------------------------------------------------------------ running
    def _run_device(self, images: Tensor, metadata: Tensor | None) -> Tensor:
        if self._forward is None:  # pragma: no cover - guarded by Backend._validate
            raise BackendError("the torch backend is not active; run inference inside `with backend:`")
        start = time.perf_counter()
        with torch.no_grad():
            x = images if images.dtype == torch.float32 else images.float()  # the cast, on the device
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            m = None if metadata is None else metadata.float()
            logits = self._forward(x, m)
        if self._is_cuda and self.timing:
            torch.cuda.synchronize(self._torch_device)
        # On CUDA without `timing` this is the time to queue the work, not to run it.
        self.last_times = StageTimes(compute=time.perf_counter() - start)
        return logits

    def _infer(self, images: Batch, metadata: MetadataBatch | None) -> Logits:
        return self._host_logits(images, metadata)
