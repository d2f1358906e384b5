"""Model-only measurement: one active backend, one batch shape, tiles already in host memory.

What is timed is ``backend.infer(batch)``: host batch in, host logits out, so on a GPU the copies are
included (as trtexec's "Latency", not its "GPU Compute Time"); the backend's own
:class:`~flair_deploy.inference.backends.StageTimes` split each call into host→device, compute and
device→host, and their medians are reported beside the latency.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from flair_deploy.benchmarking.timing import LatencyStats, MemoryPeak, measure
from flair_deploy.inference.backends import Backend, StageTimes
from flair_deploy.predictions import masked_argmax

__all__ = ["ModelOnlyResult", "Parity", "compare_logits", "measure_model_only", "reference_logits"]

Array = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Parity:
    """Agreement of a variant's logits with the FP32 reference on the same tiles.

    Attributes:
        argmax_agreement: Share of pixels with the same most probable active class.
        max_abs_dlogit: Largest absolute logit difference (all classes, all pixels).
    """

    argmax_agreement: float
    max_abs_dlogit: float


@dataclass(frozen=True)
class ModelOnlyResult:
    """One model-only measurement.

    Attributes:
        latency: Per-call latencies (seconds) and warm-up time.
        stages: Median seconds per call of ``h2d``, ``compute`` and ``d2h`` (from the backend).
        peak_rss_mib: Peak resident memory during warm-up and timing.
        peak_device_mib: Peak device memory, or None on CPU.
    """

    latency: LatencyStats
    stages: dict[str, float]
    peak_rss_mib: float
    peak_device_mib: float | None


def _metadata(backend: Backend, n: int) -> Array | None:
    spec = backend.description.metadata
    if spec is None:
        return None
    # A fixed, non-zero vector: the metadata MLP costs the same whatever the values.
    return np.random.default_rng(1).normal(size=(n, spec.dim)).astype(np.float32)


def measure_model_only(
    backend: Backend,
    batch: Array,
    *,
    min_time: float,
    min_iters: int,
    warmup_iters: int,
) -> ModelOnlyResult:
    """Time ``backend.infer`` on *batch* (warm-up excluded) and track memory.

    Args:
        backend: An active backend.
        batch: ``(N, C, H, W)`` float32 raw tiles.
        min_time: Minimum seconds of timed calls.
        min_iters: Minimum timed calls.
        warmup_iters: Untimed calls first (at least 1 is always made: first calls compile and allocate).

    Returns:
        Latencies, stage medians and memory peaks.
    """
    metadata = _metadata(backend, len(batch))
    stages: list[StageTimes] = []

    def call() -> None:
        backend.infer(batch, metadata)

    def collect() -> None:
        stages.append(backend.last_times)

    with MemoryPeak(device=backend.device) as mem:
        latency = measure(
            call,
            min_time=min_time,
            min_iters=min_iters,
            warmup_iters=max(1, warmup_iters),
            after_call=collect,
        )
    medians = {
        "h2d": statistics.median(s.h2d for s in stages),
        "compute": statistics.median(s.compute for s in stages),
        "d2h": statistics.median(s.d2h for s in stages),
    }
    return ModelOnlyResult(
        latency=latency, stages=medians, peak_rss_mib=mem.rss_peak_mib, peak_device_mib=mem.device_peak_mib
    )


def reference_logits(backend: Backend, tiles: Array, batch: int) -> Array:
    """Run *tiles* through an active backend in batches of *batch* and return all logits."""
    parts = [
        backend.infer(tiles[i : i + batch], _metadata(backend, len(tiles[i : i + batch])))
        for i in range(0, len(tiles), batch)
    ]
    return np.concatenate(parts)


def compare_logits(logits: Array, reference: Array, active: tuple[bool, ...]) -> Parity:
    """Compare logits with the reference's: argmax agreement (active classes) and max |Δlogit|.

    Raises:
        ValueError: If the shapes differ (different networks cannot be compared).
    """
    if logits.shape != reference.shape:
        raise ValueError(
            f"logits of shape {logits.shape} cannot be compared with reference {reference.shape}"
        )
    classes = masked_argmax(logits, active)
    ref_classes = masked_argmax(reference, active)
    delta = float(np.max(np.abs(logits.astype(np.float32) - reference))) if logits.size else 0.0
    return Parity(argmax_agreement=float(np.mean(classes == ref_classes)), max_abs_dlogit=delta)
