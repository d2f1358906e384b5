"""Where a number was measured: the environment fingerprint and the hardware ceiling.

A throughput figure means nothing without the machine behind it, so every benchmark result carries a
:class:`Fingerprint` (CPU model and SIMD flags, cores, clock, thread settings, GPU, driver, CUDA and
the versions of every runtime) and a :class:`Ceiling` per precision: the compute rate the hardware
could reach at best, against which each row's achieved GFLOP/s is reported as a fraction.

CPU ceilings are estimated as ``physical cores x GHz x FLOP/cycle/core``:

* AVX2 + FMA: two 256-bit FMA pipes = 2 x 8 lanes x 2 FLOP = **32 FP32 FLOP/cycle/core**;
* AVX-512 on Intel server cores: two 512-bit FMA pipes = **64**;
* AVX-512 on AMD Zen 4 (family 25): executed on 256-bit pipes ("double pumped"), so still **32**;
  Zen 5 (family 26) has full-width pipes: **64**.

Virtual machines usually report the base clock in ``/proc/cpuinfo`` while cores run at boost clock, so
the estimate is a lower bound there; pass the measured figure with ``--peak-gflops`` (docs/benchmarks.md
uses 205 GFLOP/s = 2 cores x 3.2 GHz x 32 for the development machine) or probe it with
:func:`measure_peak_gflops`. GPU ceilings come from a small datasheet table (dense tensor-core rates)
or the same matmul probe.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

from pydantic import BaseModel, ConfigDict

from flair_deploy.description import Precision

__all__ = [
    "GPU_PEAK_TFLOPS",
    "Ceiling",
    "Fingerprint",
    "collect_fingerprint",
    "cpu_ceiling",
    "gpu_ceiling",
    "measure_peak_gflops",
]

_SIMD_FLAGS = (
    "fma",
    "avx2",
    "avx512f",
    "avx512_bf16",
    "avx512_fp16",
    "avx512_vnni",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)

#: Dense (no sparsity) datasheet peaks in TFLOP/s (TOPS for int8) by GPU name fragment, most specific
#: first. FP32 is the TF32 tensor-core rate because PyTorch's cuDNN convolutions use TF32 by default.
GPU_PEAK_TFLOPS: tuple[tuple[str, dict[Precision, float]], ...] = (
    ("H200", {Precision.FP32: 494.7, Precision.FP16: 989.4, Precision.BF16: 989.4, Precision.INT8: 1978.9}),
    (
        "H100 PCIe",
        {Precision.FP32: 378.0, Precision.FP16: 756.0, Precision.BF16: 756.0, Precision.INT8: 1513.0},
    ),
    ("H100", {Precision.FP32: 494.7, Precision.FP16: 989.4, Precision.BF16: 989.4, Precision.INT8: 1978.9}),
    ("A100", {Precision.FP32: 156.0, Precision.FP16: 312.0, Precision.BF16: 312.0, Precision.INT8: 624.0}),
    ("L40S", {Precision.FP32: 183.0, Precision.FP16: 362.0, Precision.BF16: 362.0, Precision.INT8: 733.0}),
    ("L4", {Precision.FP32: 60.0, Precision.FP16: 121.0, Precision.BF16: 121.0, Precision.INT8: 242.0}),
    ("A10", {Precision.FP32: 62.5, Precision.FP16: 125.0, Precision.BF16: 125.0, Precision.INT8: 250.0}),
    ("T4", {Precision.FP32: 8.1, Precision.FP16: 65.0, Precision.BF16: 8.1, Precision.INT8: 130.0}),
)


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Ceiling(_Frozen):
    """The best compute rate the hardware can reach at one precision.

    Attributes:
        precision: The arithmetic precision this ceiling applies to.
        gflops: Peak rate in GFLOP/s (GOP/s for int8).
        source: How it was obtained, in words (the formula, the datasheet entry or the probe).
    """

    precision: Precision
    gflops: float
    source: str


class Fingerprint(_Frozen):
    """The environment a benchmark ran in (every field is plain JSON).

    Attributes:
        timestamp: UTC time the fingerprint was taken (ISO 8601).
        platform: ``platform.platform()``.
        python: Python version.
        cpu_model: CPU model name from ``/proc/cpuinfo`` (or ``platform.processor()``).
        cpu_vendor: ``GenuineIntel``, ``AuthenticAMD``...
        cpu_family: CPU family number (distinguishes AMD Zen 4 from Zen 5).
        cpu_flags: The SIMD flags that matter for inference (AVX2, FMA, AVX-512, VNNI, AMX...).
        physical_cores: Physical cores available to this process.
        logical_cores: Logical CPUs available to this process.
        cpu_mhz: Clock reported by the OS (often the base clock in virtual machines).
        torch_threads: ``torch.get_num_threads()``, or None without torch (the runtime install).
        torch_interop_threads: ``torch.get_num_interop_threads()``, or None without torch.
        thread_env: ``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``... as set in the environment.
        gpu_name: CUDA device name, or None.
        gpu_memory_gib: Total device memory, or None.
        gpu_driver: NVIDIA driver version (from NVML or nvidia-smi), or None.
        cuda: CUDA version torch was built with, or None.
        cudnn: cuDNN version torch uses, or None.
        versions: Versions of torch, onnxruntime, tensorrt, GDAL, rasterio, numpy, flair-deploy (None when
            not installed).
        ort_providers: onnxruntime's available execution providers.
    """

    timestamp: str
    platform: str
    python: str
    cpu_model: str
    cpu_vendor: str
    cpu_family: int | None
    cpu_flags: tuple[str, ...]
    physical_cores: int
    logical_cores: int
    cpu_mhz: float | None
    torch_threads: int | None
    torch_interop_threads: int | None
    thread_env: dict[str, str]
    gpu_name: str | None = None
    gpu_memory_gib: float | None = None
    gpu_driver: str | None = None
    cuda: str | None = None
    cudnn: str | None = None
    versions: dict[str, str | None]
    ort_providers: tuple[str, ...] = ()


def _cpuinfo() -> dict[str, str]:
    """First processor block of /proc/cpuinfo as a dict (empty off Linux)."""
    out: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        if not line.strip():
            if out:
                break  # the first block describes every core on the machines we target
            continue
        key, _, value = line.partition(":")
        out.setdefault(key.strip(), value.strip())
    return out


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _gpu_driver() -> str | None:
    try:
        pynvml = importlib.import_module("pynvml")
        pynvml.nvmlInit()
        try:
            driver = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
        return driver.decode() if isinstance(driver, bytes) else str(driver)
    except Exception:  # noqa: BLE001, S110  (NVML is optional; nvidia-smi is the fallback below)
        pass
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        res = subprocess.run(
            [smi, "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    first = res.stdout.strip().splitlines()
    return first[0].strip() if res.returncode == 0 and first else None


def _torch_or_none() -> ModuleType | None:
    try:
        import torch
    except ImportError:
        return None
    return torch


def collect_fingerprint(device: str = "cpu") -> Fingerprint:
    """Describe the machine, the thread settings and the installed runtimes.

    Args:
        device: ``cpu`` or ``cuda[:i]``; GPU fields are filled for the CUDA device when one is visible.

    Returns:
        The fingerprint.
    """
    import numpy as np
    import psutil

    # The runtime install (`pip install flair-deploy`) benchmarks ONNX models without torch.
    torch = _torch_or_none()
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    logical = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    physical = psutil.cpu_count(logical=False) or logical
    family = info.get("cpu family")
    mhz = info.get("cpu MHz")

    versions: dict[str, str | None] = {
        "flair-deploy": _version("flair-deploy"),
        "torch": torch.__version__ if torch is not None else None,
        "onnxruntime": _version("onnxruntime") or _version("onnxruntime-gpu"),
        "tensorrt": _version("tensorrt") or _version("tensorrt-cu12") or _version("tensorrt-cu13"),
        "numpy": np.__version__,
        "rasterio": _version("rasterio"),
        "gdal": None,
    }
    try:
        import rasterio

        versions["gdal"] = str(rasterio.__gdal_version__)
    except ImportError:
        pass
    providers: tuple[str, ...] = ()
    try:
        import onnxruntime

        providers = tuple(onnxruntime.get_available_providers())
    except ImportError:
        pass

    gpu_name = gpu_mem = None
    cuda = cudnn = driver = None
    if torch is not None and device.startswith("cuda") and torch.cuda.is_available():
        index = int(device.partition(":")[2] or 0)
        props = torch.cuda.get_device_properties(index)
        gpu_name = str(props.name)
        gpu_mem = round(props.total_memory / 2**30, 2)
        cuda = torch.version.cuda
        cudnn_v = torch.backends.cudnn.version()
        cudnn = str(cudnn_v) if cudnn_v is not None else None
        driver = _gpu_driver()

    return Fingerprint(
        timestamp=datetime.now(UTC).isoformat(timespec="seconds"),
        platform=platform.platform(),
        python=sys.version.split()[0],
        cpu_model=info.get("model name") or platform.processor() or "unknown",
        cpu_vendor=info.get("vendor_id", "unknown"),
        cpu_family=int(family) if family and family.isdigit() else None,
        cpu_flags=tuple(f for f in _SIMD_FLAGS if f in flags),
        physical_cores=min(int(physical), logical),
        logical_cores=logical,
        cpu_mhz=float(mhz) if mhz else None,
        torch_threads=torch.get_num_threads() if torch is not None else None,
        torch_interop_threads=torch.get_num_interop_threads() if torch is not None else None,
        thread_env={
            k: os.environ[k]
            for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "ORT_NUM_THREADS")
            if k in os.environ
        },
        gpu_name=gpu_name,
        gpu_memory_gib=gpu_mem,
        gpu_driver=driver,
        cuda=cuda,
        cudnn=cudnn,
        versions=versions,
        ort_providers=providers,
    )


def _flop_per_cycle(fp: Fingerprint) -> tuple[int, str]:
    flags = set(fp.cpu_flags)
    if "avx512f" in flags:
        # Zen 4 executes AVX-512 on two 256-bit pipes: no more FP32 FLOP/cycle than AVX2.
        if fp.cpu_vendor == "AuthenticAMD" and (fp.cpu_family or 0) < 26:
            return 32, "AVX-512 on 256-bit pipes (AMD Zen 4)"
        return 64, "AVX-512, 2 FMA pipes"
    if "avx2" in flags and "fma" in flags:
        return 32, "AVX2+FMA"
    if "avx2" in flags or "avx" in flags:
        return 16, "AVX without FMA"
    return 8, "SSE"


def cpu_ceiling(fp: Fingerprint, precision: Precision, *, ghz: float | None = None) -> Ceiling:
    """Estimate the CPU's peak rate at *precision* from cores, clock and SIMD width.

    INT8 with VNNI (``avx512_vnni``/``avx_vnni``) counts 4 int8 ops per FP32 FLOP slot, without it 2;
    BF16 with ``avx512_bf16`` counts 2; FP16 counts 2 with ``avx512_fp16`` and is emulated (1) otherwise.

    Args:
        fp: The fingerprint.
        precision: Arithmetic precision of the row.
        ghz: Clock to use instead of the reported one (e.g. a measured boost clock).

    Returns:
        The estimated ceiling, with the formula as its source.
    """
    per_cycle, what = _flop_per_cycle(fp)
    clock = ghz if ghz is not None else (fp.cpu_mhz or 2000.0) / 1000.0
    flags = set(fp.cpu_flags)
    factor, why = 1, ""
    if precision is Precision.INT8:
        factor, why = (4, " x4 int8 (VNNI)") if flags & {"avx512_vnni", "avx_vnni"} else (2, " x2 int8")
    elif precision is Precision.BF16 and "avx512_bf16" in flags:
        factor, why = 2, " x2 bf16 (AVX512_BF16)"
    elif precision is Precision.FP16 and "avx512_fp16" in flags:
        factor, why = 2, " x2 fp16 (AVX512_FP16)"
    gflops = fp.physical_cores * clock * per_cycle * factor
    source = f"estimated: {fp.physical_cores} cores x {clock:.2f} GHz x {per_cycle} FLOP/cycle ({what}){why}"
    return Ceiling(precision=precision, gflops=round(gflops, 1), source=source)


def gpu_ceiling(gpu_name: str, precision: Precision) -> Ceiling | None:
    """Look up a GPU's dense datasheet peak at *precision*, or None for an unknown GPU."""
    for fragment, table in GPU_PEAK_TFLOPS:
        if fragment.lower() in gpu_name.lower():
            return Ceiling(
                precision=precision,
                gflops=table[precision] * 1000.0,
                source=f"datasheet: {fragment} dense {precision.value} {table[precision]:g} TFLOP/s",
            )
    return None


