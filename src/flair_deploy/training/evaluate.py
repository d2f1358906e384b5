"""Evaluate a checkpoint on a labelled FLAIR patch list: metrics, confusion matrix, optional predictions.

:func:`evaluate` loads any checkpoint :func:`~flair_deploy.checkpoints.load_checkpoint` understands,
predicts every listed patch (inactive logits masked before argmax), accumulates one confusion matrix
and scores it under every named convention of :mod:`flair_deploy.training.metrics`. It writes into
``out_dir``:

* ``metrics.json``: one block per convention (``present``, ``ign``, ``challenge``), each with
  mIoU, overall accuracy, macro F-score/precision/recall, per-class values and support;
* ``confusion_matrix.csv``: the full ``K×K`` pixel counts in logit order, rows = ground truth,
  columns = prediction, class names as header (inactive classes included, as IGN's ``confmat.npy``);
* ``confusion_matrix.png``: the row-normalised matrix over the active classes;
* with ``save_predictions``: ``predictions/PRED_<stem>.tif``, one georeferenced uint8 GeoTIFF per
  patch holding FLAIR class codes, nodata 255, a colour table and class-name tags, plus
  ``predictions/classes.qml`` (a QGIS style with class names).

With *ign* (:class:`IgnOutputs`, used by ``flair-deploy train`` for IGN's ``tasks.predict`` and
``tasks.metrics``) it also writes IGN's ``flair`` outputs: ``PRED_<stem>.tif`` holding 0-based class
**indices** (IGN's values) into one folder, and ``confmat.npy`` plus IGN's ``metrics.json`` into another
(:func:`ign_metrics_report`). With ``score=False`` the masks are not read and only predictions are
written.

Every file is written under a temporary name and renamed when complete; predictions are gathered in a
temporary folder and moved in only after the whole list was evaluated, so a failure leaves nothing
half-written. Existing outputs are refused unless ``overwrite=True``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import Tensor

from flair_deploy.artifacts import Describer
from flair_deploy.atomic import OutputSet, atomic_path, check_destination, output_error
from flair_deploy.checkpoints import load_checkpoint
from flair_deploy.description import ModelDescription
from flair_deploy.errors import ConfigError, InputDataError, OutputError
from flair_deploy.flair_format import PatchPair
from flair_deploy.maps import write_class_map_pam, write_class_map_tags, write_qgis_style
from flair_deploy.training.metrics import (
    CONVENTIONS,
    ConfusionMatrix,
    Convention,
    FlairMetrics,
    challenge_applicable,
    compute_metrics,
    masked_argmax,
)

__all__ = [
    "CONVENTION_NOTES",
    "IGN_CONFMAT",
    "IGN_METRICS",
    "EvaluationResult",
    "IgnOutputs",
    "check_outputs",
    "evaluate",
    "ign_metrics_report",
    "write_confusion_matrix_csv",
    "write_confusion_matrix_png",
]

if TYPE_CHECKING:
    from flair_deploy.inference.config import PatchSourcesConfig

METRICS_FILE = "metrics.json"
MATRIX_CSV = "confusion_matrix.csv"
MATRIX_PNG = "confusion_matrix.png"
PREDICTIONS_DIR = "predictions"
#: IGN's names in its metrics folder: the uncleaned confusion matrix and the scores.
IGN_CONFMAT = "confmat.npy"
IGN_METRICS = "metrics.json"
#: IGN's average metrics, in the order of its ``Avg_metrics_name``.
IGN_AVERAGES = ("mIoU", "Overall Accuracy", "Fscore", "Precision", "Recall")
# Mask value for codes outside the class table when they are ignored; never a logit index (K <= 254).
_IGNORE = 255

#: One-line explanation of each convention, written into ``metrics.json``.
CONVENTION_NOTES: dict[Convention, str] = {
    "present": (
        "flair-deploy default: active classes only; ground-truth pixels of inactive classes ignored; "
        "classes absent from ground truth and predictions (IoU NaN, null here) left out of the means"
    ),
    "ign": (
        "IGN's current flair code: rows and columns of inactive (weight-0) classes deleted; "
        "NaN set to 0, so absent classes count as 0 in the means"
    ),
    "challenge": (
        "FLAIR #1 challenge: codes 13-19 folded into 'other' in ground truth and predictions (13x13); "
        "means over the first 12 classes, NaN excluded; 'other' reported, never averaged"
    ),
}


@dataclass(frozen=True)
class IgnOutputs:
    """IGN ``flair`` outputs :func:`evaluate` writes beside its own.

    Attributes:
        predictions: Folder for ``PRED_<stem>.tif`` holding uint8 0-based class indices (IGN's
            values), or None for none.
        metrics: Folder for ``confmat.npy`` (the full ``K×K`` int64 matrix, rows = ground truth) and
            IGN's ``metrics.json`` (see :func:`ign_metrics_report`), or None for none.
        georeferenced: Predictions carry the patch's CRS and transform (IGN's
            ``georeferencing_output``); False writes TIFFs without georeferencing.
    """

    predictions: Path | None = None
    metrics: Path | None = None
    georeferenced: bool = True

    def files(self, pairs: Sequence[PatchPair]) -> list[Path]:
        """The files these outputs would be for the patches *pairs* (metrics first)."""
        out = [self.metrics / IGN_CONFMAT, self.metrics / IGN_METRICS] if self.metrics is not None else []
        if self.predictions is not None:
            out += [self.predictions / f"PRED_{p.image.stem}.tif" for p in pairs]
        return out


@dataclass(frozen=True)
class EvaluationResult:
    """What :func:`evaluate` computed and wrote.

    Attributes:
        metrics: Scores per convention; ``"challenge"`` is absent for non-FLAIR class tables; empty
            when not scored (``score=False``).
        confusion_matrix: ``K×K`` int64 pixel counts in logit order, rows = ground truth; None when
            not scored.
        description: The evaluated model's description.
        patches: Number of patches evaluated.
        seconds: Wall time of the prediction loop.
        files: Every file written, metrics first.
    """

    metrics: Mapping[Convention, FlairMetrics]
    confusion_matrix: NDArray[np.int64] | None
    description: ModelDescription
    patches: int
    seconds: float
    files: tuple[Path, ...]

    @property
    def class_names(self) -> tuple[str, ...]:
        """Class names in logit order (the confusion matrix's order)."""
        return tuple(c.name for c in self.description.classes)


def evaluate(
    checkpoint: Path,
    csv_path: Path,
    out_dir: Path,
    *,
    preset: Describer | None = None,
    description: ModelDescription | None = None,
    band_indexes: Sequence[int] | None = None,
    aerial_json: Path | None = None,
    batch_size: int = 8,
    num_workers: int = 0,
    device: str | None = None,
    ignore_unknown: bool = False,
    save_predictions: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    score: bool = True,
    ign: IgnOutputs | None = None,
    sources: PatchSourcesConfig | None = None,
    patches: Sequence[PatchPair] | None = None,
) -> EvaluationResult:
    """Evaluate a checkpoint on the patches listed in a FLAIR CSV and write the reports.

    Args:
        checkpoint: A flair-deploy or IGN checkpoint / state dict.
        csv_path: FLAIR patch list (``image,mask`` rows, no header).
        out_dir: Output folder (created if missing).
        preset: Preset description for checkpoints that carry none (IGN weights).
        description: Explicit description for checkpoints that carry none (alternative to *preset*).
        band_indexes: 1-based raster bands in the model's band order; default ``1..C``.
        aerial_json: FLAIR aerial metadata JSON, required for models that fuse metadata.
        batch_size: Patches per forward pass.
        num_workers: DataLoader worker processes (0 reads in the main process).
        device: Torch device (``"cpu"``, ``"cuda"``); default CUDA when available.
        ignore_unknown: Skip mask codes outside the class table instead of failing.
        save_predictions: Also write ``predictions/PRED_<stem>.tif`` for every patch.
        overwrite: Replace existing outputs.
        progress: Show a progress bar.
        score: Read the masks and write the reports; False only predicts (masks may be absent from
            the CSV; nothing is written into *out_dir* but predictions).
        ign: IGN's outputs to write too (0-based predictions, ``confmat.npy``, IGN's metrics.json).
        sources: BD ORTHO patches: the list's images are RVB rasters; each is completed with its IRC
            raster and elevation into a temporary VRT of R, G, B, NIR (, E)
            (:func:`~flair_deploy.inference.sources.assembled_patches`).
        patches: The rows to evaluate, already read (*csv_path* still names the data in the report).

    Returns:
        The metrics, the confusion matrix and the written files.

    Raises:
        InputDataError: Unreadable CSV/patches, bad masks, patches of different sizes in one batch.
        CheckpointError: Unreadable or mismatching checkpoint.
        ConfigError: Bad batch size, band selection, or missing aerial metadata.
        OutputError: Outputs exist without *overwrite*, or the folder cannot be written.
    """
    from torch.utils.data import DataLoader

    from flair_deploy.training.data import FlairPatchDataset, read_patch_csv

    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ConfigError(f"num_workers must be >= 0, got {num_workers}")
    out_dir = Path(out_dir)
    if ign is not None and ign.metrics is not None and not score:
        raise ConfigError("IGN's metrics need the masks: evaluate with score=True")
    pairs = list(patches) if patches is not None else read_patch_csv(Path(csv_path), require_masks=score)
    if not score:
        pairs = [replace(p, mask=None) for p in pairs]
    if sources is not None:  # BD ORTHO patches: the same evaluation on VRTs that exist while it lasts
        from flair_deploy.inference.sources import assembled_patches

        with assembled_patches(
            pairs,
            irc=sources.irc,
            elevation=sources.elevation,
            beside=out_dir / METRICS_FILE,
            elevation_scale=sources.elevation_scale,
            elevation_offset=sources.elevation_offset,
            reproject=sources.reproject,
            resampling=sources.resampling,
        ) as assembled:
            return evaluate(
                checkpoint,
                csv_path,
                out_dir,
                preset=preset,
                description=description,
                band_indexes=band_indexes,
                aerial_json=aerial_json,
                batch_size=batch_size,
                num_workers=num_workers,
                device=device,
                ignore_unknown=ignore_unknown,
                save_predictions=save_predictions,
                overwrite=overwrite,
                progress=progress,
                score=score,
                ign=ign,
                patches=assembled,
            )
    check_outputs(
        out_dir, pairs, score=score, overwrite=overwrite, save_predictions=save_predictions, ign=ign
    )
    loaded = load_checkpoint(Path(checkpoint), description=description, preset=preset)
    desc = loaded.description
    bands = tuple(band_indexes) if band_indexes is not None else tuple(range(1, desc.in_channels + 1))
    aerial = None
    if desc.metadata is not None:
        if aerial_json is None:
            raise ConfigError(
                f"{checkpoint} fuses aerial metadata ({desc.metadata.encoding}); give the FLAIR "
                "metadata JSON with --aerial"
            )
        from flair_deploy.aerial import load_aerial_json

        aerial = load_aerial_json(Path(aerial_json))
    if save_predictions or (ign is not None and ign.predictions is not None):
        stems = [p.image.stem for p in pairs]
        if len(set(stems)) != len(stems):
            dupes = sorted({s for s in stems if stems.count(s) > 1})[:3]
            raise InputDataError(
                f"{csv_path} lists several images with the same name {dupes}; predictions are named "
                "PRED_<name>.tif, so names must be unique"
            )
    dataset = FlairPatchDataset(
        pairs,
        description=desc,
        band_indexes=bands,
        ignore_index=_IGNORE if ignore_unknown else None,
        aerial=aerial,
    )
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=_collate)
    try:
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError:
        raise ConfigError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but no CUDA GPU is available; use --device cpu")
    model = loaded.model.to(dev).eval()
    active = desc.active_mask
    stride = desc.architecture.output_stride
    codes = np.array([c.code for c in desc.classes], dtype=np.uint8)
    cm = ConfusionMatrix(desc.num_classes, ignore_index=_IGNORE)

    # Reports and predictions appear together when the evaluation completes, or not at all: an
    # interrupted or failed run leaves nothing that blocks (or looks like) a finished one.
    written: list[Path] = []
    with OutputSet(overwrite=True) as outputs:
        start = time.perf_counter()
        index = 0
        for batch in _progress(loader, enabled=progress, total=len(loader)):
            image: Tensor = batch["image"].to(dev)
            metadata = batch["metadata"].to(dev) if "metadata" in batch else None
            with torch.inference_mode():
                logits = _predict(model, image, metadata, stride)
                pred = masked_argmax(logits, active)
            if score:
                cm.update(pred, batch["mask"].to(dev))
            ign_dir = ign.predictions if ign is not None else None
            if save_predictions or ign_dir is not None:
                for pred_i in pred.cpu().numpy():
                    pair = pairs[index]
                    index += 1
                    name = f"PRED_{pair.image.stem}.tif"
                    if save_predictions:
                        final = out_dir / PREDICTIONS_DIR / name
                        _write_prediction(final, outputs.path(final), codes[pred_i], pair.image, desc)
                        written.append(final)
                    if ign_dir is not None:
                        assert ign is not None
                        final = ign_dir / name
                        indices = pred_i.astype(np.uint8)
                        _write_prediction(
                            final,
                            outputs.path(final),
                            indices,
                            pair.image,
                            desc,
                            indices=True,
                            georeferenced=ign.georeferenced,
                            sidecar=False,  # IGN's predictions folder holds IGN's files only
                        )
                        written.append(final)
            else:
                index += image.shape[0]
        seconds = time.perf_counter() - start

        matrix: NDArray[np.int64] | None = None
        metrics: dict[Convention, FlairMetrics] = {}
        reports: list[Path] = []
        if score:
            matrix = cm.matrix
            metrics = _score(matrix, desc, codes.tolist())
            report = _metrics_report(
                metrics, desc, csv_path=Path(csv_path), patches=len(pairs), seconds=seconds
            )
            path = out_dir / METRICS_FILE
            text = json.dumps(report, indent=2, ensure_ascii=False) + "\n"
            outputs.path(path).write_text(text, encoding="utf-8")
            names = [c.name for c in desc.classes]
            write_confusion_matrix_csv(outputs.path(out_dir / MATRIX_CSV), matrix, names)
            write_confusion_matrix_png(outputs.path(out_dir / MATRIX_PNG), matrix, names, desc.active_mask)
            reports = [path, out_dir / MATRIX_CSV, out_dir / MATRIX_PNG]
            if ign is not None and ign.metrics is not None:
                ign_json, confmat = ign.metrics / IGN_METRICS, ign.metrics / IGN_CONFMAT
                text = json.dumps(ign_metrics_report(matrix, desc)) + "\n"
                outputs.path(ign_json).write_text(text, encoding="utf-8")
                with outputs.path(confmat).open("wb") as f:
                    np.save(f, matrix)  # through a handle: np.save would append .npy to the temporary name
                reports += [ign_json, confmat]
        if save_predictions:
            style = out_dir / PREDICTIONS_DIR / "classes.qml"
            write_qgis_style(outputs.path(style), desc, overwrite=True)
            written.append(style)
        written = reports + written
    return EvaluationResult(
        metrics=metrics,
        confusion_matrix=matrix,
        description=desc,
        patches=len(pairs),
        seconds=seconds,
        files=tuple(written),
    )


