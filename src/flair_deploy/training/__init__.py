"""Training: FLAIR data to self-describing Lightning checkpoints.

* :class:`TrainConfig` and :func:`load_train_config`: the run configuration (our YAML schema, or IGN's
  ``flair-1-config.yaml`` as it is);
* :class:`SegmentationTask`: the LightningModule whose checkpoints rebuild their network alone;
* :func:`train`: Lightning Trainer with checkpoints, early stopping, logs and a learning curve;
* :func:`run_tasks`: a whole run as the config's ``tasks`` ask (IGN's ``flair --conf``): train, then
  predict and score the test list.

Data (:mod:`~flair_deploy.training.data`) and metrics (:mod:`~flair_deploy.training.metrics`) live in
their own modules; the sample dataset generator is :mod:`flair_deploy.sample`.
"""

from __future__ import annotations

from flair_deploy._compat import ensure_torchvision_importable

# Lightning imports torchmetrics, which imports torchvision: the shim must run before any submodule
# of this package imports Lightning.
ensure_torchvision_importable()

from flair_deploy.training.config import TrainConfig, load_train_config
from flair_deploy.training.pipeline import RunResult, run_tasks
from flair_deploy.training.run import TrainResult, plot_learning_curve, train
from flair_deploy.training.task import SegmentationTask

__all__ = [
    "RunResult",
    "SegmentationTask",
    "TrainConfig",
    "TrainResult",
    "load_train_config",
    "plot_learning_curve",
    "run_tasks",
    "train",
]
