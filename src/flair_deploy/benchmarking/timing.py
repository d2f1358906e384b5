"""Timing and memory primitives shared by the model-only and end-to-end modes.

The method follows trtexec and Ultralytics' ``ProfileModels``: warm-up runs are excluded and reported
apart, then the callable runs until *both* a minimum wall time and a minimum number of iterations are
reached, so fast models get many samples and slow ones still get enough for a stable median.
Every call is synchronous (backends return host arrays), so each sample is a full batch latency.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

__all__ = ["LatencyStats", "MemoryPeak", "measure", "percentile"]


def percentile(values: list[float], q: float) -> float:
    """Return the *q*-th percentile (0-100) of *values* with linear interpolation (numpy's default)."""
    if not values:
        raise ValueError("percentile of an empty list")
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


@dataclass(frozen=True)
class LatencyStats:
    """Summary of per-call latencies in seconds.

    Attributes:
        samples: Every timed call, in order.
        warmup: Seconds spent in the warm-up calls (excluded from the samples).
    """

    samples: tuple[float, ...]
    warmup: float = 0.0

    @property
    def iterations(self) -> int:
        """Number of timed calls."""
        return len(self.samples)

    @property
    def total(self) -> float:
        """Seconds spent in timed calls."""
        return sum(self.samples)

    @property
    def p50(self) -> float:
        """Median latency."""
        return statistics.median(self.samples)

    @property
    def p90(self) -> float:
        """90th percentile latency."""
        return percentile(list(self.samples), 90.0)

    @property
    def p99(self) -> float:
        """99th percentile latency."""
        return percentile(list(self.samples), 99.0)

    @property
    def mean(self) -> float:
        """Mean latency."""
        return statistics.fmean(self.samples)


def measure(
    fn: Callable[[], Any],
    *,
    min_time: float = 2.0,
    min_iters: int = 10,
    warmup_iters: int = 2,
    max_iters: int = 100_000,
    after_call: Callable[[], None] | None = None,
) -> LatencyStats:
    """Time *fn* after warm-up until both *min_time* seconds and *min_iters* calls are reached.

    Args:
        fn: The call to time (e.g. ``lambda: backend.infer(batch)``).
        min_time: Minimum total seconds of timed calls.
        min_iters: Minimum number of timed calls.
        warmup_iters: Untimed calls first (first-call compilation, CUDA-graph capture, allocator growth).
        max_iters: Hard cap on timed calls, for very fast callables.
        after_call: Called after each timed call, outside the timed region (e.g. to collect the
            backend's stage times).

    Returns:
        The latency samples and the warm-up time.
    """
    start = time.perf_counter()
    for _ in range(warmup_iters):
        fn()
    warmup = time.perf_counter() - start
    samples: list[float] = []
    began = time.perf_counter()
    while len(samples) < max_iters and (len(samples) < min_iters or time.perf_counter() - began < min_time):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
        if after_call is not None:
            after_call()
    return LatencyStats(samples=tuple(samples), warmup=warmup)


@dataclass
class MemoryPeak:
    """Track peak host RSS and device memory while a block runs (``with MemoryPeak() as mem:``).

    Host RSS is sampled by a background thread (every *interval* seconds) because the process-wide
    ``ru_maxrss`` cannot be reset between rows. On CUDA, torch's allocator peak is reset on entry and
    read on exit (it sees torch allocations only); when NVML is importable, the device's used memory is
    sampled too, which also covers onnxruntime and TensorRT allocations (and any other process on the GPU).

    Attributes:
        device: ``cpu`` or ``cuda[:i]``.
        interval: Sampling period in seconds.
        rss_peak_mib: Peak resident set size of this process.
        torch_peak_mib: ``torch.cuda.max_memory_allocated`` over the block, or None.
        nvml_peak_mib: Peak used device memory seen by NVML, or None.
    """

    device: str = "cpu"
    interval: float = 0.005
    rss_peak_mib: float = 0.0
    torch_peak_mib: float | None = None
    nvml_peak_mib: float | None = None
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)
    _nvml: Any = field(default=None, repr=False)
    _handle: Any = field(default=None, repr=False)

    @property
    def device_peak_mib(self) -> float | None:
        """The device peak to report: NVML's when available, else torch's allocator peak."""
        return self.nvml_peak_mib if self.nvml_peak_mib is not None else self.torch_peak_mib

    def __enter__(self) -> Self:
        import psutil

        self._proc = psutil.Process()
        self.rss_peak_mib = self._proc.memory_info().rss / 2**20
        if self.device.startswith("cuda"):
            import torch

            index = int(self.device.partition(":")[2] or 0)
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats(index)
            try:
                import pynvml

                pynvml.nvmlInit()
                self._nvml = pynvml
                self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                self.nvml_peak_mib = 0.0
            except Exception:  # noqa: BLE001  (NVML is optional; torch's figure remains)
                self._nvml = None
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, name="memory-peak", daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample_once()

    def _sample_once(self) -> None:
        self.rss_peak_mib = max(self.rss_peak_mib, self._proc.memory_info().rss / 2**20)
        if self._nvml is not None:
            used = self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used / 2**20
            self.nvml_peak_mib = max(self.nvml_peak_mib or 0.0, used)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample_once()
        if self.device.startswith("cuda"):
            import torch

            if torch.cuda.is_available():
                index = int(self.device.partition(":")[2] or 0)
                self.torch_peak_mib = torch.cuda.max_memory_allocated(index) / 2**20
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            finally:
                self._nvml = None