def _score(
    matrix: NDArray[np.int64], desc: ModelDescription, codes: Sequence[int]
) -> dict[Convention, FlairMetrics]:
    names = [c.name for c in desc.classes]
    metrics: dict[Convention, FlairMetrics] = {}
    for conv in CONVENTIONS:
        if conv == "challenge" and not challenge_applicable(codes):
            continue
        metrics[conv] = compute_metrics(matrix, class_names=names, active=desc.active_mask, convention=conv)
    return metrics


def ign_metrics_report(matrix: NDArray[np.integer[Any]], desc: ModelDescription) -> dict[str, Any]:
    """IGN's ``metrics.json`` for a confusion matrix: the ``"ign"`` convention in IGN's keys and units.

    Keys as IGN's ``src/flair/metrics.py`` writes them: ``Avg_metrics_name`` (mIoU, Overall Accuracy,
    Fscore, Precision, Recall), ``Avg_metrics``, ``classes`` (the active classes' names) and
    ``per_class_iou``/``fscore``/``precision``/``recall`` as lists in that order. Values are percent;
    rows and columns of inactive (weight-0) classes are removed before scoring and NaN counts as 0
    (see :func:`~flair_deploy.training.metrics.compute_metrics`).

    Args:
        matrix: ``K×K`` counts in logit order, rows = ground truth.
        desc: The model description (class names and active flags).
    """
    names = [c.name for c in desc.classes]
    m = compute_metrics(matrix, class_names=names, active=desc.active_mask, convention="ign")

    def pct(values: Iterable[float]) -> list[float]:
        return [100.0 * float(v) for v in values]

    return {
        "Avg_metrics_name": list(IGN_AVERAGES),
        "Avg_metrics": pct((m.miou, m.overall_accuracy, m.fscore, m.precision, m.recall)),
        "classes": list(m.classes),
        "per_class_iou": pct(m.per_class_iou[n] for n in m.classes),
        "per_class_fscore": pct(m.per_class_fscore[n] for n in m.classes),
        "per_class_precision": pct(m.per_class_precision[n] for n in m.classes),
        "per_class_recall": pct(m.per_class_recall[n] for n in m.classes),
    }


