"""Segmentation metrics for FLAIR models: a streaming confusion matrix and named metric conventions.

The confusion matrix is accumulated in logit-index space (rows = ground truth, columns = prediction,
as sklearn), with pixels equal to the ignore index skipped. :func:`compute_metrics` turns it into
scores under one of three **named** conventions, because published FLAIR numbers are not comparable
across them:

``"present"`` (our default, used during training)
    Rows of inactive classes are removed (their ground-truth pixels were ignored in training); the
    columns are kept, so a pixel predicted as an inactive class still counts as an error. Only active
    classes are scored, and the macro averages run over the active classes that **occur** (in ground
    truth or predictions): a class absent from both has IoU ``NaN`` and neither helps nor hurts.

``"ign"`` (IGN's current ``flair`` code, ``src/flair/metrics.py``)
    Rows **and** columns of inactive (loss-weight 0) classes are deleted, so pixels predicted as an
    excluded class vanish from the recall and IoU of the true class. Per-class IoU, precision, recall
    and F-score turn ``NaN`` into 0 and the means run over every active class, so an absent class
    counts as 0. IGN reports percentages; we report fractions in ``[0, 1]``.

``"challenge"`` (the FLAIR #1 challenge, ``generate_miou.py``)
    Logit indices ``>= 12`` (FLAIR codes 13-19) are folded into index 12, "other", in both ground
    truth and predictions, giving a 13×13 matrix with "other" kept. mIoU is the ``NaN``-excluding
    mean over the first 12 classes (the other macro scores follow the same rule here; the challenge
    only published mIoU); "other" is reported per class but never averaged. The ``active`` flags are
    not used: the challenge had none. This is only meaningful for FLAIR nomenclatures where logit
    ``i`` is FLAIR code ``i + 1`` (the 19-logit ``flair19``/``flair15``/``flair12`` presets, and the
    13-logit ``flair13`` remap, for which the fold is the identity); :func:`challenge_applicable`
    tells whether a class table qualifies.

Per-class ``NaN`` handling is explicit. Per class, with TP, FP, FN pixel counts:

* IoU ``= TP / (TP + FP + FN)`` and F-score ``= 2TP / (2TP + FP + FN)`` are ``NaN`` only for a class
  absent from both ground truth and predictions;
* precision ``= TP / (TP + FP)`` is ``NaN`` for a class never predicted, recall ``= TP / (TP + FN)``
  for a class absent from the ground truth.

``"ign"`` replaces every ``NaN`` by 0. ``"present"`` and ``"challenge"`` keep them per class (JSON
``null``) and average over the classes that occur, counting an undefined precision or recall of such
a class as 0 (sklearn's ``zero_division=0``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from flair_deploy.errors import ModelDescriptionError

# The one masked argmax (numpy or torch, any device); importable from here as training always did.
from flair_deploy.predictions import class_iou, masked_argmax

__all__ = [
    "CHALLENGE_NUM_CLASSES",
    "CONVENTIONS",
    "ConfusionMatrix",
    "Convention",
    "FlairMetrics",
    "challenge_applicable",
    "compute_metrics",
    "masked_argmax",
]

Convention = Literal["present", "ign", "challenge"]
#: Every convention, in the order they are reported.
CONVENTIONS: tuple[Convention, ...] = get_args(Convention)
#: The challenge scores 12 classes plus "other".
CHALLENGE_NUM_CLASSES = 13


class ConfusionMatrix:
    """Streaming ``K×K`` confusion matrix (rows = ground truth, columns = prediction).

    Accumulates on the device of the first update (no host sync per batch during training);
    :attr:`matrix` copies to a NumPy int64 array.

    Example:
        >>> cm = ConfusionMatrix(3, ignore_index=255)
        >>> cm.update(torch.tensor([0, 1, 2]), torch.tensor([0, 2, 255]))
        >>> cm.matrix.tolist()
        [[1, 0, 0], [0, 0, 0], [0, 1, 0]]
    """

    def __init__(self, num_classes: int, ignore_index: int | None = None) -> None:
        """Create an empty matrix.

        Args:
            num_classes: Number of classes (logits), ``K``.
            ignore_index: Ground-truth value whose pixels are skipped (e.g. 255), or None.
        """
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self._counts: Tensor = torch.zeros(num_classes * num_classes, dtype=torch.int64)

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add a batch of predictions.

        Args:
            pred: Predicted class indices (any shape, integer), e.g. from :func:`masked_argmax`.
            target: Ground-truth indices, same shape; ``ignore_index`` pixels are skipped.

        Raises:
            ValueError: If shapes differ or a value lies outside ``[0, K)`` (after ignoring).
        """
        if pred.shape != target.shape:
            raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
        pred = pred.reshape(-1).long()
        target = target.reshape(-1).long()
        if self.ignore_index is not None:
            keep = target != self.ignore_index
            pred, target = pred[keep], target[keep]
        if target.numel() == 0:
            return
        k = self.num_classes
        # One reduction for both checks: a bad value is a caller bug (datasets validate masks).
        lo = torch.minimum(pred.min(), target.min())
        hi = torch.maximum(pred.max(), target.max())
        if int(lo) < 0 or int(hi) >= k:
            raise ValueError(f"class indices must lie in [0, {k}), got values in [{int(lo)}, {int(hi)}]")
        if self._counts.device != pred.device:
            self._counts = self._counts.to(pred.device)
        self._counts += torch.bincount(target * k + pred, minlength=k * k)

    def merge(self, other: ConfusionMatrix) -> None:
        """Add the counts of *other* (e.g. from another process or data split)."""
        if other.num_classes != self.num_classes:
            raise ValueError(
                f"cannot merge a {other.num_classes}-class matrix into a {self.num_classes}-class one"
            )
        self._counts = self._counts + other._counts.to(self._counts.device)

    def reset(self) -> None:
        """Zero all counts (keeps the device)."""
        self._counts.zero_()

    @property
    def tensor(self) -> Tensor:
        """The ``K×K`` int64 counts as a tensor on the accumulation device (e.g. for all-reduce)."""
        return self._counts.view(self.num_classes, self.num_classes)

    @property
    def matrix(self) -> NDArray[np.int64]:
        """The ``K×K`` int64 counts as a NumPy array (rows = ground truth, columns = prediction)."""
        out: NDArray[np.int64] = self.tensor.detach().cpu().numpy().astype(np.int64, copy=True)
        return out

    @property
    def total(self) -> int:
        """Number of counted pixels."""
        return int(self._counts.sum())


