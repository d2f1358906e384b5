"""Streaming tiled inference over large rasters: the library behind ``flair-deploy detect``.

* :func:`detect` / :func:`run_detection`: map rasters with a model file or an active backend;
* :class:`DetectConfig`: the run configuration (and :func:`load_detect_config`, also for IGN's detect YAML);
* :mod:`~flair_deploy.inference.tiling`, :mod:`~flair_deploy.inference.stitching`,
  :mod:`~flair_deploy.inference.raster`, :mod:`~flair_deploy.inference.pipeline`: the parts;
* :mod:`~flair_deploy.inference.backends`: the runtimes (torch, onnxruntime, TensorRT).

Importing this package imports no runtime.
"""

from __future__ import annotations

from flair_deploy.inference.config import DetectConfig, load_detect_config
from flair_deploy.inference.detect import DetectProgress, DetectSummary, detect, run_detection
from flair_deploy.inference.pipeline import StageSeconds
from flair_deploy.inference.tiling import TileGrid, make_grid

__all__ = [
    "DetectConfig",
    "DetectProgress",
    "DetectSummary",
    "StageSeconds",
    "TileGrid",
    "detect",
    "load_detect_config",
    "make_grid",
    "run_detection",
]