def check_outputs(
    out_dir: Path,
    pairs: Sequence[PatchPair],
    *,
    score: bool = True,
    overwrite: bool = False,
    save_predictions: bool = False,
    ign: IgnOutputs | None = None,
) -> None:
    """Refuse up front what :func:`evaluate` would not write: existing outputs without *overwrite*.

    Args:
        out_dir: :func:`evaluate`'s output folder.
        pairs: The patches to evaluate (predictions are named after them).
        score: Whether the reports would be written.
        overwrite: Replace existing outputs.
        save_predictions: Whether our predictions would be written.
        ign: IGN's outputs that would be written too.

    Raises:
        OutputError: If an output exists without *overwrite*, or a folder cannot be written.
    """
    _check_outputs(out_dir, save_predictions=save_predictions, overwrite=overwrite, score=score)
    if ign is not None:
        for path in ign.files(pairs):
            check_destination(path, overwrite=overwrite)


def _check_outputs(out_dir: Path, *, save_predictions: bool, overwrite: bool, score: bool = True) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"output folder {out_dir} is an existing file; choose a folder path")
    check_destination(out_dir / METRICS_FILE, overwrite=True)  # a writable folder, found up front
    if overwrite:
        return
    names = [METRICS_FILE, MATRIX_CSV, MATRIX_PNG] if score else []
    clash = [n for n in names if (out_dir / n).exists()]
    pred_dir = out_dir / PREDICTIONS_DIR
    if save_predictions and pred_dir.is_dir() and any(pred_dir.glob("PRED_*.tif")):
        clash.append(f"{PREDICTIONS_DIR}/PRED_*.tif")
    if clash:
        raise OutputError(
            f"{out_dir} already holds {', '.join(clash)}; pass --overwrite or choose another --out"
        )


