"""onnxruntime backend: an exported ``.onnx`` on the CPU, CUDA or TensorRT execution provider.

The model's description is read from its ``metadata_props`` (written by ``flair-deploy export``) with
:func:`flair_deploy.artifacts.read_onnx_description`. The provider is explicit: a requested provider
that onnxruntime does not have, or that it drops while creating the session (a CUDA/cuDNN mismatch makes onnxruntime fall back to the CPU *silently*), is a
:class:`~flair_deploy.errors.BackendError`, never a slow CPU run.

On CUDA the batch goes through I/O binding on torch CUDA buffers, staged by the shared
:class:`~flair_deploy.inference.device.TorchDevice` (pinned ring, own stream): raw band values are
uploaded in the raster's dtype and cast to the graph's input type on the device, and the logits stay
there for detect's stitcher (softmax and argmax of the synchronous calls run there too). The logits
output is found by :func:`~flair_deploy.inference.backends.base.logits_output`; extra heads of the graph
are not needed.

Options: ``provider`` (``cpu``, ``cuda``, ``tensorrt``; default from the device), ``threads`` (CPU
intra-op threads; default the physical cores), ``cudnn_max_workspace`` (default True), and for the
TensorRT provider ``cache_dir`` (engine and timing cache; default ``<model dir>/.trt_cache``),
``profile_batches`` (``(min, opt, max)`` batch sizes of the optimisation profile; default ``(1, 16, 32)``, detect's GPU batch and the benchmark's largest)
and ``profile_tile`` (tile edge of the profile; default the description's tile size); the provider options
themselves are :func:`flair_deploy.tensorrt_options.tensorrt_provider_options`', the same as the export
side's.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Self

import numpy as np

from flair_deploy._optional import require
from flair_deploy.artifacts import Describer, read_onnx_description
from flair_deploy.description import ModelDescription, Precision
from flair_deploy.errors import BackendError, ModelDescriptionError
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
    physical_cores,
)
from flair_deploy.inference.device import HOST, TorchDevice
from flair_deploy.tensorrt_options import ShapeRange, tensorrt_provider_options

__all__ = ["PROVIDERS", "OrtBackend"]

#: Our provider names → onnxruntime's.
PROVIDERS: Mapping[str, str] = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
_OPTIONS = ("provider", "threads", "cudnn_max_workspace", "cache_dir", "profile_batches", "profile_tile")
_ORT_TYPES: Mapping[str, type[np.generic]] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
}


def _torch_dtype(np_type: type[np.generic]) -> Any:
    import torch

    return getattr(torch, np.dtype(np_type).name)


def _numpy_type(torch_dtype: Any) -> type[np.generic]:
    return np.dtype(str(torch_dtype).removeprefix("torch.")).type


def _ort() -> ModuleType:
    return require("onnxruntime", purpose="running .onnx models")


def _ort_errors() -> tuple[type[BaseException], ...]:
    """The exception classes onnxruntime raises (pybind classes deriving straight from Exception)."""
    state = importlib.import_module("onnxruntime.capi.onnxruntime_pybind11_state")
    names = (
        "Fail",
        "InvalidArgument",
        "NoSuchFile",
        "NoModel",
        "EngineError",
        "RuntimeException",
        "InvalidProtobuf",
        "ModelLoaded",
        "NotImplemented",
        "InvalidGraph",
        "EPFail",
    )
    found = tuple(getattr(state, n) for n in names if isinstance(getattr(state, n, None), type))
    return (*found, RuntimeError, ValueError, OSError)


class OrtBackend(Backend):
    """Run an ONNX model with onnxruntime (see the module docstring for providers and options).

    Args:
        path: The ``.onnx`` file.
        description: Its description (read from the file by :meth:`from_artifact`).
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:<i>"``.
        precision: The graph's precision (the description's); with the TensorRT provider, ``fp16`` or
            ``int8`` also set the provider's precision flags.
        provider: ``"cpu"``, ``"cuda"`` or ``"tensorrt"``; default from the device.
        threads: CPU intra-op threads (default: physical cores).
        cudnn_max_workspace: Let cuDNN use its full workspace (important for fp16 convolutions).
        cache_dir: TensorRT engine/timing cache folder.
        profile_batches: TensorRT profile ``(min, opt, max)`` batch sizes.
        profile_tile: TensorRT profile tile edge.

    Raises:
        BackendError: For an inconsistent device/provider, an unknown provider or a precision the
            artifact cannot run at.
    """

    name = BackendName.ONNXRUNTIME

    def __init__(
        self,
        path: Path,
        description: ModelDescription,
        *,
        device: str = "cpu",
        precision: Precision | None = None,
        provider: str | None = None,
        threads: int | None = None,
        cudnn_max_workspace: bool = True,
        cache_dir: Path | str | None = None,
        profile_batches: Sequence[int] = (1, 16, 32),
        profile_tile: int | None = None,
    ) -> None:
        kind, index = parse_device(device)
        provider = (provider or kind).lower()
        if provider not in PROVIDERS:
            raise BackendError(
                f"unknown onnxruntime provider {provider!r}; choose one of: {', '.join(PROVIDERS)}"
            )
        if (provider == "cpu") != (kind == "cpu"):
            raise BackendError(
                f"provider {provider!r} does not run on device {device!r}; use --device "
                f"{'cpu' if provider == 'cpu' else 'cuda'} with it"
            )
        artifact_precision = description.provenance.precision
        if precision is None:
            precision = artifact_precision
        elif precision is not artifact_precision:
            # Precision lives in the ONNX graph, for every provider: TensorRT 11 has no precision
            # flags (an fp32 graph "lowered" through the provider silently runs fp32), and on
            # TensorRT 10 those flags make the network weakly typed. Run the variant that export wrote.
            variant = path.name.replace(f".{artifact_precision.value}.", f".{precision.value}.")
            hint = f" ({variant})" if variant != path.name else ""
            raise BackendError(
                f"{path.name} is a {artifact_precision} model but {precision} was requested; precision "
                f"lives in the ONNX graph: run the {precision} variant{hint} written by "
                f"`flair-deploy export --{precision.value}`, or drop --precision"
            )
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise BackendError(f"threads must be a positive integer, got {threads!r}")
        batches = tuple(int(b) for b in profile_batches)
        if len(batches) != 3 or not 1 <= batches[0] <= batches[1] <= batches[2]:
            raise BackendError(
                f"profile_batches must be (min, opt, max) with 1 <= min <= opt <= max, got {profile_batches!r}"
            )
        super().__init__(
            description, precision=precision, device=f"cuda:{index}" if kind == "cuda" else "cpu"
        )
        self.path = path
        self.provider = provider
        self.threads = threads
        self.cudnn_max_workspace = bool(cudnn_max_workspace)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else path.parent / ".trt_cache"
        self.profile_batches: tuple[int, int, int] = (batches[0], batches[1], batches[2])
        self.profile_tile = int(profile_tile or description.tile_size)
        self._device_index = index
        self._session: Any = None
        self._image_name = "image"
        self._image_dtype: type[np.generic] = np.float32
        self._metadata_name: str | None = None
        self._logits_name = "logits"
        self._static_batch: int | None = None
        self._logits_dtype: type[np.generic] = np.float32

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
        """Open an ``.onnx`` file; its description comes from its ``metadata_props``.

        Raises:
            BackendError: Unknown options, unreadable model, unusable provider or precision.
            ModelDescriptionError: If the model carries no description and no preset is given.
            MissingDependencyError: If onnxruntime is not installed.
        """
        opts = check_options("onnxruntime", options, _OPTIONS)
        description = read_onnx_description(artifact, preset=preset)
        return cls(artifact, description, device=device, precision=precision, **opts)

    def summary(self) -> str:
        """One line: backend, precision, device and provider."""
        return f"{super().summary()} provider={self.provider}"

    # ------------------------------------------------------------------ lifecycle
    def _providers(self, ort: ModuleType) -> list[tuple[str, dict[str, Any]]]:
        if self.provider == "cpu":
            return [("CPUExecutionProvider", {})]
        cuda: dict[str, Any] = {"device_id": self._device_index}
        if self.cudnn_max_workspace:
            cuda["cudnn_conv_use_max_workspace"] = "1"
        if self.provider == "cuda":
            return [("CUDAExecutionProvider", cuda)]
        d = self.description
        lo, opt, hi = self.profile_batches
        t = self.profile_tile
        shapes: dict[str, ShapeRange] = {
            self._image_name: (
                (lo, d.in_channels, t, t),
                (opt, d.in_channels, t, t),
                (hi, d.in_channels, t, t),
            )
        }
        if d.metadata is not None and self._metadata_name is not None:
            dim = d.metadata.dim
            shapes[self._metadata_name] = ((lo, dim), (opt, dim), (hi, dim))
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BackendError(
                f"cannot create the TensorRT cache folder {self.cache_dir}: {exc.strerror or exc}; "
                "give a writable cache_dir"
            ) from None
        trt = tensorrt_provider_options(shapes=shapes, cache_dir=self.cache_dir, device_id=self._device_index)
        # The CUDA provider runs whatever TensorRT does not support; that is GPU, not a CPU fallback.
        return [("TensorrtExecutionProvider", trt), ("CUDAExecutionProvider", cuda)]

    def _activate(self) -> None:
        ort = _ort()
        wanted = PROVIDERS[self.provider]
        available = list(ort.get_available_providers())
        if wanted not in available:
            raise BackendError(
                f"onnxruntime provider {wanted} requested but this onnxruntime {ort.__version__} has only "
                f"{', '.join(available)}; install onnxruntime-gpu (pip install onnxruntime-gpu) or use --device cpu"
            )
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.intra_op_num_threads = self.threads or physical_cores()
        if self.provider == "cpu":
            # The memory pattern pre-plans one arena block per input shape: on the CPU it costs far more
            # memory than it saves time (docs/benchmarks.md), and detect's peak RSS is what is bounded.
            so.enable_mem_pattern = False
        # TensorRT profile shapes name the inputs before the session exists: use the export's names
        # ("image", "metadata"); _bind_io then checks them against the graph.
        self._metadata_name = "metadata" if self.description.metadata is not None else None
        try:
            session = ort.InferenceSession(str(self.path), so, providers=self._providers(ort))
        except _ort_errors() as exc:
            raise BackendError(
                f"onnxruntime cannot create a {self.provider} session for {self.path}: {str(exc).splitlines()[0]}"
            ) from None
        got = list(session.get_providers())
        if wanted not in got:
            raise BackendError(
                f"onnxruntime dropped {wanted} while creating the session (it runs on {', '.join(got)}); "
                "check that the CUDA, cuDNN (and TensorRT) libraries match onnxruntime-gpu's requirements"
            )
        self._bind_io(session)
        self._session = session
        if self.provider != "cpu":
            self._setup_device_buffers()

    def _bind_io(self, session: Any) -> None:
        d = self.description
        inputs = list(session.get_inputs())
        image = next((i for i in inputs if i.name == "image"), None) or next(
            (i for i in inputs if len(i.shape) == 4), None
        )
        if image is None:
            raise ModelDescriptionError(
                f"{self.path} has no 4-D image input (inputs: {[i.name for i in inputs]})"
            )
        self._image_name = image.name
        self._image_dtype = _ORT_TYPES.get(image.type, np.float32)
        others = [i for i in inputs if i.name != image.name]
        if d.metadata is not None:
            meta = next((i for i in others if i.name == "metadata"), None) or next(
                (i for i in others if len(i.shape) == 2), None
            )
            if meta is None:
                raise ModelDescriptionError(
                    f"{self.path}'s description has a metadata spec but the graph has no metadata input "
                    f"(inputs: {[i.name for i in inputs]}); re-export the model"
                )
            self._metadata_name = meta.name
            others = [i for i in others if i.name != meta.name]
        elif others:
            raise ModelDescriptionError(
                f"{self.path} has extra inputs {[i.name for i in others]} but its description has no "
                "metadata spec; re-export the model"
            )
        if others:
            raise ModelDescriptionError(f"{self.path} has unexpected inputs {[i.name for i in others]}")
        n, c, h, w = image.shape
        if isinstance(c, int) and c != d.in_channels:
            raise ModelDescriptionError(
                f"{self.path} takes {c} bands but its description lists {d.in_channels} {list(d.bands)}"
            )
        self._static_batch = n if isinstance(n, int) else None
        self.max_batch = self._static_batch
        if isinstance(h, int) and isinstance(w, int):
            self.supports_dynamic_hw = False
            self.fixed_hw = (h, w)
        outputs = {o.name: o for o in session.get_outputs()}
        self._logits_name = logits_output(outputs)
        self._logits_dtype = _ORT_TYPES.get(outputs[self._logits_name].type, np.float32)

    def _setup_device_buffers(self) -> None:
        require("torch", purpose="onnxruntime on CUDA (it binds PyTorch CUDA buffers)", extra="gpu")
        import torch

        if not torch.cuda.is_available():
            raise BackendError(
                f"onnxruntime on {self.device} binds PyTorch CUDA buffers, but this torch "
                f"{torch.__version__} sees no CUDA device; install a CUDA build of torch "
                "(pip install flair-deploy[gpu]) or use --device cpu"
            )
        self.arrays = TorchDevice(f"cuda:{self._device_index}")

    def _deactivate(self) -> None:
        self._session = None
        if isinstance(self.arrays, TorchDevice):
            self.arrays.close()
        self.arrays = HOST

    # ------------------------------------------------------------------ running
    def _failed(self, shape: tuple[int, ...], exc: BaseException) -> BackendError:
        return BackendError(f"onnxruntime failed on a batch of shape {shape}: {str(exc).splitlines()[0]}")

    def _run_device(self, images: Any, metadata: Any) -> Any:
        if self._session is None:  # pragma: no cover - guarded by Backend._validate
            raise BackendError("the onnxruntime backend is not active; run inference inside `with backend:`")
        if self.provider == "cpu":
            return self._run_host(images, metadata)
        return self._run_cuda(images, metadata)

    def _run_host(self, images: np.ndarray[Any, Any], metadata: MetadataBatch | None) -> np.ndarray[Any, Any]:
        n = images.shape[0]
        x: np.ndarray[Any, Any] = images.astype(self._image_dtype, copy=False)
        if self._static_batch is not None and n < self._static_batch:
            # A static-batch graph: pad with copies of the last tile and drop their results.
            extra = self._static_batch - n
            x = np.concatenate([x, np.repeat(x[-1:], extra, axis=0)])
            if metadata is not None:
                metadata = np.concatenate([metadata, np.repeat(metadata[-1:], extra, axis=0)])
        feed: dict[str, np.ndarray[Any, Any]] = {self._image_name: x}
        if metadata is not None and self._metadata_name is not None:
            feed[self._metadata_name] = metadata
        t0 = time.perf_counter()
        try:
            (logits,) = self._session.run([self._logits_name], feed)
        except _ort_errors() as exc:
            raise self._failed(tuple(images.shape), exc) from None
        self.last_times = StageTimes(compute=time.perf_counter() - t0)
        out: np.ndarray[Any, Any] = np.asarray(logits)[:n]
        return out

    def _run_cuda(self, images: Any, metadata: Any) -> Any:
        """I/O-bound run on torch CUDA buffers; returns the logits tensor (on the device)."""
        import torch

        dev = self.arrays
        assert isinstance(dev, TorchDevice)
        n = int(images.shape[0])
        x = images.to(_torch_dtype(self._image_dtype))  # the cast, on the device
        m = metadata
        if self._static_batch is not None and n < self._static_batch:
            extra = self._static_batch - n
            x = torch.cat([x, x[-1:].expand(extra, *x.shape[1:])])
            if m is not None:
                m = torch.cat([m, m[-1:].expand(extra, *m.shape[1:])])
        binding = self._session.io_binding()

        def bind(name: str, t: Any, output: bool = False) -> None:
            args = ("cuda", self._device_index, _numpy_type(t.dtype), list(t.shape), t.data_ptr())
            (binding.bind_output if output else binding.bind_input)(name, *args)

        # IOBinding keeps raw pointers: every bound tensor stays referenced until Run() has returned.
        x = x.contiguous()
        bind(self._image_name, x)
        if m is not None and self._metadata_name is not None:
            m = m.float().contiguous()
            bind(self._metadata_name, m)
        k = self.description.num_classes
        out_dtype = torch.float16 if self._logits_dtype is np.float16 else torch.float32
        logits = torch.empty((x.shape[0], k, x.shape[2], x.shape[3]), dtype=out_dtype, device=dev.device)
        bind(self._logits_name, logits, output=True)
        # onnxruntime runs on its own stream: the uploads and casts queued on ours must have landed.
        dev.synchronize()
        t0 = time.perf_counter()
        try:
            self._session.run_with_iobinding(binding)
        except _ort_errors() as exc:
            raise self._failed(tuple(images.shape), exc) from None
        # Run() returns once the provider's stream has finished: the logits are there for our stream.
        self.last_times = StageTimes(compute=time.perf_counter() - t0)
        del x, m
        return logits[:n]

    def _infer(self, images: Batch, metadata: MetadataBatch | None) -> Logits:
        if self.provider == "cpu":
            return self._run_host(images, metadata).astype(np.float32, copy=False)
        return self._host_logits(images, metadata)
