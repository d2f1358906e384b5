"""The Lightning module that trains a FLAIR segmentation network into a self-describing checkpoint.

:class:`SegmentationTask` is configured by typed constructor arguments saved with
``save_hyperparameters()``; the first is the model description as a plain dict, so a checkpoint alone
rebuilds the network (:func:`flair_deploy.checkpoints.load_checkpoint` reads
``hyper_parameters["description"]`` and the ``model.*`` weights). The module holds exactly two
sub-modules: ``model`` (the :class:`~flair_deploy.models.FlairSegmenter`) and ``criterion`` (the loss,
whose ``criterion.weight`` buffer the loader drops). Checkpoint hyperparameters are kept to plain
JSON types so ``torch.load(weights_only=True)`` reads our checkpoints.

Logged metrics: ``train_loss`` (step and epoch), ``val_loss``, ``val_miou`` (the true mean IoU over the
active classes that occur, see :mod:`flair_deploy.training.metrics`, convention ``"present"``),
``val_oa`` (overall accuracy) and ``val_iou/<class>`` per active class. Inactive logits are masked
before the argmax, as they are at inference.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch import Tensor

from flair_deploy.description import ModelDescription
from flair_deploy.errors import CheckpointError, ConfigError
from flair_deploy.models import FlairSegmenter, build_model
from flair_deploy.training.losses import SegmentationLoss
from flair_deploy.training.metrics import ConfusionMatrix, compute_metrics, masked_argmax

__all__ = ["RNG_KEY", "OptimizerName", "SchedulerName", "SegmentationTask", "load_encoder_weights"]

OptimizerName = Literal["adamw", "sgd"]
SchedulerName = Literal["onecycle", "cosine", "plateau", "none"]

# Lightning also stores the data module's hyperparameters; both must stay plain for weights_only loads.
_HPARAM_KEYS = ("hyper_parameters", "datamodule_hyper_parameters")
#: Checkpoint key of the random-number states (torch, numpy, python, CUDA) at the time of saving.
RNG_KEY = "flair_deploy_rng_states"


def _rng_states() -> dict[str, Any]:
    """The process's random-number states as tensors and plain values (``weights_only`` loads them)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: Mapping[str, Any]) -> None:
    if "torch" in states:
        torch.set_rng_state(states["torch"])
    if "numpy" in states:
        n = states["numpy"]
        keys = n["keys"].numpy().astype(np.uint32)
        np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["gauss"]))
    if "python" in states:
        version, internal, gauss_next = states["python"]
        random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


def _metric_name(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z]+", "_", name).strip("_").lower() or "class"


def load_encoder_weights(model: FlairSegmenter, path: Path) -> None:
    """Load pretrained encoder weights from a local file into ``model.net.encoder``, strictly.

    Accepted keys: bare encoder keys (a torchvision/timm ResNet ``state_dict``), or keys prefixed
    ``encoder.`` or ``net.encoder.``. Classifier keys (``fc.*``), which SMP encoders do not have, are
    dropped. When the first convolution was trained on 3 bands and the model has another band count,
    its weights are adapted as SMP does for ImageNet weights (channels repeated cyclically and rescaled
    by ``3 / bands``). Any other missing or unexpected key, or shape mismatch, is an error.

    Args:
        model: The network to initialise.
        path: ``.pth``/``.pt`` state dict or ``.safetensors`` file.

    Raises:
        CheckpointError: If the file cannot be read or does not match the encoder.
    """
    from flair_deploy.checkpoints import read_state

    state = read_state(path)
    if "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    weights: dict[str, Tensor] = {}
    for key, value in state.items():
        if not isinstance(value, Tensor):
            continue
        for prefix in ("net.encoder.", "model.net.encoder.", "encoder."):
            if key.startswith(prefix):
                key = key[len(prefix) :]
                break
        if key.startswith("fc."):
            continue
        weights[key] = value
    encoder = model.net.encoder
    expected = encoder.state_dict()
    missing = sorted(k for k in expected if k not in weights)
    unexpected = sorted(k for k in weights if k not in expected)
    if missing or unexpected:
        raise CheckpointError(
            f"encoder weights {path} do not match encoder {type(encoder).__name__}: missing {len(missing)} "
            f"keys {missing[:4]}, unexpected {len(unexpected)} keys {unexpected[:4]}; give a state dict "
            "of the same encoder (model.encoder)"
        )
    for key, value in list(weights.items()):
        want = expected[key].shape
        if value.shape == want:
            continue
        is_first_conv = value.dim() == 4 and value.shape[1] == 3 and value.shape[0] == want[0]
        if is_first_conv and value.shape[2:] == want[2:]:
            n = int(want[1])
            idx = torch.arange(n) % 3
            weights[key] = value[:, idx] * (3.0 / n)
            continue
        raise CheckpointError(
            f"encoder weights {path}: {key} has shape {tuple(value.shape)}, the encoder expects "
            f"{tuple(want)}; check model.encoder"
        )
    encoder.load_state_dict(weights, strict=True)


