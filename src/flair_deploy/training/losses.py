"""Training loss: class-weighted cross-entropy with an ignore index, plus an optional soft Dice term.

Classes with weight 0 (inactive classes) are ignored: their pixels add nothing to the numerator nor to
the denominator of the weighted mean, exactly as PyTorch's weighted cross-entropy (and IGN's training).
Unlike ``F.cross_entropy(weight=...)`` with ``reduction="mean"``, a batch in which every pixel is ignored
gives a loss of 0 instead of ``NaN`` (0/0), so one unlucky batch cannot poison the weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SegmentationLoss", "soft_dice_loss"]

#: Target value PyTorch ignores by default; used when no ignore index is configured.
_TORCH_IGNORE = -100


def soft_dice_loss(
    logits: Tensor, target: Tensor, *, weights: Tensor, ignore_index: int | None, smooth: float = 1.0
) -> Tensor:
    """Return ``1 - mean soft Dice`` over the weighted classes present in *target*.

    Args:
        logits: ``(N, K, H, W)`` logits.
        target: ``(N, H, W)`` int64 class indices.
        weights: ``K`` class weights; classes with weight 0 are left out.
        ignore_index: Target value whose pixels are left out, or None.
        smooth: Additive smoothing of numerator and denominator.

    Returns:
        A scalar; 0 when no weighted class occurs in the batch.
    """
    k = logits.shape[1]
    valid = torch.ones_like(target, dtype=torch.bool) if ignore_index is None else target != ignore_index
    safe = torch.where(valid, target, torch.zeros_like(target))
    probs = logits.float().softmax(dim=1) * valid.unsqueeze(1)
    onehot = F.one_hot(safe, k).permute(0, 3, 1, 2).to(probs.dtype) * valid.unsqueeze(1)
    inter = (probs * onehot).sum(dim=(0, 2, 3))
    denom = probs.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3))
    dice = (2 * inter + smooth) / (denom + smooth)
    scored = ((weights > 0) & (onehot.sum(dim=(0, 2, 3)) > 0)).to(dice.dtype)
    # Mean over scored classes without a data-dependent branch (no host sync on GPU).
    return ((1.0 - dice) * scored).sum() / scored.sum().clamp_min(1.0)


class SegmentationLoss(nn.Module):
    """Weighted cross-entropy (+ ``dice_weight`` × soft Dice).

    The class weights are a buffer named ``weight``, so in a task they appear as ``criterion.weight``
    (IGN's key, dropped by :func:`flair_deploy.checkpoints.load_checkpoint`).
    """

    weight: Tensor

    def __init__(
        self, weights: Sequence[float], *, ignore_index: int | None = None, dice_weight: float = 0.0
    ) -> None:
        """Create the loss.

        Args:
            weights: One weight per logit; 0 ignores the class.
            ignore_index: Target value whose pixels are ignored, or None.
            dice_weight: Weight of the soft Dice term (0 = cross-entropy only).
        """
        super().__init__()
        if not any(w > 0 for w in weights):
            raise ValueError("at least one class weight must be > 0")
        self.register_buffer("weight", torch.tensor(list(weights), dtype=torch.float32))
        self.ignore_index = ignore_index
        self.dice_weight = dice_weight

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Return the scalar loss for ``(N, K, H, W)`` logits and ``(N, H, W)`` int64 targets."""
        logits = logits.float()  # the loss is computed in fp32 even under mixed precision
        ignore = _TORCH_IGNORE if self.ignore_index is None else self.ignore_index
        per_pixel = F.cross_entropy(logits, target, weight=self.weight, ignore_index=ignore, reduction="none")
        valid = target != ignore
        safe = torch.where(valid, target, torch.zeros_like(target))
        denom = (self.weight[safe] * valid).sum()
        # Weighted mean over valid pixels. When every pixel is ignored both sums are 0, and the clamp
        # turns 0/0 into 0 without a host sync (no data-dependent branch).
        loss = per_pixel.sum() / denom.clamp_min(1e-12)
        if self.dice_weight > 0:
            loss = loss + self.dice_weight * soft_dice_loss(
                logits, target, weights=self.weight, ignore_index=self.ignore_index
            )
        return loss
