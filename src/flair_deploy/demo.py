"""The end-to-end demo: sample data → train → export → detect → preview, on this machine, offline.

:func:`run_demo` is what ``flair-deploy demo`` (and ``make demo``) runs. Each step reuses the previous
run's output when it is there, so a second run only repeats the steps whose inputs changed:

1. generate the learnable FLAIR-format sample dataset (``OUT/sample-data``);
2. train a U-Net on it (``OUT/train``; a few CPU minutes, skipped when a checkpoint exists);
3. export the best checkpoint to ONNX with a parity report (``OUT/export``);
4. synthesise a larger orthophoto from unseen ground (``OUT/ortho.tif``, with a nodata border);
5. run ``detect`` on it through onnxruntime (``OUT/landcover.tif``);
6. render a PNG quick-look with a legend (``OUT/landcover.png``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flair_deploy.errors import ConfigError

__all__ = ["DemoResult", "run_demo"]


@dataclass(frozen=True)
class DemoResult:
    """Where the demo put things and how it went.

    Attributes:
        out_dir: The demo folder.
        checkpoint: The trained checkpoint used.
        trained: False when an earlier run's checkpoint was reused.
        val_miou: Validation mIoU of the checkpoint (None when reused and not recorded).
        onnx: The exported FP32 ONNX model.
        parity_markdown: The export's parity report.
        ortho: The synthetic orthophoto that was mapped.
        class_map: The land-cover map GeoTIFF.
        preview: The PNG quick-look.
        detect_summary: One-line summary of the detect run.
    """

    out_dir: Path
    checkpoint: Path
    trained: bool
    val_miou: float | None
    onnx: Path
    parity_markdown: Path
    ortho: Path
    class_map: Path
    preview: Path
    detect_summary: str


def _say(log: Callable[[str], None] | None, text: str) -> None:
    if log is not None:
        log(text)


def run_demo(
    out_dir: Path,
    *,
    ortho_size: int = 2048,
    epochs: int | None = None,
    retrain: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> DemoResult:
    """Run the whole pipeline on built-in sample data.

    Args:
        out_dir: Folder for everything the demo writes (created if needed).
        ortho_size: Edge of the synthetic orthophoto to map, in pixels (multiple of 256).
        epochs: Training epochs (None: the sample config's default).
        retrain: Train again even if a checkpoint from an earlier run exists.
        progress: Show progress bars.
        log: Called with one line per step.

    Returns:
        The paths of every product and the headline numbers.

    Raises:
        ConfigError: For an ortho size that is not a positive multiple of 256.
        FlairDeployError: Anything a pipeline stage reports.
    """
    if ortho_size <= 0 or ortho_size % 256:
        raise ConfigError(f"--ortho-size {ortho_size} must be a positive multiple of 256, e.g. 2048")
    from flair_deploy.exports.config import ExportConfig, QgisTool
    from flair_deploy.exports.pipeline import export_model
    from flair_deploy.inference.config import DetectConfig
    from flair_deploy.inference.detect import detect
    from flair_deploy.maps import render_preview_png
    from flair_deploy.sample import make_sample_dataset, make_sample_ortho
    from flair_deploy.training.config import load_train_config, sample_config_base
    from flair_deploy.training.run import train

    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)

    # 1. Sample data (reused when an earlier demo generated it).
    data_root = out_dir / "sample-data"
    _say(log, f"[1/6] sample dataset -> {data_root}")
    sample = make_sample_dataset(data_root, overwrite=(data_root / "sample.json").is_file())

    # 2. Training (skipped when a checkpoint exists, unless retrain).
    train_dir = out_dir / "train"
    best = train_dir / "checkpoints" / "best.ckpt"
    val_miou: float | None = None
    trained = retrain or not best.is_file()
    if trained:
        _say(log, f"[2/6] training a U-Net on {sample.train_csv.parent} -> {train_dir}")
        flags = {
            "data.train_csv": str(sample.train_csv),
            "data.val_csv": str(sample.val_csv),
            "data.test_csv": str(sample.test_csv),
            "logging.out_dir": str(train_dir),
            "optim.epochs": epochs,
        }
        cfg, _ = load_train_config(None, (), flags, base=sample_config_base())
        result = train(cfg, progress=progress, overwrite=True)
        if result.best_checkpoint is None:
            raise ConfigError("training saved no checkpoint; check the training log in " + str(train_dir))
        best = result.best_checkpoint
        val_miou = result.final_metrics.get("val_miou")
        _say(log, f"      best val mIoU {val_miou:.4f}" if val_miou is not None else "      trained")
    else:
        _say(log, f"[2/6] reusing {best} (pass --retrain to train again)")

    # 3. Export to ONNX with parity against PyTorch on the validation patches. The network is fully
    #    convolutional: export it with dynamic height/width so detect can run 256-px tiles, 16x the
    #    pixels of its 64-px training patches, which amortises per-tile overheads. That graph is not
    #    for QGIS Deepness (dynamic H/W, logits): the Deepness variant beside it is.
    export_dir = out_dir / "export"
    _say(log, f"[3/6] exporting {best.name} to ONNX -> {export_dir}")
    exported = export_model(
        ExportConfig(
            checkpoint=best,
            out_dir=export_dir,
            name="sample-unet",
            dynamic_hw=True,
            validation=sample.val_csv,
            qgis_tools=(QgisTool.DEEPNESS,),
            overwrite=True,
        ),
        progress=progress,
    )
    onnx_path = next(iter(exported.onnx.values()))
    for variant in exported.qgis_variants.values():
        _say(log, f"      for QGIS Deepness: {variant}")

    # 4. An orthophoto of ground the model never saw (another part of the synthetic world).
    ortho = out_dir / "ortho.tif"
    _say(log, f"[4/6] synthesising a {ortho_size}x{ortho_size} orthophoto -> {ortho}")
    make_sample_ortho(
        ortho,
        width=ortho_size,
        height=ortho_size,
        seed=sample_seed(),
        nodata_border=32,
        origin=(700_000.0, 6_900_000.0),
        overwrite=True,
    )

    # 5. detect through onnxruntime, blend stitching.
    class_map = out_dir / "landcover.tif"
    _say(log, f"[5/6] detect -> {class_map}")
    summary = detect(
        DetectConfig(
            inputs=(ortho,), output=class_map, model=onnx_path, tile_size=256, overlap=64, overwrite=True
        )
    )
    line = (
        f"{summary.tiles} tiles, {summary.mpx_per_s:.2f} Mpx/s, {summary.km2:.3f} km², "
        f"backend {summary.backend}, peak RSS {summary.peak_rss_mb:.0f} MB"
    )
    _say(log, "      " + line)

    # 6. PNG quick-look, read at reduced resolution so it stays cheap for big maps.
    preview = out_dir / "landcover.png"
    _say(log, f"[6/6] preview -> {preview}")
    import rasterio

    with rasterio.open(class_map) as src:
        scale = max(1, max(src.width, src.height) // 1024)
        arr: np.ndarray = src.read(1, out_shape=(src.height // scale, src.width // scale))
    render_preview_png(
        arr,
        exported.description,
        preview,
        title=f"flair-deploy demo: land cover of {ortho.name}",
        overwrite=True,
    )
    return DemoResult(
        out_dir=out_dir,
        checkpoint=best,
        trained=trained,
        val_miou=val_miou,
        onnx=onnx_path,
        parity_markdown=exported.parity_markdown,
        ortho=ortho,
        class_map=class_map,
        preview=preview,
        detect_summary=line,
    )


def sample_seed() -> int:
    """Seed of the synthetic world shared by the sample dataset and the demo orthophoto."""
    return 0
