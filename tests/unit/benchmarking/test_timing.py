from __future__ import annotations

import mmap

import numpy as np
import pytest

from flair_deploy.benchmarking.timing import LatencyStats, MemoryPeak, measure, percentile


def test_measure_runs_warmup_then_at_least_min_iters():
    calls = []
    stats = measure(lambda: calls.append(1), min_time=0.0, min_iters=7, warmup_iters=3)
    assert len(calls) == 10
    assert stats.iterations == 7
    assert stats.warmup >= 0.0


def test_measure_keeps_going_until_min_time():
    stats = measure(lambda: None, min_time=0.05, min_iters=1, warmup_iters=0)
    assert stats.iterations > 1


def test_measure_calls_after_call_once_per_timed_call():
    seen = []
    measure(lambda: None, min_time=0.0, min_iters=4, warmup_iters=2, after_call=lambda: seen.append(1))
    assert len(seen) == 4


def test_percentiles_match_numpy():
    values = [float(v) for v in np.random.default_rng(0).random(101)]
    for q in (50, 90, 99):
        assert percentile(values, q) == pytest.approx(np.percentile(values, q))
    s = LatencyStats(samples=tuple(values))
    assert s.p50 == pytest.approx(np.median(values))
    assert s.p90 <= s.p99


def test_memory_peak_sees_an_allocation():
    with MemoryPeak(interval=0.001) as mem:
        before = mem.rss_peak_mib
        # Fresh anonymous pages, all touched: a heap allocation could be served from memory that
        # earlier tests freed but the process still holds, which would not raise RSS.
        block = mmap.mmap(-1, 64 * 2**20)
        block.write(b"\x01" * len(block))
    assert mem.rss_peak_mib >= before + 32
    assert mem.device_peak_mib is None  # CPU: no device figure
