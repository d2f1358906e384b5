"""Training augmentations as pure tensor functions.

* **D4** (:func:`d4`, :func:`random_d4`): the eight symmetries of the square (identity, three 90°
  rotations, and each of those followed by a horizontal flip), applied to the image and the mask
  together. Aerial orthophotos have no preferred orientation, so every symmetry is a valid sample. This
  covers IGN's vertical flip + horizontal flip + 90° rotation recipe.
* **Radiometric jitter** (:func:`radiometric_jitter`): a random per-band gain and offset on the *raw*
  band values (normalisation happens later, inside the model), mimicking differences in exposure and
  sensor calibration between acquisitions.

Randomness comes from torch's global generator unless a :class:`torch.Generator` is given. DataLoader
seeds that global generator differently in every worker, so workers never repeat each other's draws
(numpy's global generator would be forked identically into each worker).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["d4", "radiometric_jitter", "random_d4"]


def d4(image: Tensor, mask: Tensor | None, *, rotations: int, flip: bool) -> tuple[Tensor, Tensor | None]:
    """Apply one D4 symmetry to an image and (optionally) its mask.

    Args:
        image: ``(C, H, W)`` tensor.
        mask: ``(H, W)`` tensor aligned with *image*, or None.
        rotations: Number of 90° counter-clockwise rotations (taken modulo 4).
        flip: Whether to flip left-right after rotating.

    Returns:
        The transformed image and mask (contiguous, so DataLoader collation does not copy twice).
    """
    k = rotations % 4
    img = torch.rot90(image, k, dims=(-2, -1)) if k else image
    msk = torch.rot90(mask, k, dims=(-2, -1)) if (k and mask is not None) else mask
    if flip:
        img = torch.flip(img, dims=(-1,))
        msk = torch.flip(msk, dims=(-1,)) if msk is not None else None
    return img.contiguous(), (msk.contiguous() if msk is not None else None)


def random_d4(
    image: Tensor, mask: Tensor | None, *, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor | None]:
    """Apply a uniformly drawn D4 symmetry to an image and its mask together (see :func:`d4`)."""
    draw = int(torch.randint(0, 8, (1,), generator=generator).item())
    return d4(image, mask, rotations=draw % 4, flip=draw >= 4)


def radiometric_jitter(
    image: Tensor,
    strength: float,
    *,
    value_range: float = 255.0,
    clip: tuple[float, float] | None = (0.0, 255.0),
    generator: torch.Generator | None = None,
) -> Tensor:
    """Apply a random per-band gain and offset to raw band values.

    Each band ``b`` becomes ``x * g_b + o_b`` with ``g_b ~ U(1 - strength, 1 + strength)`` and
    ``o_b ~ U(-strength, strength) * value_range``.

    Args:
        image: ``(C, H, W)`` float tensor of raw band values.
        strength: Jitter amplitude; 0 returns *image* unchanged. 0.1 means ±10 % gain and ±10 % of the
            value range as offset.
        value_range: Span of the raw values (255 for uint8 rasters, 65535 for uint16).
        clip: ``(low, high)`` bounds of the sensor's values, or None to leave values unbounded.
        generator: Optional generator for reproducible draws.

    Returns:
        The jittered image (a new tensor unless *strength* is 0).

    Raises:
        ValueError: If *strength* is negative or not below 1 (a gain could reach 0 or turn negative).
    """
    if not 0.0 <= strength < 1.0:
        raise ValueError(f"radiometric jitter strength must be in [0, 1), got {strength}")
    if strength == 0.0:
        return image
    c = image.shape[0]
    u = torch.rand((2, c, 1, 1), generator=generator, dtype=torch.float32) * 2.0 - 1.0
    gain = 1.0 + strength * u[0]
    offset = strength * value_range * u[1]
    out = image * gain.to(image.dtype) + offset.to(image.dtype)
    if clip is not None:
        out = out.clamp_(clip[0], clip[1])
    return out
