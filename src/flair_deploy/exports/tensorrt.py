"""TensorRT engines built from the exported ONNX graphs, plus a JSON sidecar that describes them.

Precision lives in the ONNX graph (FP16 casts, Q/DQ nodes), so the build step only compiles the graph
it is given. The builder is version-aware:

* **TensorRT 11.x** networks are always strongly typed: no precision flags exist; the FP16 / Q/DQ
  graph decides.
* **TensorRT 10.x** networks are made strongly typed too (``NetworkDefinitionCreationFlag.
  STRONGLY_TYPED``) and get no precision builder flag, so the same ONNX runs the same precisions on
  both versions (a weakly typed 10.x network with ``FP16`` may demote the graph's FP32 islands).

Engines are not portable across TensorRT versions or GPU architectures, so every build is keyed on
(ONNX SHA-256, TensorRT version, GPU compute capability, precision, optimisation profile): a cached
engine with the same key is reused, anything else is rebuilt. A timing cache per (TensorRT version,
compute capability) makes rebuilds fast and deterministic.

The engine file is the plain serialized plan, byte for byte as TensorRT wrote it (tools such as
``trtexec`` load it); the description and the engine facts go to ``<engine>.json``, a
:class:`~flair_deploy.description.ModelDescription` whose ``provenance.extra`` holds the facts (read
them back with :meth:`EngineFacts.from_description`). The sidecar rule and the readers are
:mod:`flair_deploy.artifacts`' (:func:`~flair_deploy.artifacts.sidecar_path`).

:func:`ort_tensorrt_provider_options` gives the equivalent settings for onnxruntime's TensorRT
execution provider.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from flair_deploy._optional import require
from flair_deploy.artifacts import read_engine_description, save_sidecar, sidecar_path
from flair_deploy.atomic import atomic_path
from flair_deploy.description import ModelDescription, Precision, file_sha256
from flair_deploy.errors import ExportError, OutputError
from flair_deploy.exports.config import TensorRTOptions
from flair_deploy.exports.onnx import INPUT_IMAGE, INPUT_METADATA
from flair_deploy.tensorrt_options import Shape, tensorrt_provider_options

__all__ = [
    "SUPPORTED_TRT_MAJORS",
    "EngineFacts",
    "EngineProfile",
    "build_engine",
    "default_cache_dir",
    "engine_cache_key",
    "engine_profile",
    "gpu_compute_capability",
    "ort_tensorrt_provider_options",
    "read_engine_description",
    "sidecar_path",
    "trt_major",
]

#: TensorRT major versions the builder knows how to drive.
SUPPORTED_TRT_MAJORS = (10, 11)
# CUDA driver API attribute ids (cuda.h: CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR / _MINOR).
_CC_MAJOR, _CC_MINOR = 75, 76
_FACT_PREFIX = "tensorrt."
_DEFAULT_OPTIONS = TensorRTOptions()


@dataclass(frozen=True)
class EngineProfile:
    """One optimisation profile: per input, the (min, opt, max) shapes.

    Attributes:
        shapes: ``{input name: (min shape, opt shape, max shape)}``.
    """

    shapes: Mapping[str, tuple[Shape, Shape, Shape]]

    def to_dict(self) -> dict[str, list[list[int]]]:
        """Return a JSON-compatible ``{name: [min, opt, max]}``."""
        return {name: [list(s) for s in triple] for name, triple in sorted(self.shapes.items())}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EngineProfile:
        """Inverse of :meth:`to_dict`."""
        return cls({k: (tuple(v[0]), tuple(v[1]), tuple(v[2])) for k, v in data.items()})


def engine_profile(
    description: ModelDescription,
    options: TensorRTOptions,
    *,
    tile_size: int | None = None,
    dynamic_hw: bool = False,
) -> EngineProfile:
    """Return the optimisation profile of an engine for *description*.

    The batch ranges over ``options.min/opt/max_batch``. Height and width are fixed at the tile size
    (TensorRT is fastest on one static tile shape) unless the ONNX graph has dynamic H/W, in which
    case they range over ``options.min_tile`` .. ``options.max_tile`` with the tile size as optimum.

    Raises:
        ExportError: If a profile tile is not a multiple of the output stride, or dynamic tiles are
            asked for a graph exported with fixed H/W.
    """
    tile = tile_size or description.tile_size
    lo = options.min_tile or tile
    hi = options.max_tile or tile
    if (lo != tile or hi != tile) and not dynamic_hw:
        raise ExportError(
            f"TensorRT tile range {lo}..{hi} needs a graph with dynamic height/width; add --dynamic-hw"
        )
    stride = description.architecture.output_stride
    for t in (lo, tile, hi):
        if t % stride:
            raise ExportError(f"TensorRT profile tile {t} is not a multiple of the output stride {stride}")
    if not lo <= tile <= hi:
        raise ExportError(f"TensorRT profile tiles must satisfy min {lo} <= export tile {tile} <= max {hi}")
    c = description.in_channels
    shapes: dict[str, tuple[Shape, Shape, Shape]] = {
        INPUT_IMAGE: (
            (options.min_batch, c, lo, lo),
            (options.opt_batch, c, tile, tile),
            (options.max_batch, c, hi, hi),
        )
    }
    if description.metadata is not None:
        d = description.metadata.dim
        shapes[INPUT_METADATA] = ((options.min_batch, d), (options.opt_batch, d), (options.max_batch, d))
    return EngineProfile(shapes)


def trt_major(version: str) -> int:
    """Return the major version of a TensorRT version string.

    Raises:
        ExportError: If the version is not one :data:`SUPPORTED_TRT_MAJORS` names.
    """
    try:
        major = int(version.split(".")[0])
    except ValueError:
        raise ExportError(f"cannot parse the TensorRT version {version!r}") from None
    if major not in SUPPORTED_TRT_MAJORS:
        raise ExportError(
            f"TensorRT {version} is not supported; install TensorRT 10.x or 11.x (pip install 'tensorrt>=10,<12')"
        )
    return major


def engine_cache_key(
    onnx_sha256: str,
    trt_version: str,
    compute_capability: str,
    precision: Precision | str,
    profile: EngineProfile,
) -> str:
    """Return the key a built engine is cached under (24 hex digits of a SHA-256).

    Every input that makes an engine non-portable is part of the key.
    """
    payload = json.dumps(
        {
            "onnx": onnx_sha256,
            "tensorrt": trt_version,
            "sm": compute_capability,
            "precision": str(Precision(precision).value),
            "profile": profile.to_dict(),
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def default_cache_dir() -> Path:
    """Return ``~/.cache/flair-deploy/tensorrt`` (engines and timing caches)."""
    return Path.home() / ".cache" / "flair-deploy" / "tensorrt"


def gpu_compute_capability(device: int = 0) -> str:
    """Return the compute capability (e.g. ``"8.9"``) of CUDA device *device*.

    Reads it through the CUDA driver library, so no CUDA-enabled PyTorch is needed.

    Raises:
        ExportError: If no NVIDIA driver or no such GPU is present.
    """
    names = ["nvcuda.dll"] if sys.platform == "win32" else ["libcuda.so.1", "libcuda.so", "libcuda.dylib"]
    lib = None
    for name in names:
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    if lib is None:
        raise ExportError(
            "TensorRT needs an NVIDIA GPU, but no NVIDIA driver is installed (libcuda not found); "
            "build engines on the deployment GPU machine"
        )
    if (rc := lib.cuInit(0)) != 0:
        raise ExportError(f"TensorRT needs an NVIDIA GPU, but the CUDA driver found none (cuInit error {rc})")
    count = ctypes.c_int(0)
    lib.cuDeviceGetCount(ctypes.byref(count))
    if count.value <= device:
        raise ExportError(f"CUDA device {device} does not exist ({count.value} GPUs visible)")
    handle = ctypes.c_int(0)
    lib.cuDeviceGet(ctypes.byref(handle), device)
    major, minor = ctypes.c_int(0), ctypes.c_int(0)
    lib.cuDeviceGetAttribute(ctypes.byref(major), _CC_MAJOR, handle)
    lib.cuDeviceGetAttribute(ctypes.byref(minor), _CC_MINOR, handle)
    return f"{major.value}.{minor.value}"


@dataclass(frozen=True)
class EngineFacts:
    """What a serialized engine is bound to, stored in its sidecar.

    Attributes:
        tensorrt_version: TensorRT version that built it.
        compute_capability: GPU compute capability it was built for (``"8.9"``).
        precision: Precision of the ONNX graph it was built from.
        strongly_typed: Whether the network was strongly typed (always on TensorRT 11).
        builder_flags: Precision builder flags set (TensorRT 10 only), e.g. ``("FP16",)``.
        profile: The optimisation profile.
        onnx_sha256: SHA-256 of the source ONNX file.
        engine_sha256: SHA-256 of the engine file.
        cache_key: Engine-cache key (see :func:`engine_cache_key`).
        from_cache: Whether the engine was reused from the cache rather than built.
    """

    tensorrt_version: str
    compute_capability: str
    precision: Precision
    strongly_typed: bool
    builder_flags: tuple[str, ...]
    profile: EngineProfile
    onnx_sha256: str
    engine_sha256: str
    cache_key: str
    from_cache: bool = False

    def to_extra(self) -> dict[str, str]:
        """Return the facts as ``provenance.extra`` entries (strings, prefixed ``tensorrt.``)."""
        facts = {
            "version": self.tensorrt_version,
            "compute_capability": self.compute_capability,
            "strongly_typed": json.dumps(self.strongly_typed),
            "builder_flags": json.dumps(list(self.builder_flags)),
            "profile": json.dumps(self.profile.to_dict(), sort_keys=True),
            "onnx_sha256": self.onnx_sha256,
            "engine_sha256": self.engine_sha256,
            "cache_key": self.cache_key,
        }
        return {_FACT_PREFIX + k: v for k, v in facts.items()}

    @classmethod
    def from_description(cls, description: ModelDescription) -> EngineFacts:
        """Read the facts back from a sidecar's description.

        Raises:
            ExportError: If the description carries no engine facts.
        """
        extra = description.provenance.extra
        try:
            return cls(
                tensorrt_version=extra[_FACT_PREFIX + "version"],
                compute_capability=extra[_FACT_PREFIX + "compute_capability"],
                precision=description.provenance.precision,
                strongly_typed=bool(json.loads(extra[_FACT_PREFIX + "strongly_typed"])),
                builder_flags=tuple(json.loads(extra[_FACT_PREFIX + "builder_flags"])),
                profile=EngineProfile.from_dict(json.loads(extra[_FACT_PREFIX + "profile"])),
                onnx_sha256=extra[_FACT_PREFIX + "onnx_sha256"],
                engine_sha256=extra[_FACT_PREFIX + "engine_sha256"],
                cache_key=extra[_FACT_PREFIX + "cache_key"],
            )
        except (KeyError, ValueError) as exc:
            raise ExportError(f"the description carries no TensorRT engine facts ({exc})") from None


def _write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    description: ModelDescription,
    *,
    options: TensorRTOptions = _DEFAULT_OPTIONS,
    tile_size: int | None = None,
    dynamic_hw: bool = False,
    trt: ModuleType | None = None,
    compute_capability: str | None = None,
) -> EngineFacts:
    """Build (or reuse from the cache) a TensorRT engine for *onnx_path* and write its sidecar.

    Args:
        onnx_path: The FP32, FP16 or Q/DQ INT8 ONNX file; its precision comes from *description*.
        engine_path: Destination ``.engine`` (plan bytes exactly as TensorRT serialized them).
        description: The ONNX file's description; the sidecar gets it plus the engine facts.
        options: Profile, workspace and cache options.
        tile_size: Export tile size (None: the description's).
        dynamic_hw: Whether the ONNX graph has dynamic height and width.
        trt: The ``tensorrt`` module (tests pass a fake); None imports it.
        compute_capability: GPU compute capability; None queries the driver.

    Returns:
        The engine facts.

    Raises:
        MissingDependencyError: If TensorRT is not installed.
        ExportError: If no GPU is present, the version is unsupported, or parsing/building fails.
        OutputError: If the engine or sidecar cannot be written.
    """
    if trt is None:
        trt = require("tensorrt", purpose="building TensorRT engines")
    sm = compute_capability or gpu_compute_capability()
    version = str(trt.__version__)
    major = trt_major(version)
    precision = description.provenance.precision
    profile = engine_profile(description, options, tile_size=tile_size, dynamic_hw=dynamic_hw)
    onnx_sha = file_sha256(onnx_path)
    key = engine_cache_key(onnx_sha, version, sm, precision, profile)
    cache_dir = options.cache_dir or default_cache_dir()
    cached = cache_dir / "engines" / f"{key}.engine"
    flags: tuple[str, ...] = ()  # precision is in the graph: no builder precision flag on any version
    strongly_typed = True
    from_cache = options.use_cache and cached.is_file()
    if from_cache:
        with atomic_path(engine_path) as tmp:
            shutil.copyfile(cached, tmp)
    else:
        plan = _build_plan(trt, onnx_path, profile, options, major, cache_dir, version, sm)
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            _write_bytes(cached, plan)
        except (OSError, OutputError):
            pass  # the cache is an optimisation; an unwritable cache folder must not fail the export
        _write_bytes(engine_path, plan)
    facts = EngineFacts(
        tensorrt_version=version,
        compute_capability=sm,
        precision=precision,
        strongly_typed=strongly_typed,
        builder_flags=flags,
        profile=profile,
        onnx_sha256=onnx_sha,
        engine_sha256=file_sha256(engine_path),
        cache_key=key,
        from_cache=from_cache,
    )
    extra = {**description.provenance.extra, **facts.to_extra()}
    try:
        save_sidecar(engine_path, description.with_provenance(extra=extra))
    except OutputError:
        engine_path.unlink(missing_ok=True)
        raise
    return facts


def _build_plan(
    trt: ModuleType,
    onnx_path: Path,
    profile: EngineProfile,
    options: TensorRTOptions,
    major: int,
    cache_dir: Path,
    version: str,
    sm: str,
) -> bytes:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # Strongly typed on every version: TensorRT 11 always is (its STRONGLY_TYPED flag is deprecated and
    # ignored); TensorRT 10 is asked to be, so that the graph's casts and Q/DQ decide every precision.
    creation = 0 if major >= 11 else 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(creation)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        first = errors[0].strip().splitlines()[0] if errors else "unknown error"
        raise ExportError(f"TensorRT {version} cannot parse {onnx_path.name}: {first}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gib * (1 << 30)))
    opt_profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profile.shapes.items():
        opt_profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(opt_profile)
    timing_path = cache_dir / f"timing-trt{version}-sm{sm}.cache"
    seed = timing_path.read_bytes() if timing_path.is_file() else b""
    timing = config.create_timing_cache(seed)
    config.set_timing_cache(timing, False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(
            f"TensorRT {version} failed to build an engine from {onnx_path.name}; "
            "rerun with the TensorRT logger at VERBOSE (trtexec --verbose) to see why"
        )
    try:
        timing_path.parent.mkdir(parents=True, exist_ok=True)
        _write_bytes(timing_path, bytes(memoryview(config.get_timing_cache().serialize())))
    except (OSError, OutputError):
        pass  # as for the engine cache: speed only
    return bytes(memoryview(serialized))


def ort_tensorrt_provider_options(
    description: ModelDescription,
    *,
    options: TensorRTOptions = _DEFAULT_OPTIONS,
    tile_size: int | None = None,
    dynamic_hw: bool = False,
    device_id: int = 0,
) -> dict[str, str]:
    """Return onnxruntime TensorRT execution-provider options matching :func:`build_engine`.

    The profile is :func:`engine_profile`'s and the options are
    :func:`flair_deploy.tensorrt_options.tensorrt_provider_options`' (the one writer of these options,
    also used by the onnxruntime backend); the caches live under ``options.cache_dir/ort``.

    Returns:
        Provider options as strings (onnxruntime's documented names).
    """
    profile = engine_profile(description, options, tile_size=tile_size, dynamic_hw=dynamic_hw)
    return tensorrt_provider_options(
        shapes=profile.shapes,
        cache_dir=(options.cache_dir or default_cache_dir()) / "ort",
        device_id=device_id,
        workspace_bytes=int(options.workspace_gib * (1 << 30)),
        engine_cache=options.use_cache,
    )
