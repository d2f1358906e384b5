"""Native TensorRT backend: a serialized engine plus the JSON sidecar that describes it.

The engine (``.engine``/``.plan``) is a TensorRT plan built by ``flair-deploy export --tensorrt`` for one
GPU model and TensorRT version; the sidecar beside it (``model.engine.json``, the one rule of
:func:`flair_deploy.artifacts.sidecar_path`) carries its
:class:`~flair_deploy.description.ModelDescription`.

Written against the TensorRT 10/11 Python API (named I/O tensors): ``Runtime.deserialize_cuda_engine``,
``ICudaEngine.num_io_tensors`` / ``get_tensor_name`` / ``get_tensor_mode`` / ``get_tensor_dtype`` /
``get_tensor_profile_shape``, ``IExecutionContext.set_input_shape`` / ``set_tensor_address`` /
``execute_async_v3``. Device buffers are torch CUDA tensors, staged by the shared
:class:`~flair_deploy.inference.device.TorchDevice`. The engine runs on that device's own CUDA stream
(never the legacy default stream, on which TensorRT adds synchronisations): uploads, the cast to the
engine's input dtype, inference and detect's stitching are queued on it in order, and nothing waits
for the GPU until finished rows are copied back. Every status TensorRT returns is checked. The
profile's opt batch is the batch detect uses by default (:attr:`Backend.preferred_batch`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import numpy as np

from flair_deploy._optional import require
from flair_deploy.artifacts import Describer, read_engine_description
from flair_deploy.description import ModelDescription, Precision
from flair_deploy.errors import BackendError, InputSpecError, ModelDescriptionError
from flair_deploy.inference.backends.base import (
    Backend,
    BackendName,
    Batch,
    Logits,
    MetadataBatch,
    StageTimes,
    check_options,
    logits_output,
    parse_device,
)
from flair_deploy.inference.device import HOST, TorchDevice

if TYPE_CHECKING:
    import tensorrt

__all__ = ["EngineIO", "TensorProfile", "TrtBackend", "read_engine_io"]

_OPTIONS = ("timing",)


@dataclass(frozen=True, slots=True)
class TensorProfile:
    """Optimisation-profile bounds of one input tensor (min, opt, max shapes)."""

    name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def check(self, shape: tuple[int, ...]) -> None:
        """Raise InputSpecError if *shape* is outside the profile."""
        if len(shape) != len(self.min) or any(
            not lo <= s <= hi for s, lo, hi in zip(shape, self.min, self.max, strict=True)
        ):
            raise InputSpecError(
                f"{self.name} of shape {shape} is outside the engine's profile {self.min}..{self.max}; "
                "use a batch and tile size inside it, or rebuild the engine with a wider profile"
            )


@dataclass(frozen=True, slots=True)
class EngineIO:
    """The named I/O tensors of an engine, checked against its description."""

    image: TensorProfile
    metadata: TensorProfile | None
    outputs: tuple[str, ...]
    output_dtypes: Mapping[str, Any]
    input_dtypes: Mapping[str, Any] | None = None


@dataclass(slots=True)
class _Session:
    """What an active backend holds (dropped in TensorRT's order: context, engine, runtime)."""

    trt: Any
    torch: Any
    device: Any
    runtime: tensorrt.Runtime
    engine: tensorrt.ICudaEngine
    context: tensorrt.IExecutionContext
    io: EngineIO
    logits: str


def _checked(ok: bool, call: str, name: str, value: object) -> None:
    """Raise a BackendError when a TensorRT setter returns False (it does not raise by itself)."""
    if not ok:
        raise BackendError(
            f"TensorRT refused {call}({name!r}, {value}); the engine's profile or bindings do not accept it "
            "(rebuild the engine with `flair-deploy export --tensorrt` for this tile and batch range)"
        )


def read_engine_io(engine: Any, trt: Any, description: ModelDescription) -> EngineIO:
    """Read an engine's inputs, outputs and profile 0 and check them against *description*.

    Args:
        engine: A deserialised ``ICudaEngine``.
        trt: The ``tensorrt`` module.
        description: The engine's description.

    Returns:
        Its I/O spec.

    Raises:
        ModelDescriptionError: If the engine's tensors contradict the description.
    """
    inputs: dict[str, TensorProfile] = {}
    outputs: list[str] = []
    dtypes: dict[str, Any] = {}
    in_dtypes: dict[str, Any] = {}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            lo, opt, hi = engine.get_tensor_profile_shape(name, 0)
            inputs[name] = TensorProfile(name, tuple(lo), tuple(opt), tuple(hi))
            in_dtypes[name] = engine.get_tensor_dtype(name)
        else:
            outputs.append(name)
            dtypes[name] = engine.get_tensor_dtype(name)
    image = inputs.pop("image", None) or next((p for p in inputs.values() if len(p.min) == 4), None)
    if image is None:
        raise ModelDescriptionError(f"engine has no 4-D image input (inputs: {list(inputs)})")
    inputs.pop(image.name, None)
    if image.min[1] != description.in_channels or image.max[1] != description.in_channels:
        raise ModelDescriptionError(
            f"engine takes {image.min[1]} bands but its sidecar describes {description.in_channels} "
            f"{list(description.bands)}; the sidecar belongs to another engine"
        )
    metadata = inputs.pop("metadata", None) or next((p for p in inputs.values() if len(p.min) == 2), None)
    if metadata is not None:
        inputs.pop(metadata.name, None)
    if (metadata is None) != (description.metadata is None):
        raise ModelDescriptionError(
            "engine and sidecar disagree on the metadata input "
            f"(engine: {'yes' if metadata else 'no'}, sidecar: {'yes' if description.metadata else 'no'})"
        )
    if inputs:
        raise ModelDescriptionError(f"engine has unexpected inputs {list(inputs)}")
    if not outputs:
        raise ModelDescriptionError("engine has no outputs")
    return EngineIO(
        image=image, metadata=metadata, outputs=tuple(outputs), output_dtypes=dtypes, input_dtypes=in_dtypes
    )


class TrtBackend(Backend):
    """Run a native TensorRT engine on a CUDA GPU.

    Args:
        path: The engine file.
        description: Its description (from the sidecar).
        device: ``"cuda"`` or ``"cuda:<i>"``.
        precision: Must match the engine's (from the sidecar); None takes it.
        timing: Synchronise at stage boundaries so :attr:`Backend.last_times` is exact.

    Raises:
        BackendError: On a CPU device or a precision the engine was not built for.
    """

    name = BackendName.TENSORRT

    def __init__(
        self,
        path: Path,
        description: ModelDescription,
        *,
        device: str = "cuda",
        precision: Precision | None = None,
        timing: bool = False,
    ) -> None:
        kind, index = parse_device(device)
        if kind != "cuda":
            raise BackendError(
                f"TensorRT engines run on CUDA GPUs only, got device {device!r}; use --device cuda"
            )
        built = description.provenance.precision
        if precision is not None and precision is not built:
            raise BackendError(
                f"{path.name} was built for {built} but {precision} was requested; build a {precision} "
                "engine with `flair-deploy export --tensorrt`"
            )
        super().__init__(description, precision=built, device=f"cuda:{index}")
        self.path = path
        self.timing = bool(timing)
        self._state: _Session | None = None

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
        """Open an engine and its sidecar (the engine itself is deserialised in ``__enter__``).

        Raises:
            BackendError: Unknown options, CPU device or precision mismatch.
            ModelDescriptionError: Missing or invalid sidecar, or a preset that disagrees with it.
        """
        opts = check_options("tensorrt", options, _OPTIONS)
        description = read_engine_description(artifact, preset=preset)  # a preset must agree with it
        return cls(artifact, description, device=device, precision=precision, **opts)

    # ------------------------------------------------------------------ lifecycle
    def _activate(self) -> None:
        trt = require("tensorrt", purpose="running TensorRT engines")
        require(
            "torch", purpose="running TensorRT engines (PyTorch holds their CUDA buffers)", extra="tensorrt"
        )
        import torch

        if not torch.cuda.is_available():
            raise BackendError(
                "TensorRT engines need a CUDA GPU visible to torch (used for device buffers); none found "
                f"(torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'})"
            )
        dev = torch.device(self.device)
        torch.cuda.set_device(dev)
        logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(self.path.read_bytes())
        if engine is None:
            raise BackendError(
                f"TensorRT {trt.__version__} cannot deserialise {self.path}: engines are tied to the TensorRT "
                "version and GPU they were built with; rebuild it here with `flair-deploy export --tensorrt`"
            )
        io = read_engine_io(engine, trt, self.description)
        context = engine.create_execution_context()
        self.max_batch = io.image.max[0]
        if io.image.min[2:] == io.image.max[2:]:
            self.supports_dynamic_hw = False
            self.fixed_hw = (io.image.min[2], io.image.min[3])
        self.preferred_batch = io.image.opt[0]
        # The device's own stream: TensorRT synchronises extra on the legacy default stream.
        self.arrays = TorchDevice(dev)
        self._state = _Session(trt, torch, dev, runtime, engine, context, io, logits_output(io.outputs))

    def _deactivate(self) -> None:
        # Drop the context before the engine and the engine before the runtime (TensorRT's order).
        state, self._state = self._state, None
        if isinstance(self.arrays, TorchDevice):
            self.arrays.close()
        self.arrays = HOST
        if state is not None:
            del state.context
            del state.engine
            del state.runtime

    # ------------------------------------------------------------------ running
    def _run_device(self, images: Any, metadata: Any) -> Any:
        """Queue one batch on the device's stream; returns the logits tensor without waiting."""
        state = self._state
        if state is None:  # pragma: no cover - guarded by Backend._validate
            raise BackendError("the tensorrt backend is not active; run inference inside `with backend:`")
        torch, trt, io, context = state.torch, state.trt, state.io, state.context
        io.image.check(tuple(images.shape))
        if io.metadata is not None and metadata is not None:
            io.metadata.check(tuple(metadata.shape))
        in_dtypes = io.input_dtypes or {}

        def torch_dtype(trt_dtype: Any) -> Any:
            return getattr(torch, np.dtype(trt.nptype(trt_dtype)).name)

        def bind_input(name: str, tensor: Any) -> Any:
            want = torch_dtype(in_dtypes[name]) if name in in_dtypes else tensor.dtype
            # The engine's own input type (FP32, FP16 or UINT8): cast on the device.
            t = (tensor if want == tensor.dtype else tensor.to(want)).contiguous()
            shape = tuple(t.shape)
            _checked(context.set_input_shape(name, shape), "set_input_shape", name, shape)
            _checked(context.set_tensor_address(name, t.data_ptr()), "set_tensor_address", name, "ptr")
            return t

        start = time.perf_counter()
        # Buffers come from torch's caching allocator on this stream: one freed after this call is
        # reused only by work queued after the engine's, so no buffer needs to be kept by hand.
        bound = [bind_input(io.image.name, images)]
        if io.metadata is not None and metadata is not None:
            bound.append(bind_input(io.metadata.name, metadata))
        outs: dict[str, Any] = {}
        for name in io.outputs:
            shape = tuple(context.get_tensor_shape(name))
            out = torch.empty(shape, dtype=torch_dtype(io.output_dtypes[name]), device=state.device)
            _checked(context.set_tensor_address(name, out.data_ptr()), "set_tensor_address", name, "ptr")
            outs[name] = out
        dev = self.arrays
        assert isinstance(dev, TorchDevice)
        if not context.execute_async_v3(dev.cuda_stream.cuda_stream):
            raise BackendError(f"TensorRT failed to enqueue a batch of shape {tuple(images.shape)}")
        if self.timing:
            dev.synchronize()
        # Without `timing`, the time to queue the batch, not to run it.
        self.last_times = StageTimes(compute=time.perf_counter() - start)
        return outs[state.logits]

    def _infer(self, images: Batch, metadata: MetadataBatch | None) -> Logits:
        return self._host_logits(images, metadata)
