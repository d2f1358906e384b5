"""Run a training: config in, self-describing checkpoints, logs and a learning curve out.

:func:`train` runs a :class:`~flair_deploy.training.config.TrainConfig` through Lightning's own engine.

Run folder (``logging.out_dir``)::

    checkpoints/best.ckpt           best weights by ``checkpoint.monitor`` (self-describing)
    checkpoints/last.ckpt           last epoch (``checkpoint.save_last``), used to resume
    checkpoints/train-config.yaml   the resolved config (absolute paths): rerun with ``--config``
    logs/csv/version_N/metrics.csv  CSV log; logs/tensorboard/version_N/ TensorBoard log
    learning-curve.png              losses and validation mIoU per epoch

Scale-out is Lightning's: ``trainer.accelerator``, ``devices``, ``num_nodes`` and ``strategy`` (e.g.
``ddp``) pass through unchanged, the validation confusion matrix is summed over processes, and only
rank 0 writes the config and the plot. After fitting, the **best** checkpoint (not the last weights)
is validated once more and those numbers are returned.
"""

from __future__ import annotations

import csv
import logging
import math
import shutil
import time
import warnings
from collections import defaultdict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Lightning is importable here: the package's __init__ applied the torchvision shim before this module.
import lightning as L
import torch
import yaml
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger

from flair_deploy.errors import CheckpointError, ConfigError, InputDataError, OutputError
from flair_deploy.training.config import TrainConfig, resolve_paths
from flair_deploy.training.data import FlairDataModule, read_patch_csv
from flair_deploy.training.task import SegmentationTask

__all__ = ["CONFIG_NAME", "CURVE_NAME", "TrainResult", "plot_learning_curve", "train"]

#: File name of the resolved config written beside the checkpoints.
CONFIG_NAME = "train-config.yaml"
#: File name of the learning-curve plot in the run folder.
CURVE_NAME = "learning-curve.png"

# Lightning advice that does not apply to our runs (we choose the worker count on purpose, and tiny
# test runs have fewer batches than the logging interval), or about our own doing (the resolved config
# is written into the checkpoint folder before training), or internal to Lightning.
_QUIET = (
    r".*does not have many workers.*",
    r".*smaller than the logging interval.*",
    r".*Checkpoint directory .* exists and is not empty.*",
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",
)


@dataclass(frozen=True)
class TrainResult:
    """What a training run produced.

    Attributes:
        out_dir: The run folder.
        best_checkpoint: Checkpoint with the best monitored score (None if none was saved).
        last_checkpoint: Checkpoint of the last epoch (None without ``checkpoint.save_last``).
        monitor: Name of the monitored metric.
        best_score: Best monitored value during training (None if never logged).
        final_metrics: Validation metrics of the best checkpoint (``val_miou``, ``val_loss``, ...).
        epochs_run: Epochs completed (fewer than configured after early stopping).
        seconds: Wall-clock seconds of the whole run.
        patches_per_second: Training throughput (patches through forward, backward and step, data
            loading included, validation excluded), over all processes.
        config_path: The resolved config written beside the checkpoints.
        metrics_csv: The CSV log (None without ``logging.csv``).
        learning_curve: The learning-curve PNG (None without a CSV log).
    """

    out_dir: Path
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    monitor: str
    best_score: float | None
    final_metrics: dict[str, float] = field(default_factory=dict)
    epochs_run: int = 0
    seconds: float = 0.0
    patches_per_second: float = 0.0
    config_path: Path | None = None
    metrics_csv: Path | None = None
    learning_curve: Path | None = None


class _PatchRate(Callback):
    """Count training patches and the time spent in training loops (validation excluded)."""

    def __init__(self) -> None:
        self.patches = 0
        self.seconds = 0.0
        self._start: float | None = None
        self._last: float | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start, self._last = time.perf_counter(), None

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.patches += len(batch["image"]) * trainer.world_size
        self._last = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Validation runs between the last batch and this hook: stop the clock at the last batch.
        if self._start is not None and self._last is not None:
            self.seconds += self._last - self._start
        self._start = None

    @property
    def rate(self) -> float:
        return self.patches / self.seconds if self.seconds > 0 else 0.0


