"""flair-deploy: land-cover segmentation from training to fast, verified deployment.

Pipeline stages are subpackages: :mod:`flair_deploy.training` writes self-describing checkpoints,
:mod:`flair_deploy.exports` turns them into verified ONNX/TensorRT artifacts, and
:mod:`flair_deploy.inference` runs them over large GeoTIFFs. The model description
(:class:`~flair_deploy.description.ModelDescription`) travels through all of them.
"""

from __future__ import annotations

from flair_deploy.description import ModelDescription
from flair_deploy.errors import FlairDeployError

__version__ = "0.1.0"

__all__ = ["FlairDeployError", "ModelDescription", "__version__"]
