"""Metric conventions against hand-computed matrices; the confusion matrix against brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flair_deploy.description import class_preset
from flair_deploy.errors import ModelDescriptionError
from flair_deploy.training.metrics import (
    ConfusionMatrix,
    challenge_applicable,
    compute_metrics,
    masked_argmax,
)

# rows = GT, cols = prediction; class "c" is inactive and "d" never occurs.
M = np.array(
    [
        [5, 1, 2, 0],  # a: 2 pixels predicted as the inactive class
        [2, 3, 0, 0],  # b
        [1, 1, 4, 0],  # c (inactive): GT pixels of an untrained class
        [0, 0, 0, 0],  # d: absent from GT and predictions
    ]
)
NAMES = ["a", "b", "c", "d"]
ACTIVE = [True, True, False, True]


def test_present_keeps_inactive_columns_drops_rows_and_skips_absent_classes():
    m = compute_metrics(M, class_names=NAMES, active=ACTIVE, convention="present")
    assert m.classes == ("a", "b", "d")
    # a: tp 5, fn 1+2 (incl. predicted-as-inactive), fp 2 (from b; c's row is dropped)
    assert m.per_class_iou["a"] == pytest.approx(5 / (5 + 3 + 2))
    assert m.per_class_iou["b"] == pytest.approx(3 / (3 + 2 + 1))
    assert math.isnan(m.per_class_iou["d"])
    assert m.averaged_over == ("a", "b")
    assert m.miou == pytest.approx((5 / 10 + 3 / 6) / 2)
    assert m.overall_accuracy == pytest.approx(8 / 13)
    assert m.per_class_recall["a"] == pytest.approx(5 / 8)
    assert m.per_class_precision["a"] == pytest.approx(5 / 7)
    assert math.isnan(m.per_class_precision["d"]) and math.isnan(m.per_class_fscore["d"])
    assert m.support == {"a": 8, "b": 5, "d": 0}
    assert m.pixels == 13


def test_ign_deletes_inactive_rows_and_columns_and_zeroes_nan():
    m = compute_metrics(M, class_names=NAMES, active=ACTIVE, convention="ign")
    assert m.classes == ("a", "b", "d")
    # Sub-matrix [[5,1,0],[2,3,0],[0,0,0]]: the 2 pixels of "a" predicted as "c" vanish.
    assert m.per_class_iou["a"] == pytest.approx(5 / 8)
    assert m.per_class_iou["b"] == pytest.approx(3 / 6)
    assert m.per_class_iou["d"] == 0.0
    assert m.per_class_fscore["d"] == 0.0 and m.per_class_precision["d"] == 0.0
    assert m.miou == pytest.approx((5 / 8 + 3 / 6 + 0) / 3)
    assert m.overall_accuracy == pytest.approx(8 / 11)
    assert m.recall == pytest.approx((5 / 6 + 3 / 5 + 0) / 3)
    p, r = 5 / 7, 5 / 6
    assert m.per_class_fscore["a"] == pytest.approx(2 * p * r / (p + r))


def test_challenge_folds_codes_above_12_into_other_and_averages_first_12():
    k = 19
    mat = np.zeros((k, k), dtype=np.int64)
    mat[0, 0] = 10  # building right
    mat[0, 15] = 5  # building predicted as "mixed" (index 15) -> folded into "other"
    mat[13, 14] = 4  # GT snow predicted as clear cut: both fold into other -> correct "other"
    mat[18, 1] = 3  # GT other predicted as pervious
    names = [c.name for c in class_preset("flair19")]
    m = compute_metrics(mat, class_names=names, active=[True] * k, convention="challenge")
    assert len(m.classes) == 13 and m.classes[12] == "other"
    assert m.per_class_iou["building"] == pytest.approx(10 / 15)
    assert m.per_class_iou["pervious surface"] == 0.0
    assert m.per_class_iou["other"] == pytest.approx(4 / (4 + 3 + 5))
    # Only building and pervious are defined among the first 12; "other" is never averaged.
    assert m.averaged_over == ("building", "pervious surface")
    assert m.miou == pytest.approx(10 / 15 / 2)
    assert m.overall_accuracy == pytest.approx(14 / 22)
    assert math.isnan(m.per_class_iou["water"])


def test_challenge_is_identity_on_the_13_class_remap():
    names = [c.name for c in class_preset("flair13")]
    mat = np.diag(np.arange(1, 14))
    m = compute_metrics(mat, class_names=names, active=[True] * 13, convention="challenge")
    assert m.miou == 1.0 and m.per_class_iou["other"] == 1.0


def test_challenge_applicable_only_to_flair_codes():
    assert challenge_applicable([c.code for c in class_preset("flair19")])
    assert challenge_applicable([c.code for c in class_preset("flair13")])
    assert not challenge_applicable([1, 2, 3])
    assert not challenge_applicable(list(range(19)))


def test_fscore_is_zero_not_nan_when_class_is_always_wrong():
    m = compute_metrics(np.array([[0, 3], [2, 0]]), class_names=["x", "y"], active=[True, True])
    assert m.per_class_fscore == {"x": 0.0, "y": 0.0}
    assert m.miou == 0.0


def test_present_counts_undefined_precision_of_an_occurring_class_as_zero():
    # "y" occurs in GT but is never predicted; "z" never occurs at all.
    mat = np.array([[4, 0, 0], [2, 0, 0], [0, 0, 0]])
    m = compute_metrics(mat, class_names=["x", "y", "z"], active=[True] * 3, convention="present")
    assert math.isnan(m.per_class_precision["y"]) and m.per_class_recall["y"] == 0.0
    assert m.per_class_fscore["y"] == 0.0 and m.per_class_iou["y"] == 0.0
    assert m.averaged_over == ("x", "y")
    assert m.precision == pytest.approx((4 / 6 + 0) / 2)
    assert m.fscore == pytest.approx((8 / 10 + 0) / 2)
    assert m.miou == pytest.approx((4 / 6 + 0) / 2)


def test_to_dict_writes_nan_as_none():
    d = compute_metrics(M, class_names=NAMES, active=ACTIVE).to_dict()
    assert d["per_class_iou"]["d"] is None
    assert d["convention"] == "present"


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="does not match"):
        compute_metrics(np.zeros((3, 3)), class_names=["a", "b"], active=[True, True])
    with pytest.raises(ModelDescriptionError, match="unique"):
        compute_metrics(np.zeros((2, 2)), class_names=["a", "a"], active=[True, True])
    with pytest.raises(ValueError, match="at least 13"):
        compute_metrics(np.zeros((2, 2)), class_names=["a", "b"], active=[True, True], convention="challenge")
    with pytest.raises(ValueError, match="unknown metric convention"):
        compute_metrics(np.zeros((2, 2)), class_names=["a", "b"], active=[True, True], convention="x")  # type: ignore[arg-type]


def test_confusion_matrix_matches_brute_force_with_ignore_index():
    g = torch.Generator().manual_seed(1)
    k = 5
    cm = ConfusionMatrix(k, ignore_index=255)
    brute = np.zeros((k, k), dtype=np.int64)
    for _ in range(3):
        pred = torch.randint(0, k, (2, 8, 8), generator=g)
        target = torch.randint(0, k, (2, 8, 8), generator=g)
        target[:, :2] = 255
        cm.update(pred, target)
        for p, t in zip(pred.flatten().tolist(), target.flatten().tolist(), strict=True):
            if t != 255:
                brute[t, p] += 1
    assert cm.matrix.dtype == np.int64
    np.testing.assert_array_equal(cm.matrix, brute)
    assert cm.total == 3 * 2 * 6 * 8

    other = ConfusionMatrix(k, ignore_index=255)
    other.update(torch.tensor([0, 1]), torch.tensor([1, 1]))
    cm.merge(other)
    brute[1, 0] += 1
    brute[1, 1] += 1
    np.testing.assert_array_equal(cm.matrix, brute)
    cm.reset()
    assert cm.total == 0


def test_confusion_matrix_rejects_out_of_range_and_shape_mismatch():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        cm.update(torch.tensor([0, 3]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="shape"):
        cm.update(torch.tensor([0, 1]), torch.tensor([0]))
    cm.update(torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long))
    assert cm.total == 0


def test_masked_argmax_never_picks_inactive_class():
    logits = torch.zeros(1, 3, 2, 2)
    logits[:, 1] = 10.0  # the inactive class has the highest logit everywhere
    logits[:, 2, 0, 0] = 1.0
    out = masked_argmax(logits, [True, False, True])
    assert out.shape == (1, 2, 2)
    assert out[0, 0, 0] == 2 and (out != 1).all()
    assert masked_argmax(logits, [True, True, True]).eq(1).all()