@contextmanager
def _quiet_lightning(progress: bool) -> Iterator[None]:
    """Silence Lightning's start-up chatter (device summary) unless a progress display is wanted."""
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    if not progress:
        for lg in loggers:
            lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            for pattern in _QUIET:
                warnings.filterwarnings("ignore", message=pattern)
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _check_inputs(cfg: TrainConfig, stride: int) -> None:
    """Fail before any work on missing files and patches the network cannot take."""
    import rasterio

    for key in ("train_csv", "val_csv"):
        pairs = read_patch_csv(getattr(cfg.data, key))
        if key == "train_csv" and len(pairs) < 2:
            raise InputDataError(
                f"{cfg.data.train_csv} lists {len(pairs)} patch; training needs at least 2 (batch norm)"
            )
    first = read_patch_csv(cfg.data.train_csv)[0].image
    try:
        with rasterio.open(first) as src:
            height, width, count = src.height, src.width, src.count
    except rasterio.errors.RasterioIOError as exc:
        raise InputDataError(f"cannot open training patch {first}: {exc}") from None
    if height % stride or width % stride:
        raise InputDataError(
            f"training patch {first} is {width}x{height} px, not a multiple of the network's output "
            f"stride {stride}; crop patches, or lower model.encoder_depth"
        )
    if max(cfg.data.bands) > count:
        raise InputDataError(
            f"training patch {first} has {count} bands but data.bands asks for {list(cfg.data.bands)}; "
            "select bands that exist (1-based)"
        )
    for label, path in (
        ("data.aerial_json", cfg.data.aerial_json if cfg.model.use_metadata else None),
        ("model.encoder_weights_path", cfg.model.encoder_weights_path),
        ("checkpoint.resume_from", cfg.checkpoint.resume_from),
        ("checkpoint.init_weights_from", cfg.checkpoint.init_weights_from),
    ):
        if path is not None and not Path(path).is_file():
            raise InputDataError(f"{label} {path} does not exist or is not a file")


def _prepare_out_dir(out: Path, *, overwrite: bool, resume: bool) -> None:
    """Refuse to mix a new run with an old one's outputs, unless asked to replace or resume."""
    ours = [out / "checkpoints", out / "logs", out / CURVE_NAME]
    existing = [p for p in ours if p.exists()]
    if existing and not (overwrite or resume):
        raise OutputError(
            f"{out} already holds a training run ({existing[0].name}); pass --overwrite to replace it, "
            "set checkpoint.resume_from to continue it, or choose another --out"
        )
    if existing and overwrite and not resume:
        for p in existing:
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink()
    try:
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create run folder {out}: {exc.strerror or exc}") from None


