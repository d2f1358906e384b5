"""From logits to predictions: the one masked softmax and masked argmax, and the one mean IoU.

FLAIR models keep 19 logits even when some classes were not trained (IGN's "15 classes" and "12
classes" models); those *inactive* classes must never be predicted. Training metrics, evaluation,
export parity, the inference backends' host and device paths, stitching and benchmarks all go through
these functions:

* :func:`masked_argmax`: the most probable active class (int64 logit index);
* :func:`masked_classes`: the same as uint8 plus its softmax probability (the confidence);
* :func:`masked_softmax`: probabilities over the active classes, exactly 0 for inactive ones;
* :func:`active_softmax`: the same probabilities, active planes only (what blending accumulates).

They are written once against the `Python array API standard <https://data-apis.org/array-api/>`_
through ``array_api_compat``: numpy arrays on the host and torch tensors (CPU or CUDA, on their own
device, without a host round trip) take the same code, and numpy input never imports torch. The class
axis is the third from the end: ``(N, K, H, W)`` batches and ``(K, H, W)`` tiles alike.

How they stay cheap: the argmax and the confidence work one class plane at a time, so every
temporary is an ``(N, H, W)`` plane and the ``(N, K, H, W)`` logits are never copied; the confidence is
``1 / sum_k exp(l_k - l_max)``, so no softmax is materialised for it. The softmax copies the active
planes once, shifts and exponentiates them in place and normalises by multiplying with one reciprocal
plane. The argmax is a maximum plus one comparison per class, from the last class down, which returns
the *first* maximal class as ``argmax`` does, and is faster than numpy's ``argmax`` along a non-last
axis (which makes a transposed copy).

The active flags are host values (a tuple, list or numpy array, e.g. ``ModelDescription.active_mask``)
whatever the logits' device, so that choosing the class planes never synchronises a GPU. (The ONNX
heads compute the same thing inside the exported graph, with an additive ``-1e4`` bias.)

:func:`confusion_matrix`, :func:`class_iou` and :func:`mean_iou` score class indices against ground
truth; training metrics, evaluation and export parity all take their IoU from :func:`class_iou`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "active_softmax",
    "class_iou",
    "confusion_matrix",
    "masked_argmax",
    "masked_classes",
    "masked_softmax",
    "mean_iou",
]

#: The class axis of logits: ``(N, K, H, W)`` or ``(K, H, W)``.
CLASS_AXIS = -3


def _namespace(x: Any) -> Any:
    from array_api_compat import array_namespace

    return array_namespace(x)


def _device(x: Any) -> Any:
    from array_api_compat import device

    return device(x)


def _active_indexes(active: Sequence[bool] | npt.NDArray[np.bool_], logits: Any) -> list[int]:
    flags = np.asarray(active, dtype=bool).reshape(-1)
    if logits.ndim < 3:
        raise ValueError(f"logits must be (N, K, H, W) or (K, H, W), got shape {tuple(logits.shape)}")
    k = int(logits.shape[CLASS_AXIS])
    if flags.size != k:
        raise ValueError(f"{flags.size} active flags for {k} logits")
    index = [int(i) for i in np.flatnonzero(flags)]
    if not index:
        raise ValueError("no active class: at least one class must be active")
    return index


def _plane(xp: Any, x: Any, k: int) -> Any:
    """Class plane *k* as float32 (a view when the logits already are float32)."""
    plane = x[..., k, :, :]
    return plane if plane.dtype == xp.float32 else xp.astype(plane, xp.float32)


def _top(xp: Any, x: Any, index: list[int]) -> Any:
    """Per-pixel maximum over the active classes, float32 ``(..., H, W)``."""
    if len(index) == x.shape[CLASS_AXIS]:
        top = xp.max(x, axis=CLASS_AXIS)
        return top if top.dtype == xp.float32 else xp.astype(top, xp.float32)
    top = _plane(xp, x, index[0])
    for k in index[1:]:
        top = xp.maximum(top, _plane(xp, x, k))
    return top


def _first_max(xp: Any, x: Any, top: Any, index: list[int], dtype: Any) -> Any:
    """Index of the first active class whose logit equals *top* (``argmax`` tie rule)."""
    out = xp.full(top.shape, index[-1], dtype=dtype, device=_device(x))
    for k in reversed(index[:-1]):
        out = xp.where(_plane(xp, x, k) == top, k, out)
    return out


def masked_argmax(logits: Any, active: Sequence[bool] | npt.NDArray[np.bool_]) -> Any:
    """Return the per-pixel index of the most probable *active* class.

    Args:
        logits: ``(N, K, H, W)`` or ``(K, H, W)`` logits (or probabilities): a numpy array or a
            torch tensor on any device.
        active: ``K`` flags, True for trained classes (``ModelDescription.active_mask``).

    Returns:
        int64 logit indices with the class axis removed, in the input's namespace and device.

    Raises:
        ValueError: If the flags do not match the class axis or none is active (a caller bug).
    """
    xp = _namespace(logits)
    index = _active_indexes(active, logits)
    return _first_max(xp, logits, _top(xp, logits, index), index, xp.int64)


def masked_classes(logits: Any, active: Sequence[bool] | npt.NDArray[np.bool_]) -> tuple[Any, Any]:
    """Return the most probable active class and its softmax probability, per pixel.

    Args:
        logits: ``(N, K, H, W)`` or ``(K, H, W)`` logits, numpy or torch (any device).
        active: ``K`` flags, True for trained classes.

    Returns:
        uint8 logit indices and float32 confidences in ``(0, 1]``, both with the class axis removed.

    Raises:
        ValueError: If the flags do not match the class axis or none is active.
    """
    xp = _namespace(logits)
    index = _active_indexes(active, logits)
    if max(index) > 255:
        raise ValueError(f"{logits.shape[CLASS_AXIS]} classes do not fit uint8 class indices")
    top = _top(xp, logits, index)
    classes = _first_max(xp, logits, top, index, xp.uint8)
    # p(top) = 1 / sum_k exp(l_k - l_top): the top class contributes exp(0) = 1, so the sum is >= 1.
    total = xp.zeros(top.shape, dtype=xp.float32, device=_device(logits))
    for k in index:
        total += xp.exp(_plane(xp, logits, k) - top)
    return classes, 1.0 / total


def active_softmax(logits: Any, active: Sequence[bool] | npt.NDArray[np.bool_]) -> Any:
    """Softmax over the active classes, returning the active planes only (in their logit order).

    This is what blending accumulates: inactive classes are never materialised.

    Args:
        logits: ``(N, K, H, W)`` or ``(K, H, W)`` logits, numpy or torch (any device).
        active: ``K`` flags, True for trained classes.

    Returns:
        float32 ``(N, A, H, W)`` (or ``(A, H, W)``) probabilities of the ``A`` active classes, in the
        logits' namespace and device.

    Raises:
        ValueError: If the flags do not match the class axis or none is active.
    """
    xp = _namespace(logits)
    index = _active_indexes(active, logits)
    if len(index) == logits.shape[CLASS_AXIS]:
        sub = xp.astype(logits, xp.float32, copy=True)  # the one copy, worked on in place
    else:
        sub = xp.stack([_plane(xp, logits, c) for c in index], axis=CLASS_AXIS)
    sub -= xp.max(sub, axis=CLASS_AXIS, keepdims=True)
    sub = _exp_in_place(xp, sub)
    sub *= 1.0 / xp.sum(sub, axis=CLASS_AXIS, keepdims=True)
    return sub


def masked_softmax(logits: Any, active: Sequence[bool] | npt.NDArray[np.bool_]) -> Any:
    """Softmax over the active classes along the class axis; inactive classes get exactly 0.

    Args:
        logits: ``(N, K, H, W)`` or ``(K, H, W)`` logits, numpy or torch (any device).
        active: ``K`` flags, True for trained classes.

    Returns:
        float32 probabilities of the logits' shape, in their namespace and device.

    Raises:
        ValueError: If the flags do not match the class axis or none is active.
    """
    xp = _namespace(logits)
    index = _active_indexes(active, logits)
    sub = active_softmax(logits, active)
    if len(index) == logits.shape[CLASS_AXIS]:
        return sub
    out = xp.zeros(logits.shape, dtype=xp.float32, device=_device(logits))
    for j, c in enumerate(index):
        out[..., c, :, :] = sub[..., j, :, :]
    return out


def _exp_in_place(xp: Any, x: Any) -> Any:
    # The standard has no in-place exp; numpy and torch take out=, which saves a logits-sized
    # allocation per call (this runs once per tile on the host in blend mode).
    from array_api_compat import is_numpy_namespace, is_torch_namespace

    if is_numpy_namespace(xp) or is_torch_namespace(xp):
        return xp.exp(x, out=x)
    return xp.exp(x)


# ---------------------------------------------------------------------------------------------- IoU
def confusion_matrix(pred: npt.ArrayLike, target: npt.ArrayLike, num_classes: int) -> npt.NDArray[np.int64]:
    """Count ``(target, pred)`` pairs: a ``K×K`` matrix, rows = ground truth, columns = prediction.

    Pixels whose target lies outside ``[0, K)`` (e.g. -1 or 255 for unlabelled) are not counted.

    Args:
        pred: Predicted logit indices (any shape).
        target: Ground-truth logit indices, same shape.
        num_classes: ``K``.

    Raises:
        ValueError: If the shapes differ or a counted prediction lies outside ``[0, K)``.
    """
    p = np.asarray(pred).reshape(-1).astype(np.int64, copy=False)
    t = np.asarray(target).reshape(-1).astype(np.int64, copy=False)
    if p.shape != t.shape:
        raise ValueError(f"{p.size} predictions for {t.size} ground-truth pixels")
    keep = (t >= 0) & (t < num_classes)
    p, t = p[keep], t[keep]
    if p.size and (p.min() < 0 or p.max() >= num_classes):
        raise ValueError(f"predicted indices must lie in [0, {num_classes}), got [{p.min()}, {p.max()}]")
    counts = np.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64, copy=False)


def class_iou(matrix: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Per-class IoU ``TP / (TP + FP + FN)`` of a confusion matrix (rows = ground truth).

    A class absent from both ground truth and predictions has IoU ``NaN``: it neither helps nor
    hurts a mean taken with ``nanmean``.
    """
    m = np.asarray(matrix, dtype=np.float64)
    tp = np.diag(m)
    union = m.sum(axis=0) + m.sum(axis=1) - tp
    out = np.full(tp.shape, np.nan, dtype=np.float64)
    np.divide(tp, union, out=out, where=union > 0)
    return out


def mean_iou(matrix: npt.ArrayLike, active: Sequence[bool] | npt.NDArray[np.bool_]) -> float:
    """Mean IoU over the active classes that occur, as training reports it (``"present"`` convention).

    Ground-truth pixels of inactive classes are left out (they were ignored in training); a pixel
    predicted as an inactive class still counts as an error of its true class.

    Returns:
        The mean, or ``NaN`` when no active class occurs.
    """
    m = np.array(matrix, dtype=np.int64)
    flags = np.asarray(active, dtype=bool)
    m[~flags] = 0
    iou = class_iou(m)[flags]
    scored = iou[~np.isnan(iou)]
    return float(scored.mean()) if scored.size else float("nan")
