"""The one masked softmax / argmax (numpy and torch alike) and the one mean IoU."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from flair_deploy.predictions import (
    class_iou,
    confusion_matrix,
    masked_argmax,
    masked_classes,
    masked_softmax,
    mean_iou,
)

ACTIVE = np.array([True, False, True, True])


def _logits(seed=3, shape=(2, 4, 3, 5)):
    logits = np.random.default_rng(seed).normal(size=shape).astype(np.float32) * 4
    logits[:, 1] += 100  # the inactive class dominates the raw logits
    return logits


def test_masked_helpers_agree_with_a_direct_computation():
    logits = _logits()
    ref = np.exp(logits[:, ACTIVE]) / np.exp(logits[:, ACTIVE]).sum(axis=1, keepdims=True)
    probs = masked_softmax(logits, ACTIVE)
    assert probs.dtype == np.float32 and probs.shape == logits.shape
    np.testing.assert_allclose(probs[:, ACTIVE], ref, rtol=1e-5)
    assert (probs[:, 1] == 0).all()
    classes, conf = masked_classes(logits, ACTIVE)
    assert classes.dtype == np.uint8 and conf.dtype == np.float32
    np.testing.assert_array_equal(classes, np.flatnonzero(ACTIVE)[ref.argmax(axis=1)])
    np.testing.assert_allclose(conf, ref.max(axis=1), rtol=1e-5)
    np.testing.assert_array_equal(masked_argmax(logits, ACTIVE), classes)
    # A (K, H, W) tile works the same as a batch of one.
    np.testing.assert_array_equal(masked_argmax(logits[0], ACTIVE), classes[0])


def test_inactive_classes_are_never_chosen_and_ties_pick_the_first_class():
    logits = np.zeros((1, 4, 2, 2), dtype=np.float32)
    logits[0, 1] = 50.0  # inactive and largest
    logits[0, 3, 0, 0] = 1.0
    np.testing.assert_array_equal(masked_argmax(logits, ACTIVE)[0], [[3, 0], [0, 0]])  # tie 0/2/3 -> 0
    assert masked_argmax(logits, [True] * 4).tolist() == [[[1, 1], [1, 1]]]
    with pytest.raises(ValueError, match="3 active flags for 4 logits"):
        masked_argmax(logits, [True] * 3)


def test_confidence_is_nan_free_on_extreme_and_half_precision_logits():
    logits = _logits(shape=(1, 4, 8, 8))
    logits[0, 0, :4] = 3e38  # near float32 max: exp(l - max) must not overflow
    logits[0, 2, 4:] = -3e38
    _, conf = masked_classes(logits, ACTIVE)
    assert np.isfinite(conf).all() and (conf > 0).all() and (conf <= 1).all()
    probs = masked_softmax(logits, ACTIVE)
    assert np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    half = _logits(shape=(1, 4, 8, 8)).astype(np.float16)
    classes, conf = masked_classes(half, ACTIVE)
    ref_classes, ref_conf = masked_classes(half.astype(np.float32), ACTIVE)
    np.testing.assert_array_equal(classes, ref_classes)
    np.testing.assert_allclose(conf, ref_conf, rtol=1e-6)


@pytest.mark.parametrize("active", [ACTIVE, np.ones(4, bool)])
def test_torch_tensors_give_the_numpy_results_on_their_device(active):
    logits = _logits()
    t = torch.from_numpy(logits.copy())
    classes, conf = masked_classes(t, active)
    assert isinstance(classes, torch.Tensor) and classes.dtype == torch.uint8 and conf.dtype == torch.float32
    np_classes, np_conf = masked_classes(logits, active)
    np.testing.assert_array_equal(classes.numpy(), np_classes)
    np.testing.assert_allclose(conf.numpy(), np_conf, rtol=1e-6)
    probs = masked_softmax(t, active)
    np.testing.assert_allclose(probs.numpy(), masked_softmax(logits, active), rtol=1e-6, atol=1e-7)
    index = masked_argmax(t, active)
    assert index.dtype == torch.int64
    np.testing.assert_array_equal(index.numpy(), masked_argmax(logits, active))
    np.testing.assert_array_equal(t.numpy(), logits)  # the logits are never modified


def test_numpy_input_does_not_import_torch():
    # The torch-free runtime (onnxruntime on the CPU) takes the same functions.
    code = (
        "import sys, numpy as np; from flair_deploy.predictions import masked_classes; "
        "masked_classes(np.zeros((1, 3, 2, 2), np.float32), [True, False, True]); "
        "sys.exit('torch' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_confusion_matrix_and_mean_iou():
    target = np.array([0, 0, 1, 2, 2, -1, 3])
    pred = np.array([0, 2, 1, 2, 0, 3, 1])
    m = confusion_matrix(pred, target, 4)
    assert m.tolist() == [[1, 0, 1, 0], [0, 1, 0, 0], [1, 0, 1, 0], [0, 1, 0, 0]]  # -1 not counted
    np.testing.assert_allclose(class_iou(m), [1 / 3, 1 / 2, 1 / 3, 0.0])
    # Class 3 inactive: its ground truth is dropped; predicting it would still be an error.
    assert mean_iou(m, [True, True, True, False]) == pytest.approx((1 / 3 + 1 / 1 + 1 / 3) / 3)
    assert np.isnan(class_iou(np.zeros((2, 2)))).all()
    assert np.isnan(mean_iou(np.zeros((2, 2)), [True, True]))
    with pytest.raises(ValueError, match=r"must lie in \[0, 4\)"):
        confusion_matrix(np.array([5]), np.array([0]), 4)