def _collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    from flair_deploy.training.data import collate_patches

    # Evaluation can take mixed sizes one patch at a time (the model runs at any multiple of its stride).
    return collate_patches(samples, fix="use --batch-size 1 for lists of mixed patch sizes")


def _predict(model: torch.nn.Module, image: Tensor, metadata: Tensor | None, stride: int) -> Tensor:
    """Run the model, padding H and W up to the output stride and cropping the logits back."""
    h, w = image.shape[-2:]
    ph, pw = (-h) % stride, (-w) % stride
    if ph or pw:
        # Edge replication: no artificial zero border for the network to react to.
        image = F.pad(image, (0, pw, 0, ph), mode="replicate")
    logits: Tensor = model(image) if metadata is None else model(image, metadata)
    return logits[..., :h, :w]


def _progress(loader: Iterable[Any], *, enabled: bool, total: int) -> Iterable[Any]:
    if not enabled:
        return loader
    from rich.progress import track

    # Transient: the bar disappears once done, leaving the CLI's summary table alone on screen.
    return track(loader, total=total, description="evaluate", transient=True)


def _write_prediction(
    final: Path,
    path: Path,
    codes: NDArray[np.uint8],
    image_path: Path,
    desc: ModelDescription,
    *,
    indices: bool = False,
    georeferenced: bool = True,
    sidecar: bool = True,
) -> None:
    """Write the prediction map *final* to *path* (its temporary name).

    *codes* are FLAIR class codes, or logit indices with *indices*. The map declares the description's
    nodata (255, never a class) and holds it where every band of the patch is the patch's nodata; the
    patch's own nodata value is never inherited (IGN copies it, so a patch with nodata 0 declared
    class 0 as no data). With *sidecar*, GDAL's ``.aux.xml`` beside it names the classes (category
    names and an attribute table, which QGIS shows).
    """
    import rasterio
    from rasterio._err import CPLE_BaseError  # GDAL errors rasterio does not wrap
    from rasterio.errors import RasterioError

    with rasterio.open(image_path) as src:
        crs, transform, src_nodata = src.crs, src.transform, src.nodata
        nodata_mask = None
        if src_nodata is not None:
            # A pixel is "no data" when every band is; the map says so instead of inventing a class.
            nodata_mask = (src.read() == src_nodata).all(axis=0)
    if nodata_mask is not None and nodata_mask.any():
        codes = codes.copy()
        codes[nodata_mask] = desc.nodata
    profile = {
        "driver": "GTiff",
        "width": codes.shape[1],
        "height": codes.shape[0],
        "count": 1,
        "dtype": "uint8",
        "nodata": desc.nodata,
        "compress": "lzw",
    }
    if georeferenced:
        profile.update(crs=crs, transform=transform)
    try:
        with warnings.catch_warnings():
            # Without georeferencing (IGN's georeferencing_output: false) that is what was asked for.
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with rasterio.open(path, "w", **profile) as dst:
                dst.write(codes, 1)
                write_class_map_tags(dst, desc, indices=indices)
        if sidecar:
            # Category names and the attribute table, once GDAL has closed the file (it rewrites the
            # sidecar on close); the sidecar moves into place with its map.
            write_class_map_pam(path, desc, indices=indices)
    except (RasterioError, CPLE_BaseError, OSError) as exc:
        # A full disk reaches us as a failed TIFF write: one line naming the map.
        raise output_error(final, exc) from None


