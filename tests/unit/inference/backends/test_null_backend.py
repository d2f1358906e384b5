"""The null backend (``inference/backends/null_backend.py``): ready logits, no network."""

from __future__ import annotations

import numpy as np
import pytest

from flair_deploy.errors import BackendError
from flair_deploy.inference.backends import BackendName, create_backend
from flair_deploy.inference.backends.null_backend import NullBackend
from flair_deploy.inference.config import DetectConfig
from flair_deploy.inference.detect import run_detection


def test_returns_ready_logits_of_the_described_shape_without_computing(tiny_description):
    with NullBackend(tiny_description) as b:
        x = np.zeros((3, tiny_description.in_channels, 64, 64), np.uint8)
        a, c = b.run(x), b.run(x + 200)
        classes, _ = b.predict_classes(x.astype(np.float32))
    assert a.shape == (3, tiny_description.num_classes, 64, 64)
    assert np.shares_memory(a, c)  # nothing computed: the same ready field whatever the input
    active = np.flatnonzero(tiny_description.active_mask)
    assert np.isin(classes, active).all() and len(np.unique(classes)) > 1  # real argmax work


def test_imitates_any_artifact_from_its_description(tmp_path, tiny_description):
    path = tmp_path / "m.engine"
    path.write_bytes(b"not read")
    tiny_description.save_sidecar(tmp_path / "m.engine.json")
    b = create_backend(BackendName.NULL, path)
    assert isinstance(b, NullBackend) and b.description == tiny_description
    with pytest.raises(BackendError, match="unknown null backend option"):
        create_backend("null", path, options={"threads": 2})


def test_maps_a_raster_through_the_whole_pipeline(write_geotiff, tiny_description, tmp_path):
    data = np.random.default_rng(0).integers(0, 255, (5, 150, 170)).astype(np.uint8)
    cfg = DetectConfig(inputs=(write_geotiff(data),), output=tmp_path / "map.tif", allow_gsd_mismatch=True)
    with NullBackend(tiny_description) as b:
        summary = run_detection(b, cfg)
    s = summary.seconds
    assert (tmp_path / "map.tif").exists() and summary.tiles_inferred == summary.tiles
    # Every stage's CPU time is measured, and the process total covers them all.
    assert min(s.read_cpu, s.main_cpu, s.stitch_cpu, s.write_cpu) > 0
    assert s.process_cpu >= s.main_cpu + s.stitch_cpu