def measure_peak_gflops(device: str, precision: Precision, *, seconds: float = 1.0) -> Ceiling:
    """Probe the achievable matrix-multiply rate (a practical ceiling) with torch.

    Args:
        device: ``cpu`` or ``cuda[:i]``.
        precision: FP32, FP16 or BF16 (INT8 is probed as FP16 on GPUs and FP32 on CPUs, and labelled so).
        seconds: Roughly how long to run the probe.

    Returns:
        The measured ceiling.
    """
    import torch

    dtypes = {Precision.FP32: torch.float32, Precision.FP16: torch.float16, Precision.BF16: torch.bfloat16}
    cuda = device.startswith("cuda")
    probe = precision if precision in dtypes else (Precision.FP16 if cuda else Precision.FP32)
    n = 8192 if cuda else 2048
    dev = torch.device(device)
    a = torch.randn(n, n, device=dev, dtype=dtypes[probe])
    b = torch.randn(n, n, device=dev, dtype=dtypes[probe])

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(dev)

    for _ in range(2):  # warm-up: library selection, clocks ramping up
        a @ b
    sync()
    iters, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or iters < 3:
        a @ b
        iters += 1
        if cuda and iters % 10:
            continue
        sync()
    sync()
    elapsed = time.perf_counter() - start
    gflops = 2.0 * n**3 * iters / elapsed / 1e9
    return Ceiling(
        precision=precision,
        gflops=round(gflops, 1),
        source=f"measured: {n}x{n} {probe.value} matmul on {device}, {iters} runs",
    )
