"""Parity statistics on hand-made logits: agreement, near-ties, ΔmIoU, gates."""

from __future__ import annotations

import numpy as np

from flair_deploy.exports.config import ParityGate, ParityGates
from flair_deploy.exports.parity import compare_logits


def _logits(tiny_description, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(0, 3, (2, tiny_description.num_classes, 8, 8)).astype(np.float32)


def test_identical_logits_pass_every_gate(tiny_description):
    ref = _logits(tiny_description)
    r = compare_logits(ref, ref.copy(), tiny_description, ParityGates().fp32, variant="fp32", artifact="a")
    assert r.passed and r.agreement == 1.0 and r.max_abs_logit == 0.0 and r.cosine_min == 1.0


def test_flips_are_split_into_near_ties_and_elsewhere(tiny_description):
    ref = np.zeros((1, tiny_description.num_classes, 1, 2), np.float32)
    ref[0, 0, 0, 0], ref[0, 1, 0, 0] = 1.0, 0.99  # near-tie pixel
    ref[0, 0, 0, 1], ref[0, 1, 0, 1] = 5.0, 0.0  # decisive pixel
    cand = ref.copy()
    cand[0, 1, 0, 0] = 1.01  # flips the near-tie
    r = compare_logits(ref, cand, tiny_description, ParityGate(min_agreement=0.9), variant="x", artifact="a")
    assert (r.near_tie_flips, r.other_flips, r.agreement) == (1, 0, 0.5)
    assert r.failures == ("argmax agreement 50.0000% < 90.000%",)
    cand[0, 1, 0, 1] = 6.0  # flips the decisive pixel
    r = compare_logits(ref, cand, tiny_description, ParityGate(min_agreement=0.0), variant="x", artifact="a")
    assert (r.near_tie_flips, r.other_flips) == (1, 1)


def test_inactive_classes_never_count(tiny_description):
    ref = _logits(tiny_description)
    cand = ref.copy()
    inactive = [i for i, a in enumerate(tiny_description.active_mask) if not a]
    cand[:, inactive] = 100.0  # only untrained logits change: predictions are unchanged
    r = compare_logits(ref, cand, tiny_description, ParityGate(min_agreement=1.0), variant="x", artifact="a")
    assert r.agreement == 1.0 and r.max_abs_logit > 90


def test_delta_miou_against_masks_and_nan_handling(tiny_description):
    ref = _logits(tiny_description)
    masks = np.argmax(
        np.where(np.asarray(tiny_description.active_mask)[None, :, None, None], ref, -np.inf), 1
    )
    masks = masks.astype(np.int16)
    masks[0, 0, 0] = -1  # unlabelled
    cand = np.roll(ref, 1, axis=1)  # garbage predictions
    cand[0, 0, 0, 0] = np.nan
    gate = ParityGate(min_agreement=0.0, max_delta_miou=1.0)
    r = compare_logits(ref, cand, tiny_description, gate, variant="int8", artifact="a", masks=masks)
    assert r.miou_reference == 1.0
    assert r.delta_miou is not None and r.delta_miou > 50
    assert r.nonfinite == 1
    assert any("NaN/Inf" in f for f in r.failures) and any("ΔmIoU" in f for f in r.failures)
    assert r.to_dict()["passed"] is False