def _metrics_report(
    metrics: Mapping[Convention, FlairMetrics],
    desc: ModelDescription,
    *,
    csv_path: Path,
    patches: int,
    seconds: float,
) -> dict[str, Any]:
    conventions: dict[str, Any] = {}
    for conv in CONVENTIONS:
        m = metrics.get(conv)
        conventions[conv] = (
            {"note": CONVENTION_NOTES[conv], **m.to_dict()}
            if m is not None
            else {"note": "not applicable: the class table is not FLAIR's (logits 0-11 must be codes 1-12)"}
        )
    return {
        "model": {
            "name": desc.name,
            "source": desc.provenance.source,
            "sha256": desc.provenance.source_sha256,
            "classes": [
                {"index": i, "code": c.code, "name": c.name, "active": c.active}
                for i, c in enumerate(desc.classes)
            ],
        },
        "data": {"csv": str(csv_path), "patches": patches},
        "seconds": round(seconds, 3),
        "values": "fractions in [0, 1]; null where undefined (class absent), see each convention's note",
        "default_convention": "present",
        "conventions": conventions,
        "confusion_matrix": {
            "file": MATRIX_CSV,
            "rows": "ground truth",
            "columns": "prediction",
            "order": "logit",
        },
    }


def write_confusion_matrix_csv(
    path: Path, matrix: NDArray[np.integer[Any]], class_names: Sequence[str]
) -> Path:
    """Write pixel counts with class names as header and first column (rows = ground truth).

    Args:
        path: Output ``.csv`` path (replaced atomically).
        matrix: ``K×K`` counts.
        class_names: ``K`` names in matrix order.

    Returns:
        *path*.
    """
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["ground truth \\ prediction", *class_names])
    for name, row in zip(class_names, np.asarray(matrix), strict=True):
        writer.writerow([name, *(int(v) for v in row)])
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue(), encoding="utf-8")
    return path