def _plain(value: Any) -> Any:
    """Return *value* as plain JSON types (dict, list, str, int, float, bool, None)."""
    return json.loads(json.dumps(value, default=str))


class SegmentationTask(L.LightningModule):
    """Train a :class:`~flair_deploy.models.FlairSegmenter` described by a model description.

    Batches are dicts with ``"image"`` (float32 ``(B, C, H, W)`` raw band values), ``"mask"`` (int64
    ``(B, H, W)`` logit indices, ``ignore_index`` where ignored) and, for metadata models,
    ``"metadata"`` (float32 ``(B, D)``).
    """

    def __init__(
        self,
        description: dict[str, Any],
        *,
        class_weights: list[float] | None = None,
        ignore_index: int | None = None,
        dice_weight: float = 0.0,
        optimizer: OptimizerName = "adamw",
        lr: float = 3e-3,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        scheduler: SchedulerName = "onecycle",
        monitor: str = "val_miou",
        monitor_mode: Literal["min", "max"] = "max",
        plateau_patience: int = 10,
        plateau_factor: float = 0.5,
        min_lr: float = 1e-7,
        encoder_weights_path: str | None = None,
    ) -> None:
        """Create the task.

        Args:
            description: ``ModelDescription.to_dict()``; stored in the checkpoint.
            class_weights: Cross-entropy weight per logit (default 1 for active classes); inactive
                classes always weigh 0, so their pixels are ignored.
            ignore_index: Mask value ignored by the loss and the metrics, or None.
            dice_weight: Weight of the soft Dice term (0 = cross-entropy only).
            optimizer: ``adamw`` or ``sgd``.
            lr: Learning rate (the peak rate for ``onecycle``).
            momentum: SGD momentum.
            weight_decay: Weight decay.
            scheduler: ``onecycle`` (per step), ``cosine`` (per epoch), ``plateau`` (on *monitor*) or
                ``none``.
            monitor: Metric ``plateau`` watches (the same as the checkpoint's).
            monitor_mode: ``min`` or ``max`` for *monitor*.
            plateau_patience: Epochs without improvement before ``plateau`` lowers the rate.
            plateau_factor: Factor ``plateau`` applies.
            min_lr: Learning-rate floor of ``plateau`` and ``cosine``.
            encoder_weights_path: Local pretrained encoder weights loaded at construction (not stored
                in the hyperparameters: the checkpoint's own weights supersede them).

        Raises:
            ModelDescriptionError: If *description* is invalid.
            ConfigError: For an unknown optimizer/scheduler or a wrong number of class weights.
            CheckpointError: If the encoder weights do not match.
        """
        super().__init__()
        self.save_hyperparameters(ignore=["encoder_weights_path"])
        desc = ModelDescription.from_dict(description, source="SegmentationTask description")
        self.description = desc
        if optimizer not in ("adamw", "sgd"):
            raise ConfigError(f"unknown optimizer {optimizer!r}; choose adamw or sgd")
        if scheduler not in ("onecycle", "cosine", "plateau", "none"):
            raise ConfigError(f"unknown scheduler {scheduler!r}; choose onecycle, cosine, plateau or none")
        active = desc.active_mask
        weights = list(class_weights) if class_weights is not None else [1.0] * desc.num_classes
        if len(weights) != desc.num_classes:
            raise ConfigError(
                f"{len(weights)} class weights for {desc.num_classes} classes; give one per class"
            )
        weights = [float(w) if a else 0.0 for w, a in zip(weights, active, strict=True)]
        self.model = build_model(desc)
        if encoder_weights_path is not None:
            load_encoder_weights(self.model, Path(encoder_weights_path))
        self.criterion = SegmentationLoss(weights, ignore_index=ignore_index, dice_weight=dice_weight)
        self._val_cm = ConfusionMatrix(desc.num_classes, ignore_index=ignore_index)
        self._class_names = [c.name for c in desc.classes]
        self.last_val_metrics: dict[str, float] = {}

    # ------------------------------------------------------------------ forward and steps
    def forward(self, image: Tensor, metadata: Tensor | None = None) -> Tensor:
        """Return logits ``(N, K, H, W)`` for raw band values ``(N, C, H, W)``."""
        logits: Tensor = self.model(image, metadata)
        return logits

    def _logits(self, batch: Mapping[str, Any]) -> Tensor:
        logits: Tensor = self(batch["image"], batch.get("metadata") if self.model.uses_metadata else None)
        return logits

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        """Compute and log the training loss of one batch."""
        loss: Tensor = self.criterion(self._logits(batch), batch["mask"])
        self.log(
            "train_loss",
            loss,
            on_step=True,
            on_epoch=True,
            prog_bar=True,
            sync_dist=True,  # the epoch's loss over all ranks, not rank 0's share
            batch_size=len(batch["image"]),
        )
        return loss

    def on_validation_epoch_start(self) -> None:
        """Start a fresh confusion matrix."""
        self._val_cm.reset()

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        """Log the validation loss and accumulate the confusion matrix."""
        logits = self._logits(batch)
        loss = self.criterion(logits, batch["mask"])
        self.log(
            "val_loss", loss, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=len(batch["image"])
        )
        self._val_cm.update(masked_argmax(logits.detach(), self.description.active_mask), batch["mask"])

    def on_validation_epoch_end(self) -> None:
        """Log mIoU, overall accuracy and per-class IoU from the (all-reduced) confusion matrix."""
        counts = self._val_cm.tensor.to(self.device)
        # Every process sees a shard of the validation set: sum the matrices before scoring.
        counts = self.trainer.strategy.reduce(counts, reduce_op="sum")
        if int(counts.sum()) == 0:
            return
        scores = compute_metrics(
            counts.cpu().numpy(), class_names=self._class_names, active=self.description.active_mask
        )
        values = {"val_miou": scores.miou, "val_oa": scores.overall_accuracy}
        for name, iou in scores.per_class_iou.items():
            if not math.isnan(iou):
                values[f"val_iou/{_metric_name(name)}"] = iou
        self.last_val_metrics = {k: float(v) for k, v in values.items()}
        # Every rank computed the same values from the summed matrix; sync_dist keeps Lightning's
        # epoch-level bookkeeping (checkpoint monitor, early stopping) identical on every rank.
        self.log_dict(
            {k: v for k, v in values.items() if not k.startswith("val_iou/")}, prog_bar=True, sync_dist=True
        )
        self.log_dict({k: v for k, v in values.items() if k.startswith("val_iou/")}, sync_dist=True)

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        """Build the optimizer and learning-rate schedule named in the hyperparameters."""
        hp: Mapping[str, Any] = self.hparams
        opt: torch.optim.Optimizer
        if hp["optimizer"] == "sgd":
            opt = torch.optim.SGD(
                self.parameters(), lr=hp["lr"], momentum=hp["momentum"], weight_decay=hp["weight_decay"]
            )
        else:
            opt = torch.optim.AdamW(self.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
        if hp["scheduler"] == "none":
            return opt
        if hp["scheduler"] == "onecycle":
            total = int(self.trainer.estimated_stepping_batches)
            sched: Any = torch.optim.lr_scheduler.OneCycleLR(
                opt,
                max_lr=hp["lr"],
                total_steps=max(total, 1),
                # SGD without momentum has nothing to cycle; AdamW cycles beta1.
                cycle_momentum=hp["optimizer"] == "adamw" or hp["momentum"] > 0,
            )
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        if hp["scheduler"] == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(
                opt, T_max=max(int(self.trainer.max_epochs or 1), 1), eta_min=hp["min_lr"]
            )
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt,
            mode=hp["monitor_mode"],
            factor=hp["plateau_factor"],
            patience=hp["plateau_patience"],
            min_lr=hp["min_lr"],
        )
        return {
            "optimizer": opt,
            "lr_scheduler": {
                "scheduler": sched,
                "interval": "epoch",
                "monitor": hp["monitor"],
                "strict": True,
            },
        }

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep hyperparameters plain (``torch.load(weights_only=True)`` reads them); store RNG states.

        Lightning saves ``last.ckpt`` at the end of an epoch's validation, before the next epoch draws
        its shuffling order and augmentations: with the random states of that moment, a run resumed
        from it draws what the uninterrupted run drew and ends with the same weights and metrics.
        """
        for key in _HPARAM_KEYS:
            if key in checkpoint:
                checkpoint[key] = _plain(dict(checkpoint[key]))
        checkpoint[RNG_KEY] = _rng_states()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the random states saved with the checkpoint (when resuming training)."""
        states = checkpoint.get(RNG_KEY)
        # Only when fitting: validating a checkpoint must not rewind the caller's random state.
        if isinstance(states, Mapping) and self._trainer is not None and self.trainer.state.fn == "fit":
            _set_rng_states(states)
