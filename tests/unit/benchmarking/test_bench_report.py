"""Benchmark report files: written whole or not at all; a full disk is one line."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from flair_deploy.benchmarking import BenchmarkReport, load_report, write_json, write_markdown
from flair_deploy.benchmarking.fingerprint import collect_fingerprint
from flair_deploy.errors import OutputError


@pytest.fixture
def report() -> BenchmarkReport:
    return BenchmarkReport(fingerprint=collect_fingerprint("cpu"), ceilings=[], settings={}, rows=[])


def test_reports_go_into_new_folders_and_round_trip(report, tmp_path):
    path = tmp_path / "runs" / "bench.json"
    write_json(report, path)
    assert load_report(path) == report
    assert [p.name for p in path.parent.iterdir()] == ["bench.json"]


@pytest.mark.parametrize("writer", [write_json, write_markdown])
def test_a_full_disk_is_one_line_and_keeps_the_previous_report(report, tmp_path, monkeypatch, writer):
    path = tmp_path / "bench.out"
    path.write_text("previous report")

    def full(self, *_a, **_k):
        Path.write_bytes(self, b"half")  # a partial write, then the failure
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OutputError) as info:
        writer(report, path)
    msg = str(info.value)
    assert (
        msg
        == f"cannot write {path}: No space left on device; free some space or choose another output folder"
    )
    monkeypatch.undo()
    assert path.read_text() == "previous report"
    assert [p.name for p in tmp_path.iterdir()] == ["bench.out"]