def write_confusion_matrix_png(
    path: Path,
    matrix: NDArray[np.integer[Any]],
    class_names: Sequence[str],
    active: Sequence[bool] | None = None,
) -> Path:
    """Draw the row-normalised confusion matrix (each ground-truth row sums to 100 %).

    Only active classes are drawn (rows and columns); rows without ground truth stay blank.

    Args:
        path: Output ``.png`` path (replaced atomically).
        matrix: ``K×K`` counts, rows = ground truth.
        class_names: ``K`` names in matrix order.
        active: ``K`` flags; default all active.

    Returns:
        *path*.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    m = np.asarray(matrix, dtype=np.float64)
    keep = np.flatnonzero(np.asarray(active if active is not None else [True] * len(class_names), dtype=bool))
    sub = m[np.ix_(keep, keep)]
    names = [class_names[int(i)] for i in keep]
    rows = sub.sum(axis=1, keepdims=True)
    norm = np.divide(sub, rows, out=np.full_like(sub, math.nan), where=rows > 0)
    k = len(names)
    side = max(4.0, 0.55 * k + 2.5)
    fig = Figure(figsize=(side + 1.0, side), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(norm * 100.0, cmap="Blues", vmin=0.0, vmax=100.0)
    ax.set_xticks(range(k), names, rotation=45, ha="right", rotation_mode="anchor", fontsize=8)
    ax.set_yticks(range(k), names, fontsize=8)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    ax.set_title("Confusion matrix (% of each ground-truth row)", fontsize=10)
    if k <= 20:
        for r in range(k):
            for c in range(k):
                v = norm[r, c]
                if not math.isnan(v) and v >= 0.005:
                    ax.text(
                        c,
                        r,
                        f"{100 * v:.0f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if v > 0.5 else "black",
                    )
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="%")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
