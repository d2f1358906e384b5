"""Detect configuration (``inference/config.py``): defaults that belong to the config model."""

from flair_deploy.inference.backends.base import physical_cores
from flair_deploy.inference.config import DetectConfig, default_batch_size


def test_batch_defaults_to_one_tile_on_cpu_and_more_on_gpu(tmp_path):
    # On a CPU one 512-px tile already uses every core; bigger batches only cost memory.
    assert default_batch_size("cpu") == 1
    assert default_batch_size("cuda:0") == 16  # the batch TensorRT profiles are tuned for
    cfg = DetectConfig(inputs=(tmp_path / "a.tif",), output=tmp_path / "o.tif")
    assert cfg.batch_size is None and cfg.gdal_cache_mb == 64 and cfg.chunk_mb == 192


def test_reader_threads_scale_with_the_machine_unless_set(tmp_path):
    base = {"inputs": (tmp_path / "a.tif",), "output": tmp_path / "o.tif"}
    readers, prefetch = DetectConfig(**base).reader_threads()
    assert readers == max(2, min(8, physical_cores() // 2)) and prefetch == readers
    assert DetectConfig(**base, readers=3, prefetch=5).reader_threads() == (3, 5)
