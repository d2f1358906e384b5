"""Parity of exported graphs against PyTorch: statistics a segmentation user can act on.

Exact-label checks fail on a single flipped pixel and elementwise tolerances are too strict for FP16
and INT8, so every variant is judged on the same tiles by

* logit error: max / mean / p99 ``|Δlogit|`` and per-tile cosine similarity, plus a NaN/Inf count;
* label agreement: the fraction of pixels whose argmax over *active* classes equals PyTorch's, with
  flips split into near-ties (PyTorch's top-2 probability margin below ``ε``) and elsewhere: flips at
  near-ties are harmless noise, flips elsewhere are real damage;
* ΔmIoU against ground truth (in points) when the tiles come with masks.

A :class:`~flair_deploy.exports.config.ParityGate` turns these into pass/fail. Reports are written as
JSON (for machines) and Markdown (one table, for people).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from flair_deploy._optional import require
from flair_deploy.atomic import OutputSet
from flair_deploy.description import ModelDescription
from flair_deploy.errors import BackendError
from flair_deploy.exports.calibration import TileSet
from flair_deploy.exports.config import ParityGate
from flair_deploy.models import FlairSegmenter
from flair_deploy.predictions import confusion_matrix, masked_argmax, masked_softmax, mean_iou

__all__ = [
    "NEAR_TIE_MARGIN",
    "ParityResult",
    "compare_logits",
    "onnx_logits",
    "reference_logits",
    "render_reports",
    "write_reports",
]

#: PyTorch top-2 probability margin below which a pixel counts as a near-tie.
NEAR_TIE_MARGIN = 0.05
# |Δlogit| values kept per batch for the p99 estimate (an exact quantile over all N·K·H·W values
# would need them all in memory).
_P99_SAMPLE = 1 << 20


@dataclass(frozen=True)
class ParityResult:
    """How one exported variant compares with PyTorch on the parity tiles.

    Attributes:
        variant: ``fp32``, ``fp16``, ``int8`` (or an engine name).
        artifact: File name of the artifact checked.
        tiles: Number of tiles compared.
        pixels: Number of pixels compared.
        max_abs_logit: Largest ``|Δlogit|``.
        mean_abs_logit: Mean ``|Δlogit|``.
        p99_abs_logit: 99th percentile of ``|Δlogit|`` (estimated on a sample of at most 1 M values
            per batch).
        cosine_min: Smallest per-tile cosine similarity of the logits.
        cosine_mean: Mean per-tile cosine similarity.
        agreement: Fraction of pixels with the same active-class argmax.
        near_tie_flips: Flipped pixels where PyTorch's top-2 margin is below ``near_tie_margin``.
        other_flips: Flipped pixels elsewhere.
        near_tie_pixels: Pixels that are near-ties in PyTorch.
        near_tie_margin: The margin ``ε`` used.
        nonfinite: NaN or Inf values in the variant's logits.
        miou_reference: PyTorch's mIoU against the masks (fraction), or None without masks.
        miou_variant: The variant's mIoU against the masks, or None.
        delta_miou: ``(miou_reference - miou_variant) * 100`` points, or None.
        gate: The gate applied.
        failures: Gate violations, each one sentence; empty when passed.
    """

    variant: str
    artifact: str
    tiles: int
    pixels: int
    max_abs_logit: float
    mean_abs_logit: float
    p99_abs_logit: float
    cosine_min: float
    cosine_mean: float
    agreement: float
    near_tie_flips: int
    other_flips: int
    near_tie_pixels: int
    near_tie_margin: float
    nonfinite: int
    miou_reference: float | None
    miou_variant: float | None
    delta_miou: float | None
    gate: ParityGate
    failures: tuple[str, ...] = field(default=())

    @property
    def passed(self) -> bool:
        """Whether every gate threshold is met."""
        return not self.failures

    def summary(self) -> dict[str, float]:
        """Return the digest stored in the artifact's description (``provenance.parity``)."""
        out = {
            "tiles": float(self.tiles),
            "agreement": round(self.agreement, 7),
            "max_abs_logit": float(f"{self.max_abs_logit:.4g}"),
            "mean_abs_logit": float(f"{self.mean_abs_logit:.4g}"),
            "p99_abs_logit": float(f"{self.p99_abs_logit:.4g}"),
            "cosine_min": round(self.cosine_min, 7),
        }
        if self.delta_miou is not None:
            out["delta_miou_points"] = round(self.delta_miou, 4)
        return out

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-compatible dict (NaN written as null)."""
        data = asdict(self)
        data["gate"] = self.gate.model_dump()
        data["passed"] = self.passed
        data["failures"] = list(self.failures)
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in data.items()}


def reference_logits(model: FlairSegmenter, tiles: TileSet, *, batch_size: int = 4) -> NDArray[np.float32]:
    """Run PyTorch (eval mode, CPU, FP32) on *tiles* and return ``(N, K, H, W)`` logits."""
    was_training = model.training
    model.eval()
    outs = []
    try:
        with torch.inference_mode():
            for feed in tiles.batches(batch_size):
                image = torch.from_numpy(np.ascontiguousarray(feed["image"]))
                meta = torch.from_numpy(feed["metadata"]) if "metadata" in feed else None
                outs.append(model(image, meta).numpy())
    finally:
        model.train(was_training)
    return np.concatenate(outs).astype(np.float32, copy=False)


def onnx_logits(path: Path, tiles: TileSet, *, batch_size: int = 4, threads: int = 0) -> NDArray[np.float32]:
    """Run an ONNX file on onnxruntime's CPU provider and return its ``logits`` output.

    Raises:
        BackendError: If onnxruntime cannot load or run the graph.
    """
    ort = require("onnxruntime", purpose="checking ONNX parity")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        outs = [session.run(["logits"], feed)[0] for feed in tiles.batches(batch_size)]
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own Fail/InvalidArgument types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BackendError(f"onnxruntime cannot run {path.name}: {first}") from None
    return np.concatenate(outs).astype(np.float32, copy=False)


def _top2_margin(logits: NDArray[np.float32], active: NDArray[np.bool_]) -> NDArray[np.float32]:
    p = masked_softmax(logits, active)
    top2 = np.partition(p, -2, axis=1)[:, -2:]
    return (top2[:, 1] - top2[:, 0]).astype(np.float32)


def _miou(pred: NDArray[np.int64], masks: NDArray[np.int16], active: NDArray[np.bool_]) -> float:
    # Classes absent from both ground truth and predictions neither help nor hurt (NaN, skipped).
    return mean_iou(confusion_matrix(pred, masks, active.size), active)


def compare_logits(
    reference: NDArray[np.float32],
    candidate: NDArray[np.float32],
    description: ModelDescription,
    gate: ParityGate,
    *,
    variant: str,
    artifact: str,
    masks: NDArray[np.int16] | None = None,
    near_tie_margin: float = NEAR_TIE_MARGIN,
    batch_size: int = 4,
) -> ParityResult:
    """Compare *candidate* logits with PyTorch's *reference* logits and apply *gate*.

    Args:
        reference: PyTorch logits ``(N, K, H, W)``.
        candidate: The variant's logits, same shape.
        description: The model's description (active classes).
        gate: Thresholds to apply.
        variant: Variant name for the report.
        artifact: Artifact file name for the report.
        masks: Ground truth as logit indices ``(N, H, W)`` (-1 unlabelled), for ΔmIoU.
        near_tie_margin: Top-2 probability margin defining near-ties.
        batch_size: Tiles processed at a time (bounds the temporary memory).

    Returns:
        The statistics and the gate verdict.

    Raises:
        ValueError: If the shapes differ (a bug, not a user error).
    """
    if reference.shape != candidate.shape:
        raise ValueError(f"logit shapes differ: reference {reference.shape} vs candidate {candidate.shape}")
    active = np.asarray(description.active_mask, dtype=bool)
    n = reference.shape[0]
    total = 0.0
    count = 0
    max_abs = 0.0
    nonfinite = 0
    samples: list[NDArray[np.float32]] = []
    cosines: list[float] = []
    same = flips_tie = flips_other = ties = 0
    ref_pred: list[NDArray[np.int64]] = []
    cand_pred: list[NDArray[np.int64]] = []
    for start in range(0, n, batch_size):
        ref = reference[start : start + batch_size]
        cand = candidate[start : start + batch_size]
        finite = np.isfinite(cand)
        nonfinite += int((~finite).sum())
        diff = np.abs(np.where(finite, cand, 0.0) - ref)
        diff[~finite] = np.inf
        max_abs = max(max_abs, float(diff.max()))
        total += float(np.where(finite, diff, 0.0).sum())
        count += diff.size
        flat = diff.reshape(-1)
        step = max(1, flat.size // _P99_SAMPLE)
        samples.append(flat[::step])
        for r, c in zip(ref, cand, strict=True):
            r64, c64 = r.reshape(-1).astype(np.float64), np.nan_to_num(c.reshape(-1)).astype(np.float64)
            denom = float(np.linalg.norm(r64) * np.linalg.norm(c64))
            cosines.append(float(r64 @ c64) / denom if denom > 0 else float(np.array_equal(r64, c64)))
        rp, cp = masked_argmax(ref, active), masked_argmax(np.nan_to_num(cand), active)
        tie = _top2_margin(ref, active) < near_tie_margin
        flipped = rp != cp
        same += int((~flipped).sum())
        flips_tie += int((flipped & tie).sum())
        flips_other += int((flipped & ~tie).sum())
        ties += int(tie.sum())
        ref_pred.append(rp)
        cand_pred.append(cp)
    pixels = same + flips_tie + flips_other
    agreement = same / pixels if pixels else 1.0
    p99 = float(np.percentile(np.concatenate(samples), 99)) if samples else 0.0
    miou_ref = miou_var = delta = None
    if masks is not None:
        miou_ref = _miou(np.concatenate(ref_pred), masks, active)
        miou_var = _miou(np.concatenate(cand_pred), masks, active)
        if math.isfinite(miou_ref) and math.isfinite(miou_var):
            delta = (miou_ref - miou_var) * 100.0
    failures: list[str] = []
    if nonfinite:
        failures.append(f"{nonfinite} NaN/Inf logits")
    if agreement < gate.min_agreement:
        failures.append(f"argmax agreement {agreement:.4%} < {gate.min_agreement:.3%}")
    if gate.max_abs_logit is not None and max_abs > gate.max_abs_logit:
        failures.append(f"max |Δlogit| {max_abs:.3g} > {gate.max_abs_logit:.3g}")
    if gate.max_delta_miou is not None and delta is not None and delta > gate.max_delta_miou:
        failures.append(f"ΔmIoU {delta:.2f} points > {gate.max_delta_miou:.2f}")
    return ParityResult(
        variant=variant,
        artifact=artifact,
        tiles=n,
        pixels=pixels,
        max_abs_logit=max_abs,
        mean_abs_logit=total / count if count else 0.0,
        p99_abs_logit=p99,
        cosine_min=min(cosines) if cosines else 1.0,
        cosine_mean=float(np.mean(cosines)) if cosines else 1.0,
        agreement=agreement,
        near_tie_flips=flips_tie,
        other_flips=flips_other,
        near_tie_pixels=ties,
        near_tie_margin=near_tie_margin,
        nonfinite=nonfinite,
        miou_reference=miou_ref,
        miou_variant=miou_var,
        delta_miou=delta,
        gate=gate,
        failures=tuple(failures),
    )


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None or not math.isfinite(value) else format(value, spec)


def _markdown(name: str, origin: str, results: Sequence[ParityResult]) -> str:
    lines = [
        f"# Parity report: {name}",
        "",
        (
            f"Reference: PyTorch FP32 (CPU) on {results[0].tiles if results else 0} tiles ({origin}). "
            f"Near-tie: PyTorch top-2 probability margin < "
            f"{results[0].near_tie_margin if results else NEAR_TIE_MARGIN}."
        ),
        "",
        (
            "| variant | artifact | agreement | gate | max \\|Δlogit\\| | mean | p99 | cosine min "
            "| flips near-tie / elsewhere | ΔmIoU (pts) | result |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        gate = f"≥ {r.gate.min_agreement:.2%}"
        if r.gate.max_abs_logit is not None:
            gate += f", ≤ {r.gate.max_abs_logit:g}"
        if r.gate.max_delta_miou is not None:
            gate += f", ΔmIoU ≤ {r.gate.max_delta_miou:g}"
        verdict = "pass" if r.passed else "**FAIL**: " + "; ".join(r.failures)
        lines.append(
            f"| {r.variant} | `{r.artifact}` | {r.agreement:.5%} | {gate} | {_fmt(r.max_abs_logit, '.3g')} "
            f"| {_fmt(r.mean_abs_logit, '.3g')} | {_fmt(r.p99_abs_logit, '.3g')} | {_fmt(r.cosine_min, '.6f')} "
            f"| {r.near_tie_flips} / {r.other_flips} | {_fmt(r.delta_miou, '.3f')} | {verdict} |"
        )
    return "\n".join(lines) + "\n"


def render_reports(name: str, origin: str, results: Sequence[ParityResult]) -> tuple[str, str]:
    """Return the text of ``<name>.parity.json`` and ``<name>.parity.md``.

    Args:
        name: Artifact base name.
        origin: Where the parity tiles came from.
        results: One result per checked variant.
    """
    payload = {
        "model": name,
        "reference": "pytorch-fp32-cpu",
        "tiles": origin,
        "variants": [r.to_dict() for r in results],
        "passed": all(r.passed for r in results),
    }
    return json.dumps(payload, indent=2) + "\n", _markdown(name, origin, results)


def write_reports(
    out_dir: Path, name: str, origin: str, results: Sequence[ParityResult]
) -> tuple[Path, Path]:
    """Write ``<name>.parity.json`` and ``<name>.parity.md`` into *out_dir* (atomically).

    Returns:
        The JSON and Markdown paths.

    Raises:
        OutputError: If a report cannot be written.
    """
    json_path = out_dir / f"{name}.parity.json"
    md_path = out_dir / f"{name}.parity.md"
    json_text, md_text = render_reports(name, origin, results)
    with OutputSet(overwrite=True) as outputs:
        outputs.path(json_path).write_text(json_text, encoding="utf-8")
        outputs.path(md_path).write_text(md_text, encoding="utf-8")
    return json_path, md_path
