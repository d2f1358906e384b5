"""What to benchmark: the run configuration and its expansion into cases.

A *case* is one backend x precision x variant on one artifact. Precisions map to artifacts: a checkpoint
serves the torch rows (FP32, and FP16/BF16 through autocast), ONNX files serve onnxruntime rows (the
``<name>.fp32.onnx``, ``<name>.fp16.onnx`` and ``<name>.int8.onnx`` written by ``flair-deploy export``,
looked up beside every model given), engines serve native TensorRT rows. Whatever cannot run here
becomes a case with a skip reason, so the report always says why a row is missing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from flair_deploy.config import DescribesWeights, Loaded, load_config
from flair_deploy.description import Precision
from flair_deploy.inference.backends import SUFFIXES, BackendName

__all__ = [
    "TORCH_VARIANTS",
    "BenchmarkConfig",
    "Case",
    "TorchVariant",
    "load_benchmark_config",
    "parity_reference",
    "plan_cases",
]

TorchVariant = Literal["eager", "channels_last", "compile", "cuda_graphs"]

#: Torch variant → backend options (see the torch backend).
TORCH_VARIANTS: Mapping[str, Mapping[str, Any]] = {
    "eager": {},
    "channels_last": {"channels_last": True},
    "compile": {"compile": True},
    "cuda_graphs": {"cuda_graphs": True},
}

_PRECISION_SUFFIX = re.compile(r"\.(fp32|fp16|bf16|int8)$", re.IGNORECASE)
# Suffixes of the artifacts looked up beside each model, from the one suffix table.
_EXTENSIONS: Mapping[BackendName, tuple[str, ...]] = {
    b: tuple(s for s, k in SUFFIXES.items() if k is b)
    for b in (BackendName.ONNXRUNTIME, BackendName.TENSORRT)
}


class BenchmarkConfig(DescribesWeights):
    """Options of a benchmark run (``flair-deploy benchmark``'s flags).

    Attributes:
        models: Model files: checkpoints (torch rows), ONNX files (onnxruntime rows), engines (TensorRT
            rows). Artifacts of other precisions are also looked up beside each of them.
        backends: Backends to benchmark.
        precisions: Precisions to benchmark.
        batches: Batch sizes (tiles per call).
        tiles: Tile edges in pixels; None uses each model's own tile size.
        device: ``cpu`` or ``cuda[:i]``.
        variants: Torch variants (eager, channels_last, compile, cuda_graphs).
        raster: A raster for end-to-end rows through detect's pipeline (None: model-only only).
        min_time: Minimum seconds of timed calls per row.
        min_iters: Minimum timed calls per row.
        warmup_iters: Untimed calls per row before timing.
        peak_gflops: FP32 hardware ceiling in GFLOP/s (None: estimated, or measured with measure_peak).
        measure_peak: Measure the ceiling with a matrix-multiply probe instead of estimating it.
        parity_tiles: Tiles compared against the FP32 reference per tile size.
        threads: CPU threads for the runtimes (None: their default, the physical cores).
        preset, ign_config: What describes weights that carry none (see
            :class:`~flair_deploy.config.DescribesWeights`).
    """

    models: Annotated[tuple[Path, ...], Field(min_length=1)]
    backends: Annotated[tuple[BackendName, ...], Field(min_length=1)] = tuple(
        b for b in BackendName if b is not BackendName.NULL
    )
    precisions: Annotated[tuple[Precision, ...], Field(min_length=1)] = tuple(Precision)
    batches: Annotated[tuple[Annotated[int, Field(gt=0, le=1024)], ...], Field(min_length=1)] = (1, 4)
    tiles: tuple[Annotated[int, Field(gt=0, le=8192)], ...] | None = None
    device: str = "cpu"
    variants: Annotated[tuple[TorchVariant, ...], Field(min_length=1)] = ("eager",)
    raster: Path | None = None
    min_time: Annotated[float, Field(ge=0)] = 2.0
    min_iters: Annotated[int, Field(gt=0)] = 10
    warmup_iters: Annotated[int, Field(ge=0)] = 2
    peak_gflops: Annotated[float, Field(gt=0)] | None = None
    measure_peak: bool = False
    parity_tiles: Annotated[int, Field(ge=0)] = 4
    threads: Annotated[int, Field(gt=0)] | None = None

    @field_validator("models")
    @classmethod
    def _known_suffix(cls, models: tuple[Path, ...]) -> tuple[Path, ...]:
        for m in models:
            if m.suffix.lower() not in SUFFIXES:
                known = ", ".join(SUFFIXES)
                raise ValueError(
                    f"model {m.name!r} has suffix {m.suffix or 'none'!r}; expected one of {known}"
                )
        return models

    @model_validator(mode="after")
    def _distinct(self) -> BenchmarkConfig:
        for name, values in (("batches", self.batches), ("tiles", self.tiles or ())):
            if len(set(values)) != len(values):
                raise ValueError(f"{name} {list(values)} has duplicates; list each value once")
        return self


def load_benchmark_config(
    path: Path | None = None,
    overrides: Sequence[str] = (),
    flags: Mapping[str, Any] | None = None,
    *,
    flag_names: Mapping[str, str] | None = None,
) -> Loaded[BenchmarkConfig]:
    """Build a :class:`BenchmarkConfig`: *flags* > *overrides* (``--set key=value``) > YAML > defaults.

    Relative ``models`` and ``raster`` paths in the YAML file are relative to its folder.

    Raises:
        ConfigError: One line naming the option or key, the value and what is allowed.
    """
    from flair_deploy.ign import weights_config

    ign = weights_config(path, command="benchmark")
    if ign is not None:
        cfg = load_config(BenchmarkConfig, None, overrides, flags, base=ign.values, flag_names=flag_names)
        return Loaded(cfg, ign.notes)
    keys = ("models", "raster")
    return Loaded(load_config(BenchmarkConfig, path, overrides, flags, flag_names=flag_names, path_keys=keys))


@dataclass(frozen=True)
class Case:
    """One backend x precision x variant on one artifact, or the reason it cannot run.

    Attributes:
        backend: The runtime.
        precision: The precision of the rows.
        variant: The variant name (see :class:`~flair_deploy.benchmarking.report.Row`).
        artifact: The model file, or None when none exists for this case.
        options: Backend options for :func:`~flair_deploy.inference.backends.create_backend`.
        request_precision: Precision passed to the backend (None: the artifact's own).
        skip: Why the case is skipped, or None when it can run.
    """

    backend: BackendName
    precision: Precision
    variant: str
    artifact: Path | None
    options: Mapping[str, Any] = field(default_factory=dict)
    request_precision: Precision | None = None
    skip: str | None = None


def _stem(path: Path) -> str:
    return _PRECISION_SUFFIX.sub("", path.name[: -len(path.suffix)] if path.suffix else path.name)


def _precision_of(path: Path) -> Precision | None:
    m = _PRECISION_SUFFIX.search(path.name[: -len(path.suffix)] if path.suffix else path.name)
    return Precision(m.group(1).lower()) if m else None


def _artifacts(
    models: tuple[Path, ...], backend: BackendName, precision: Precision
) -> tuple[list[Path], list[str]]:
    """Artifacts of *backend* at *precision*: given files first, then siblings named by convention."""
    found: list[Path] = []
    looked: list[str] = []
    for m in models:
        # An unmarked ONNX/engine file is taken as FP32, the export's default graph.
        mine = SUFFIXES[m.suffix.lower()] is backend and (_precision_of(m) or Precision.FP32) is precision
        if mine and m not in found:
            found.append(m)
    for m in models:
        for ext in _EXTENSIONS[backend]:
            cand = m.parent / f"{_stem(m)}.{precision.value}{ext}"
            looked.append(cand.name)
            if cand.is_file() and cand not in found:
                found.append(cand)
    return found, list(dict.fromkeys(looked))


def _torch_cases(cfg: BenchmarkConfig, unavailable: str | None, cuda: bool) -> list[Case]:
    checkpoints = [m for m in cfg.models if SUFFIXES[m.suffix.lower()] is BackendName.TORCH]
    cases = []
    for precision in cfg.precisions:
        for variant in cfg.variants:
            opts = dict(TORCH_VARIANTS[variant])
            if cfg.threads is not None and not cuda:
                opts["threads"] = cfg.threads
            skip = unavailable
            if skip is None and not checkpoints:
                skip = "torch rows need a checkpoint (.ckpt, .pt, .pth, .safetensors); add one to --model"
            if skip is None and precision is Precision.INT8:
                skip = "torch has no INT8 path; INT8 runs as <name>.int8.onnx on onnxruntime"
            if skip is None and variant == "cuda_graphs" and not cuda:
                skip = "CUDA graphs need a CUDA device; run with --device cuda"
            if skip is not None:
                model = checkpoints[0] if checkpoints else None
                cases.append(Case(BackendName.TORCH, precision, variant, model, opts, precision, skip))
                continue
            cases += [Case(BackendName.TORCH, precision, variant, c, opts, precision) for c in checkpoints]
    return cases


def _file_cases(
    cfg: BenchmarkConfig,
    backend: BackendName,
    unavailable: str | None,
    variants: Mapping[str, Mapping[str, Any]],
) -> list[Case]:
    cases = []
    for precision in cfg.precisions:
        found, looked = _artifacts(cfg.models, backend, precision)
        for variant, opts in variants.items():
            skip = unavailable
            if skip is None and isinstance(opts.get("_skip"), str):
                skip = str(opts["_skip"])
            clean = {k: v for k, v in opts.items() if not k.startswith("_")}
            if skip is None and not found:
                if precision is Precision.BF16:
                    skip = f"no bf16 {backend.value} artifact (export writes fp32, fp16, int8); bf16 runs on torch"
                else:
                    how = (
                        "flair-deploy export CKPT --tensorrt"
                        if backend is BackendName.TENSORRT
                        else (
                            "flair-deploy export CKPT"
                            + {"fp16": " --fp16", "int8": " --int8 --calibration SRC"}.get(
                                precision.value, ""
                            )
                        )
                    )
                    skip = f"no {precision.value} artifact beside the model (looked for {', '.join(looked[:3])}); create it with `{how}`"
            if skip is not None:
                cases.append(
                    Case(backend, precision, variant, found[0] if found else None, clean, None, skip)
                )
                continue
            cases += [Case(backend, precision, variant, a, clean, None) for a in found]
    return cases


def plan_cases(
    cfg: BenchmarkConfig, available: Mapping[BackendName, str | None], ort_providers: tuple[str, ...] = ()
) -> list[Case]:
    """Expand a configuration into cases, one per backend x precision x variant x artifact.

    Args:
        cfg: The run configuration.
        available: :func:`~flair_deploy.inference.backends.available_backends` for the device: None
            where a backend can run, else why not.
        ort_providers: onnxruntime's available providers (decides the TensorRT-provider row).

    Returns:
        The cases, skipped ones included (with their reason).
    """
    cuda = cfg.device.startswith("cuda")
    ort_threads = {"threads": cfg.threads} if cfg.threads is not None and not cuda else {}
    if cuda:
        trt_ep: dict[str, Any] = {"provider": "tensorrt"}
        if "TensorrtExecutionProvider" not in ort_providers:
            trt_ep["_skip"] = (
                "onnxruntime has no TensorrtExecutionProvider here (needs onnxruntime-gpu and TensorRT)"
            )
        ort_variants: dict[str, Mapping[str, Any]] = {"cuda-iobinding": {}, "trt-ep": trt_ep}
    else:
        ort_variants = {"cpu": ort_threads}
    cases: list[Case] = []
    for backend in cfg.backends:
        reason = available.get(backend)
        if backend is BackendName.TORCH:
            cases += _torch_cases(cfg, reason, cuda)
        elif backend is BackendName.ONNXRUNTIME:
            cases += _file_cases(cfg, backend, reason, ort_variants)
        elif backend is BackendName.NULL:
            # No network: one row imitating the first model (its description), whatever the precision.
            cases.append(Case(backend, Precision.FP32, "host-ceiling", cfg.models[0], {}, None, reason))
        else:
            cases += _file_cases(cfg, backend, reason, {"engine": {}})
    return cases


def parity_reference(cfg: BenchmarkConfig) -> tuple[BackendName, Path] | None:
    """The FP32 reference for parity columns: the first checkpoint on torch, else the FP32 ONNX on onnxruntime."""
    for m in cfg.models:
        if SUFFIXES[m.suffix.lower()] is BackendName.TORCH:
            return BackendName.TORCH, m
    found, _ = _artifacts(cfg.models, BackendName.ONNXRUNTIME, Precision.FP32)
    return (BackendName.ONNXRUNTIME, found[0]) if found else None