def _write_config(cfg: TrainConfig, path: Path) -> None:
    # Paths from the command line are relative to the working directory: make them absolute so the
    # file reruns from anywhere.
    data = resolve_paths(cfg.model_dump(mode="json"), Path.cwd())
    text = "# Resolved flair-deploy training config (all paths absolute).\n" + yaml.safe_dump(
        data, sort_keys=False
    )
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _init_weights(task: SegmentationTask, path: Path) -> None:
    from flair_deploy.checkpoints import load_checkpoint, read_state

    state = read_state(path)
    hp = state.get("hyper_parameters")
    own = isinstance(hp, Mapping) and "description" in hp
    loaded = load_checkpoint(path) if own else load_checkpoint(path, description=task.description)
    try:
        task.model.load_state_dict(loaded.model.state_dict(), strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(
            f"checkpoint.init_weights_from {path} does not fit this config's network: {first}; "
            "check bands, classes and model.encoder"
        ) from None


def _loggers(cfg: TrainConfig, out: Path) -> list[Logger]:
    loggers: list[Logger] = []
    if cfg.logging.csv:
        loggers.append(CSVLogger(save_dir=str(out / "logs"), name="csv"))
    if cfg.logging.tensorboard:
        loggers.append(
            TensorBoardLogger(save_dir=str(out / "logs"), name="tensorboard", default_hp_metric=False)
        )
    return loggers


def train(cfg: TrainConfig, *, progress: bool = True, overwrite: bool = False) -> TrainResult:
    """Train a model as configured and return where its checkpoints are and how it did.

    Args:
        cfg: The validated training config.
        progress: Show Lightning's progress bar and model summary.
        overwrite: Replace the checkpoints, logs and plot of an earlier run in ``logging.out_dir``.

    Returns:
        Checkpoint paths, the best score, the best checkpoint's validation metrics, epochs run, time and
        throughput.

    Raises:
        InputDataError: Missing or unreadable CSVs, patches, metadata or weight files.
        ConfigError: Options Lightning rejects (e.g. a GPU accelerator on a machine without one, a
            monitor that is never logged).
        OutputError: If the run folder holds an earlier run and neither *overwrite* nor resume is set.
        CheckpointError: Resume or initialisation weights that do not fit.
    """
    started = time.perf_counter()
    description = cfg.description()
    _check_inputs(cfg, description.architecture.output_stride)
    if cfg.trainer.accelerator.lower() in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator is {cfg.trainer.accelerator!r} but no CUDA GPU is available here; "
            "set trainer.accelerator=cpu (or auto)"
        )
    out = Path(cfg.logging.out_dir)
    resume = cfg.checkpoint.resume_from
    _prepare_out_dir(out, overwrite=overwrite, resume=resume is not None)
    ckpt_dir = out / "checkpoints"

    with _quiet_lightning(progress):
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        datamodule = FlairDataModule(
            train_csv=cfg.data.train_csv,
            val_csv=cfg.data.val_csv,
            test_csv=cfg.data.test_csv,
            description=description,
            band_indexes=cfg.data.bands,
            batch_size=cfg.optim.batch_size,
            num_workers=cfg.num_workers,
            ignore_index=cfg.data.ignore_index,
            augment=cfg.data.augment,
            radiometric_jitter=cfg.data.radiometric_jitter,
            aerial_json=cfg.data.aerial_json if cfg.model.use_metadata else None,
        )
        mode = cfg.checkpoint.resolved_mode
        task = SegmentationTask(
            description.to_dict(),
            class_weights=cfg.logit_weights(),
            ignore_index=cfg.data.ignore_index,
            dice_weight=cfg.loss.dice_weight,
            optimizer=cfg.optim.optimizer,
            lr=cfg.optim.lr,
            momentum=cfg.optim.momentum,
            weight_decay=cfg.optim.weight_decay,
            scheduler=cfg.optim.scheduler,
            monitor=cfg.checkpoint.monitor,
            monitor_mode=mode,
            plateau_patience=cfg.optim.plateau_patience,
            plateau_factor=cfg.optim.plateau_factor,
            min_lr=cfg.optim.min_lr,
            encoder_weights_path=str(cfg.model.encoder_weights_path)
            if cfg.model.encoder_weights_path
            else None,
        )
        if cfg.checkpoint.init_weights_from is not None:
            _init_weights(task, Path(cfg.checkpoint.init_weights_from))

        checkpointing = ModelCheckpoint(
            dirpath=str(ckpt_dir),
            filename="best",
            monitor=cfg.checkpoint.monitor,
            mode=mode,
            save_top_k=1,
            save_last=cfg.checkpoint.save_last,
            save_weights_only=cfg.checkpoint.weights_only,
            auto_insert_metric_name=False,
            enable_version_counter=False,
        )
        rate = _PatchRate()
        callbacks: list[Callback] = [checkpointing, rate]
        if cfg.checkpoint.early_stopping_patience is not None:
            callbacks.append(
                EarlyStopping(
                    monitor=cfg.checkpoint.monitor, mode=mode, patience=cfg.checkpoint.early_stopping_patience
                )
            )
        loggers = _loggers(cfg, out)
        if loggers:
            callbacks.append(LearningRateMonitor(logging_interval="epoch"))
        t = cfg.trainer
        try:
            trainer = L.Trainer(
                accelerator=t.accelerator,
                devices=t.devices,
                num_nodes=t.num_nodes,
                strategy=t.strategy,
                precision=t.precision,
                max_epochs=cfg.optim.epochs,
                limit_train_batches=t.limit_train_batches,
                limit_val_batches=t.limit_val_batches,
                accumulate_grad_batches=t.accumulate_grad_batches,
                gradient_clip_val=t.gradient_clip_val,
                deterministic=t.deterministic,
                log_every_n_steps=t.log_every_n_steps,
                callbacks=callbacks,
                logger=loggers or False,
                enable_progress_bar=progress,
                enable_model_summary=progress,
                default_root_dir=str(out),
            )
        except (MisconfigurationException, ValueError, RuntimeError) as exc:
            raise ConfigError(f"Lightning rejected the trainer options: {_first_line(exc)}") from None

        config_path = ckpt_dir / CONFIG_NAME
        if trainer.is_global_zero:
            _write_config(cfg, config_path)
        try:
            trainer.fit(
                task, datamodule=datamodule, ckpt_path=str(resume) if resume else None, weights_only=True
            )
        except MisconfigurationException as exc:
            raise ConfigError(f"training stopped: {_first_line(exc)}") from None
        except ValueError as exc:
            # OneCycleLR restores its total step count from the resumed checkpoint and cannot go past it.
            if resume is None or "Tried to step" not in str(exc):
                raise
            raise ConfigError(
                f"cannot resume {resume} with more steps than its one-cycle schedule planned "
                f"({_first_line(exc)}); resume with the same optim.epochs, or start a new run with "
                "checkpoint.init_weights_from"
            ) from None

        best = Path(checkpointing.best_model_path) if checkpointing.best_model_path else None
        last = Path(checkpointing.last_model_path) if checkpointing.last_model_path else None
        score = checkpointing.best_model_score
        final: dict[str, float] = {}
        if best is not None:
            results = trainer.validate(
                task, datamodule=datamodule, ckpt_path=str(best), verbose=False, weights_only=True
            )
            final = {k: float(v) for k, v in (results[0] if results else {}).items()}
            final.update({k: v for k, v in task.last_val_metrics.items() if k not in final})

    metrics_csv = None
    curve = None
    csv_loggers = [lg for lg in loggers if isinstance(lg, CSVLogger)]
    if csv_loggers and trainer.is_global_zero:
        metrics_csv = Path(csv_loggers[0].log_dir) / "metrics.csv"
        if metrics_csv.is_file():
            curve = plot_learning_curve(metrics_csv, out / CURVE_NAME, monitor=cfg.checkpoint.monitor)
    return TrainResult(
        out_dir=out,
        best_checkpoint=best,
        last_checkpoint=last,
        monitor=cfg.checkpoint.monitor,
        best_score=None if score is None or math.isnan(float(score)) else float(score),
        final_metrics=final,
        epochs_run=int(trainer.current_epoch),
        seconds=time.perf_counter() - started,
        patches_per_second=rate.rate,
        config_path=config_path,
        metrics_csv=metrics_csv,
        learning_curve=curve,
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _read_epoch_log(csv_log: Path) -> dict[str, dict[int, float]]:
    """Return ``{column: {epoch: first value}}`` for the numeric columns of a Lightning CSV log."""
    series: dict[str, dict[int, float]] = defaultdict(dict)
    with csv_log.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            try:
                epoch = int(float(row.get("epoch") or "nan"))
            except ValueError:
                continue
            for key, value in row.items():
                if key in ("epoch", "step") or not value:
                    continue
                try:
                    # The first value per epoch: the final re-validation of the best checkpoint logs a
                    # second val row under the last epoch, which must not overwrite the curve.
                    series[key].setdefault(epoch, float(value))
                except ValueError:
                    continue
    return series


def plot_learning_curve(csv_log: Path, png: Path, *, monitor: str = "val_miou") -> Path:
    """Plot training/validation loss and validation mIoU per epoch from a Lightning CSV log.

    Args:
        csv_log: ``metrics.csv`` written by Lightning's CSV logger during :func:`train`.
        png: Output PNG (written atomically).
        monitor: Metric to mark the best epoch of (``val_miou`` or any logged column).

    Returns:
        *png*.

    Raises:
        InputDataError: If the log is missing or has no per-epoch values.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not csv_log.is_file():
        raise InputDataError(f"training log {csv_log} does not exist; train with logging.csv=true")
    series = _read_epoch_log(csv_log)
    train_loss = series.get("train_loss_epoch", {})
    if train_loss:
        # Keep validation points of training epochs only (the final re-validation of the best
        # checkpoint is logged one epoch past the end).
        series = {k: {e: v for e, v in vals.items() if e in train_loss} for k, vals in series.items()}
    val_loss = series.get("val_loss", {})
    miou = series.get("val_miou", {})
    if not (train_loss or val_loss or miou):
        raise InputDataError(f"training log {csv_log} has no per-epoch train_loss/val_loss/val_miou values")
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax_loss, ax_iou = fig.subplots(1, 2)

    def plot(ax: Any, data: Mapping[int, float], label: str, **kw: Any) -> None:
        if data:
            xs = sorted(data)
            ax.plot([x + 1 for x in xs], [data[x] for x in xs], marker="o", markersize=3, label=label, **kw)

    plot(ax_loss, train_loss, "train loss")
    plot(ax_loss, val_loss, "validation loss")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend()
    plot(ax_iou, miou, "validation mIoU", color="tab:green")
    if "val_oa" in series:
        plot(ax_iou, series["val_oa"], "validation OA", color="tab:gray", linestyle="--")
    watched = series.get(monitor, {})
    if watched and monitor in ("val_miou", "val_oa"):
        best = max(watched, key=lambda e: watched[e])
        ax_iou.axvline(best + 1, color="tab:red", alpha=0.4, label=f"best ({monitor} {watched[best]:.3f})")
    ax_iou.set(xlabel="epoch", ylabel="score", title="Validation", ylim=(0.0, 1.0))
    ax_iou.grid(alpha=0.3)
    ax_iou.legend(loc="lower right")
    png.parent.mkdir(parents=True, exist_ok=True)
    tmp = png.with_name(png.name + ".part")
    fig.savefig(tmp, dpi=110, format="png")
    tmp.replace(png)
    return png