@dataclass(frozen=True)
class FlairMetrics:
    """Scores from one confusion matrix under one named convention. All values are fractions in [0, 1].

    Attributes:
        convention: ``"present"``, ``"ign"`` or ``"challenge"``.
        classes: Names of the classes scored, in matrix order (the challenge's 12 plus "other").
        averaged_over: Names of the classes the macro averages run over (``"present"`` and
            ``"challenge"`` leave out classes that do not occur; ``"ign"`` averages every active class).
        miou: Mean intersection over union.
        overall_accuracy: Correct pixels over counted pixels.
        fscore: Macro F1.
        precision: Macro precision.
        recall: Macro recall.
        per_class_iou: IoU per class name (``NaN`` where undefined, see the module docstring).
        per_class_fscore: F1 per class name.
        per_class_precision: Precision per class name.
        per_class_recall: Recall per class name.
        support: Ground-truth pixel count per class name.
        pixels: Number of pixels the scores are computed on.
    """

    convention: Convention
    classes: tuple[str, ...]
    averaged_over: tuple[str, ...]
    miou: float
    overall_accuracy: float
    fscore: float
    precision: float
    recall: float
    per_class_iou: Mapping[str, float] = field(default_factory=dict)
    per_class_fscore: Mapping[str, float] = field(default_factory=dict)
    per_class_precision: Mapping[str, float] = field(default_factory=dict)
    per_class_recall: Mapping[str, float] = field(default_factory=dict)
    support: Mapping[str, int] = field(default_factory=dict)
    pixels: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict; ``NaN`` becomes ``None`` (JSON ``null``)."""

        def clean(x: float) -> float | None:
            return None if math.isnan(x) else float(x)

        return {
            "convention": self.convention,
            "classes": list(self.classes),
            "averaged_over": list(self.averaged_over),
            "miou": clean(self.miou),
            "overall_accuracy": clean(self.overall_accuracy),
            "fscore": clean(self.fscore),
            "precision": clean(self.precision),
            "recall": clean(self.recall),
            "per_class_iou": {k: clean(v) for k, v in self.per_class_iou.items()},
            "per_class_fscore": {k: clean(v) for k, v in self.per_class_fscore.items()},
            "per_class_precision": {k: clean(v) for k, v in self.per_class_precision.items()},
            "per_class_recall": {k: clean(v) for k, v in self.per_class_recall.items()},
            "support": {k: int(v) for k, v in self.support.items()},
            "pixels": self.pixels,
        }


def challenge_applicable(codes: Sequence[int]) -> bool:
    """Whether the challenge convention makes sense for a class table given as codes in logit order.

    True when logits 0-11 are FLAIR codes 1-12 and there are at least 13 logits.
    """
    return len(codes) >= CHALLENGE_NUM_CLASSES and list(codes[:12]) == list(range(1, 13))


def _divide(num: NDArray[np.float64], den: NDArray[np.float64]) -> NDArray[np.float64]:
    out = np.full(num.shape, np.nan, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def compute_metrics(
    matrix: NDArray[np.integer[Any]] | Sequence[Sequence[int]],
    *,
    class_names: Sequence[str],
    active: Sequence[bool],
    convention: Convention = "present",
) -> FlairMetrics:
    """Score a confusion matrix under a named convention (see the module docstring).

    Args:
        matrix: ``K×K`` counts in logit order, rows = ground truth, columns = prediction.
        class_names: ``K`` class names (unique), in logit order.
        active: ``K`` flags, False for classes that were not trained.
        convention: ``"present"`` (default), ``"ign"`` or ``"challenge"``.

    Returns:
        The scores; per-class values keyed by class name.

    Raises:
        ValueError: If the matrix is not ``K×K`` for ``K`` names and flags, or the convention is unknown.
        ModelDescriptionError: If class names repeat (per-class results are keyed by name).
    """
    m = np.asarray(matrix, dtype=np.int64)
    k = len(class_names)
    if m.shape != (k, k) or len(active) != k:
        raise ValueError(f"matrix shape {m.shape} does not match {k} class names and {len(active)} flags")
    if len(set(class_names)) != k:
        dupes = sorted({n for n in class_names if list(class_names).count(n) > 1})
        raise ModelDescriptionError(f"class names must be unique to report metrics, got duplicates {dupes}")
    flags = np.asarray(active, dtype=bool)
    names = list(class_names)

    if convention == "present":
        # Drop GT rows of untrained classes; keep every column so predicting one is still an error.
        sub = m.astype(np.float64)
        sub[~flags] = 0.0
        iou = class_iou(sub)[flags]
        tp, gt, pred = np.diag(sub)[flags], sub.sum(axis=1)[flags], sub.sum(axis=0)[flags]
        names = [n for n, a in zip(names, flags, strict=True) if a]
        total = float(sub.sum())
        nan_to_zero, averaged = False, list(range(len(names)))
    elif convention == "ign":
        keep = np.flatnonzero(flags)
        sub = m[np.ix_(keep, keep)].astype(np.float64)
        iou = class_iou(sub)
        tp, gt, pred = np.diag(sub), sub.sum(axis=1), sub.sum(axis=0)
        names = [names[i] for i in keep]
        total = float(sub.sum())
        nan_to_zero, averaged = True, list(range(len(names)))
    elif convention == "challenge":
        if k < CHALLENGE_NUM_CLASSES:
            raise ValueError(f"the challenge convention needs at least 13 classes, got {k}")
        fold = np.minimum(np.arange(k), CHALLENGE_NUM_CLASSES - 1)
        sub = np.zeros((CHALLENGE_NUM_CLASSES, CHALLENGE_NUM_CLASSES), dtype=np.float64)
        np.add.at(sub, (fold[:, None], fold[None, :]), m)
        iou = class_iou(sub)
        tp, gt, pred = np.diag(sub), sub.sum(axis=1), sub.sum(axis=0)
        # Index 12 is "other" whatever the model called its 13th class (e.g. "swimming pool" in flair19).
        names = [*names[:12], "other"]
        total = float(sub.sum())
        nan_to_zero, averaged = False, list(range(12))
    else:
        raise ValueError(f"unknown metric convention {convention!r}; choose one of {list(CONVENTIONS)}")

    precision = _divide(tp, pred)
    recall = _divide(tp, gt)
    # 2TP / (2TP + FP + FN) equals 2PR / (P + R) where both are defined, and stays defined (0) for a
    # class that occurs but is never predicted, or predicted but never occurs.
    fscore = _divide(2 * tp, gt + pred)
    if nan_to_zero:
        for arr in (iou, precision, recall, fscore):
            np.nan_to_num(arr, copy=False, nan=0.0)
    # Classes that occur (in GT or predictions) among those eligible for averaging. For them an
    # undefined precision (never predicted) or recall (never in GT) counts as 0 in the macro mean,
    # as sklearn's zero_division=0; classes that do not occur at all are left out.
    averaged = [i for i in averaged if gt[i] + pred[i] > 0] if not nan_to_zero else averaged

    def macro(values: NDArray[np.float64]) -> float:
        picked = values[averaged]
        return float(np.nan_to_num(picked, nan=0.0).mean()) if picked.size else math.nan

    def per_class(values: NDArray[np.float64]) -> dict[str, float]:
        return {n: float(v) for n, v in zip(names, values, strict=True)}

    return FlairMetrics(
        convention=convention,
        classes=tuple(names),
        averaged_over=tuple(names[i] for i in averaged),
        miou=macro(iou),
        overall_accuracy=float(tp.sum() / total) if total > 0 else math.nan,
        fscore=macro(fscore),
        precision=macro(precision),
        recall=macro(recall),
        per_class_iou=per_class(iou),
        per_class_fscore=per_class(fscore),
        per_class_precision=per_class(precision),
        per_class_recall=per_class(recall),
        support={n: int(v) for n, v in zip(names, gt, strict=True)},
        pixels=int(total),
    )
