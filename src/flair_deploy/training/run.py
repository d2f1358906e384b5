"""Run a training: config in, self-describing checkpoints, logs and a learning curve out.

:func:`train` runs a :class:`~flair_deploy.training.config.TrainConfig` through Lightning's own engine.

Run folder (``logging.out_dir``)::

    checkpoints/best.ckpt           best weights by ``checkpoint.monitor`` (self-describing)
    checkpoints/last.ckpt           last epoch (``checkpoint.save_last``), used to resume
    checkpoints/train-config.yaml   the resolved config (absolute paths): rerun with ``--config``
    logs/csv/version_N/metrics.csv  CSV log; logs/tensorboard/version_N/ TensorBoard log
    learning-curve.png              losses and validation mIoU per epoch

All or nothing: the data, the config and a resume checkpoint are checked before anything is written;
a run that fails (or is interrupted) before its first checkpoint removes what it created, so the
rerun is not refused; a run that fails later keeps its checkpoints (resumable work) and says how to
resume. An interrupt (Ctrl+C) raises :class:`TrainingInterrupted`, which names what was kept and the
resume command. Random-number states travel in the checkpoints, so a resumed run ends where the
uninterrupted one does.

Scale-out is Lightning's: ``trainer.accelerator``, ``devices``, ``num_nodes`` and ``strategy`` (e.g.
``ddp``, ``ddp_spawn``) pass through unchanged. Only global rank 0 checks, creates and cleans the run
folder and writes the config and the plot (processes that Lightning re-launches for the other ranks
find their rank in the environment, :func:`is_global_zero_process`); the validation confusion matrix is
summed over processes. After fitting, the **best** checkpoint (not the last weights) is validated
once more and those numbers are returned.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import os
import shutil
import signal
import time
import warnings
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
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
from lightning.pytorch.strategies import ParallelStrategy
from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher

from flair_deploy.atomic import atomic_path, nearest_existing, write_text
from flair_deploy.description import ModelDescription
from flair_deploy.errors import (
    CheckpointError,
    ConfigError,
    FlairDeployError,
    InputDataError,
    ModelDescriptionError,
    OutputError,
)
from flair_deploy.training.config import TrainConfig, resolve_paths
from flair_deploy.training.data import FlairDataModule, read_patch_csv
from flair_deploy.training.task import SegmentationTask

__all__ = [
    "CONFIG_NAME",
    "CURVE_NAME",
    "LAST_NAME",
    "TrainResult",
    "TrainingInterrupted",
    "is_global_zero_process",
    "plot_learning_curve",
    "resume_command",
    "train",
]

#: File name of the resolved config written beside the checkpoints.
CONFIG_NAME = "train-config.yaml"
#: File name of the checkpoint of the last epoch, the one to resume from.
LAST_NAME = "last.ckpt"
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

# Environment variables that hold a process's global rank (torchrun, SLURM, LSF), and those that hold
# its node's rank when only the local rank is known (Lightning's own launcher, torchrun).
_GLOBAL_RANK_VARS = ("RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")
_NODE_RANK_VARS = ("NODE_RANK", "GROUP_RANK")


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
        global_rank: Rank of the process that returned this (0 unless Lightning re-launched the
            command for another rank: only rank 0 should report).
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
    global_rank: int = 0


class TrainingInterrupted(FlairDeployError):
    """Training was interrupted (Ctrl+C, SIGINT); the message says what was kept and how to resume.

    Attributes:
        kept: Checkpoints kept in the run folder (empty when the run stopped before its first one and
            its folder was removed).
        resume_from: The checkpoint to resume from (``last.ckpt`` when there is one), or None.
    """

    def __init__(self, message: str, *, kept: Sequence[Path] = (), resume_from: Path | None = None) -> None:
        super().__init__(message)
        self.kept = tuple(kept)
        self.resume_from = resume_from


def is_global_zero_process() -> bool:
    """True unless the environment says this process is another rank than global rank 0.

    Lightning's ``ddp`` launcher re-runs the whole command for every other rank with ``LOCAL_RANK``
    and ``NODE_RANK`` set (after setting both to 0 for itself); torchrun sets ``RANK``; SLURM and LSF
    set ``SLURM_PROCID`` and ``JSM_NAMESPACE_RANK``. Before the trainer exists, this is how a process
    knows whether it owns the run folder: global rank 0 is local rank 0 on node 0. A process started
    by hand (no such variable) is rank 0.
    """
    for var in _GLOBAL_RANK_VARS:
        value = os.environ.get(var, "").strip()
        if value.isdigit():
            return int(value) == 0
    ranks = [os.environ.get(v, "").strip() for v in ("LOCAL_RANK", *_NODE_RANK_VARS)]
    return all(int(r) == 0 for r in ranks if r.isdigit())


def resume_command(config_path: Path, checkpoint: Path) -> str:
    """The command line that continues a run from *checkpoint* with its resolved config."""
    return f"flair-deploy train -c {config_path} --set checkpoint.resume_from={checkpoint}"


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

    train_csv, val_csv = cfg.data.train_csv, cfg.data.val_csv
    if train_csv is None or val_csv is None:  # the config requires them when tasks.train is on
        raise ConfigError("training needs data.train_csv and data.val_csv; give both patch lists")
    pairs = read_patch_csv(train_csv)
    if len(pairs) < 2:
        raise InputDataError(f"{train_csv} lists {len(pairs)} patch; training needs at least 2 (batch norm)")
    read_patch_csv(val_csv)
    first = pairs[0].image
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
    if cfg.checkpoint.resume_from is not None:
        _check_resume(Path(cfg.checkpoint.resume_from), cfg.description())


# Description fields that shape the network's weights: a resume checkpoint must agree on all of them.
_NETWORK_FIELDS = ("bands", "input_dtype", "normalization", "classes", "architecture", "metadata")


def _check_resume(path: Path, description: ModelDescription) -> None:
    """Refuse, in one line, a resume checkpoint that is corrupt, not a full training state, or of another model."""
    from flair_deploy.checkpoints import read_state

    label = f"checkpoint.resume_from {path}"
    try:
        state = read_state(path)
    except CheckpointError as exc:
        raise CheckpointError(f"{label}: {exc}") from None
    hp = state.get("hyper_parameters")
    if not (isinstance(hp, Mapping) and isinstance(hp.get("description"), Mapping)):
        raise CheckpointError(
            f"{label} is not a flair-deploy training checkpoint (no hyper_parameters.description); "
            "resume from a last.ckpt written by flair-deploy train, or start from its weights with "
            "checkpoint.init_weights_from"
        )
    missing = [k for k in ("optimizer_states", "loops", "state_dict") if k not in state]
    if missing:
        raise CheckpointError(
            f"{label} holds weights only (no {', '.join(missing)}), so training cannot continue from it; "
            "resume from last.ckpt, or start from these weights with checkpoint.init_weights_from"
        )
    try:
        theirs = ModelDescription.from_dict(dict(hp["description"]), source=str(path))
    except ModelDescriptionError as exc:
        raise CheckpointError(f"{label}: {exc}") from None
    for name in _NETWORK_FIELDS:
        mine, other = getattr(description, name), getattr(theirs, name)
        if mine != other:
            raise CheckpointError(
                f"{label} was trained with another {name} than this config "
                f"({_short(other)} vs {_short(mine)}); resume with the run's own "
                "checkpoints/train-config.yaml, or start a new run from its weights with "
                "checkpoint.init_weights_from"
            )


def _short(value: Any, limit: int = 80) -> str:
    text = str(value.model_dump(mode="json") if hasattr(value, "model_dump") else value)
    if isinstance(value, tuple) and value and hasattr(value[0], "model_dump"):
        text = str([v.code for v in value])  # classes: the codes say enough
    return text if len(text) <= limit else text[: limit - 3] + "..."


_RUN_OUTPUTS = ("checkpoints", "logs", CURVE_NAME)


def _check_out_dir(out: Path, *, overwrite: bool, resume: bool) -> None:
    """Refuse to mix a new run with an old one's outputs, unless asked to replace or resume; write nothing."""
    existing = [out / name for name in _RUN_OUTPUTS if (out / name).exists()]
    if existing and not (overwrite or resume):
        raise OutputError(
            f"{out} already holds a training run ({existing[0].name}); pass --overwrite to replace it, "
            "set checkpoint.resume_from to continue it, or choose another --out"
        )
    folder = nearest_existing(out)
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(
            f"cannot create run folder {out}: {folder} is not a writable folder; choose another --out"
        )


def _clear_out_dir(out: Path) -> None:
    """Remove an earlier run's outputs (``--overwrite``)."""
    for name in _RUN_OUTPUTS:
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


class _RunFolder:
    """What this run created in its folder, so that a run that fails early leaves nothing behind.

    A run that stops before its first checkpoint removes the outputs it created (and the run folder
    when it created that too): nothing is left that would make the rerun refuse the folder. Once a
    checkpoint exists, everything is kept: that is resumable work.
    """

    def __init__(self, out: Path) -> None:
        self.out = out
        self.ckpt_dir = out / "checkpoints"
        self._created_out = not out.exists()
        self._fresh = [out / name for name in _RUN_OUTPUTS if not (out / name).exists()]
        self._ckpts_before = set(self.checkpoints())

    def create(self) -> None:
        try:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create run folder {self.out}: {exc.strerror or exc}") from None

    def checkpoints(self) -> list[Path]:
        return sorted(self.ckpt_dir.glob("*.ckpt")) if self.ckpt_dir.is_dir() else []

    def new_checkpoints(self) -> list[Path]:
        return [p for p in self.checkpoints() if p not in self._ckpts_before]

    def discard(self) -> bool:
        """Remove what this run created if it wrote no checkpoint; True when something was removed."""
        if self.new_checkpoints():
            return False
        for p in self._fresh:
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            elif p.exists():
                p.unlink(missing_ok=True)
        if self._created_out:
            with contextlib.suppress(OSError):
                self.out.rmdir()  # only when empty: never remove what someone else put there
        return True


def _write_config(cfg: TrainConfig, path: Path) -> None:
    # Paths from the command line are relative to the working directory: make them absolute so the
    # file reruns from anywhere.
    data = resolve_paths(cfg.model_dump(mode="json"), Path.cwd())
    text = "# Resolved flair-deploy training config (all paths absolute).\n" + yaml.safe_dump(
        data, sort_keys=False
    )
    write_text(path, text)


def _init_weights(task: SegmentationTask, path: Path) -> None:
    from flair_deploy.checkpoints import describes_itself, load_checkpoint, read_state

    own = describes_itself(read_state(path))
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


def train(
    cfg: TrainConfig,
    *,
    progress: bool = True,
    overwrite: bool = False,
    callbacks: Sequence[Callback] = (),
) -> TrainResult:
    """Train a model as configured and return where its checkpoints are and how it did.

    Args:
        cfg: The validated training config.
        progress: Show Lightning's progress bar and model summary.
        overwrite: Replace the checkpoints, logs and plot of an earlier run in ``logging.out_dir``.
        callbacks: Extra Lightning callbacks, run after ours.

    Returns:
        Checkpoint paths, the best score, the best checkpoint's validation metrics, epochs run, time and
        throughput.

    Raises:
        InputDataError: Missing or unreadable CSVs, patches, metadata or weight files; patches of
            different sizes in one batch.
        ConfigError: Options Lightning rejects (e.g. a GPU accelerator on a machine without one, a
            monitor that is never logged).
        OutputError: If the run folder holds an earlier run and neither *overwrite* nor resume is set.
        CheckpointError: Resume or initialisation weights that are corrupt or do not fit.
        TrainingInterrupted: On Ctrl+C (SIGINT); says what was kept and how to resume.
    """
    started = time.perf_counter()
    description = cfg.description()
    zero = is_global_zero_process()
    _check_inputs(cfg, description.architecture.output_stride)
    if cfg.trainer.accelerator.lower() in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator is {cfg.trainer.accelerator!r} but no CUDA GPU is available here; "
            "set trainer.accelerator=cpu (or auto)"
        )
    out = Path(cfg.logging.out_dir)
    resume = cfg.checkpoint.resume_from
    if zero:
        # The other ranks re-run this function while rank 0 trains: the folder they find is rank 0's.
        _check_out_dir(out, overwrite=overwrite, resume=resume is not None)
    ckpt_dir = out / "checkpoints"
    config_path = ckpt_dir / CONFIG_NAME

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
            save_weights_only=cfg.checkpoint.weights_only,
            auto_insert_metric_name=False,
            enable_version_counter=False,
        )
        rate = _PatchRate()
        all_callbacks: list[Callback] = [checkpointing, rate]
        if cfg.checkpoint.save_last:
            # Not ModelCheckpoint(save_last=True): Lightning then writes last.ckpt only in epochs that
            # improved the monitor, so it would not hold the last epoch. A checkpoint without a monitor
            # is written after every validation, under one name.
            all_callbacks.append(
                ModelCheckpoint(
                    dirpath=str(ckpt_dir),
                    filename=LAST_NAME.removesuffix(".ckpt"),
                    monitor=None,
                    save_top_k=1,
                    save_weights_only=cfg.checkpoint.weights_only,
                    auto_insert_metric_name=False,
                    enable_version_counter=False,
                )
            )
        if cfg.checkpoint.early_stopping_patience is not None:
            all_callbacks.append(
                EarlyStopping(
                    monitor=cfg.checkpoint.monitor, mode=mode, patience=cfg.checkpoint.early_stopping_patience
                )
            )
        loggers = _loggers(cfg, out)
        if loggers:
            all_callbacks.append(LearningRateMonitor(logging_interval="epoch"))
        all_callbacks.extend(callbacks)
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
                callbacks=all_callbacks,
                logger=loggers or False,
                enable_progress_bar=progress,
                enable_model_summary=progress,
                default_root_dir=str(out),
            )
        except (MisconfigurationException, ValueError, RuntimeError) as exc:
            raise ConfigError(f"Lightning rejected the trainer options: {_first_line(exc)}") from None
        _shim_spawned_workers(trainer, progress=progress)

        # Everything is checked: from here on the run folder is written (by rank 0 only).
        folder = _RunFolder(out) if zero else None
        if folder is not None:
            if overwrite and resume is None:
                _clear_out_dir(out)
                folder = _RunFolder(out)
            folder.create()
            _write_config(cfg, config_path)
            for logger in loggers:
                # Fix the log version here: spawned workers get a copy of this logger, and the main
                # process must later read the version they wrote, not the next free one.
                _ = logger.version
        sigint = signal.getsignal(signal.SIGINT)
        try:
            with _one_line_errors(folder, config_path, resume):
                trainer.fit(
                    task, datamodule=datamodule, ckpt_path=str(resume) if resume else None, weights_only=True
                )
        except SystemExit:
            # Lightning turns a KeyboardInterrupt inside fit into sys.exit(1) after its own clean-up.
            if not trainer.interrupted:
                raise
            raise _interrupted(trainer, folder, config_path, cfg) from None
        except KeyboardInterrupt:
            raise _interrupted(trainer, folder, config_path, cfg) from None
        finally:
            # Lightning ignores SIGINT after an interrupt; give the caller its Ctrl+C back.
            signal.signal(signal.SIGINT, sigint)

        best = Path(checkpointing.best_model_path) if checkpointing.best_model_path else None
        # By name: a spawn launcher brings back only the best checkpoint's path from its workers.
        last = ckpt_dir / LAST_NAME if cfg.checkpoint.save_last and (ckpt_dir / LAST_NAME).is_file() else None
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
        config_path=config_path if zero else None,
        metrics_csv=metrics_csv,
        learning_curve=curve,
        global_rank=int(trainer.global_rank),
    )


@contextmanager
def _one_line_errors(folder: _RunFolder | None, config_path: Path, resume: Path | None) -> Iterator[None]:
    """Turn what can go wrong inside ``fit`` into one line; clean up or say what was kept (rank 0)."""
    try:
        yield
    except (KeyboardInterrupt, SystemExit):
        raise  # reported by the caller, which knows whether Lightning saw an interrupt
    except BaseException as exc:
        note = _kept_note(folder, config_path)
        if isinstance(exc, FlairDeployError):
            raise type(exc)(_user_line(exc) + note) from None
        if isinstance(exc, MisconfigurationException):
            raise ConfigError(f"training stopped: {_first_line(exc)}{note}") from None
        if isinstance(exc, ValueError) and resume is not None and "Tried to step" in str(exc):
            # OneCycleLR restores its total step count from the resumed checkpoint and cannot go past it.
            raise ConfigError(
                f"cannot resume {resume} with more steps than its one-cycle schedule planned "
                f"({_first_line(exc)}); resume with the same optim.epochs, or start a new run with "
                f"checkpoint.init_weights_from{note}"
            ) from None
        raise  # a bug: keep the traceback (the clean-up above still ran)


def _kept_note(folder: _RunFolder | None, config_path: Path) -> str:
    """Clean up a run that wrote no checkpoint; otherwise say what was kept and how to resume."""
    if folder is None:
        return ""  # another rank: rank 0 reports
    if folder.discard():
        return f" (nothing was kept: {folder.out} holds no outputs of this run)"
    kept = folder.new_checkpoints()
    target = _resume_target(kept)
    return (
        f" (kept {', '.join(p.name for p in kept)} in {folder.ckpt_dir}; resume with: "
        f"{resume_command(config_path, target)})"
        if target is not None
        else f" (kept {', '.join(p.name for p in kept)} in {folder.ckpt_dir})"
    )


def _resume_target(kept: Sequence[Path]) -> Path | None:
    by_name = {p.name: p for p in kept}
    return by_name.get(LAST_NAME) or by_name.get("best.ckpt")


def _interrupted(
    trainer: L.Trainer, folder: _RunFolder | None, config_path: Path, cfg: TrainConfig
) -> TrainingInterrupted:
    epoch = int(trainer.current_epoch) + 1
    where = f"training interrupted in epoch {epoch} of {cfg.optim.epochs}"
    if folder is None:
        return TrainingInterrupted(where)
    if folder.discard():
        return TrainingInterrupted(
            f"{where}, before the first checkpoint: nothing was kept and {folder.out} holds no outputs "
            "of this run; rerun the same command to start again"
        )
    kept = folder.new_checkpoints()
    target = _resume_target(kept)
    names = ", ".join(p.name for p in kept)
    if target is None:
        return TrainingInterrupted(f"{where}: kept {names} in {folder.ckpt_dir}", kept=kept)
    saved = _checkpoint_epoch(target)
    at = f" (end of epoch {saved})" if saved is not None else ""
    return TrainingInterrupted(
        f"{where}: kept {names} in {folder.ckpt_dir}; {target.name}{at} continues it: "
        f"{resume_command(config_path, target)}",
        kept=kept,
        resume_from=target,
    )


def _checkpoint_epoch(path: Path) -> int | None:
    """The number of epochs completed in a checkpoint Lightning wrote, or None if unreadable."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001  (only for a message: any failure means "unknown")
        return None
    epoch = state.get("epoch") if isinstance(state, Mapping) else None
    return int(epoch) + 1 if isinstance(epoch, int) else None


def _user_line(exc: BaseException) -> str:
    """The message of a user error as one line, also when a DataLoader worker re-raised it.

    A worker's exception comes back as ``Caught InputDataError in DataLoader worker process 0.
    Original Traceback ...`` with the original message on the last line.
    """
    text = str(exc).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        name = type(exc).__name__
        return last.split(f"{name}: ", 1)[1] if f"{name}: " in last else last
    return text.splitlines()[0] if text else type(exc).__name__


class _ShimmedSpawnLauncher(_MultiProcessingLauncher):
    """Lightning's spawn launcher, pickled into each worker by reference to this module.

    A spawned worker starts a fresh interpreter and unpickles the launcher first; importing its class
    imports :mod:`flair_deploy.training`, whose ``__init__`` applies the torchvision shim before
    Lightning (and through it torchmetrics and torchvision) is imported in that worker. Lightning's
    own launcher class would import Lightning first and crash on ``torchvision::nms``.

    It also quiets Lightning in the workers as in the main process, and brings back what Lightning's
    launcher leaves in them: the epochs run, the patch count and time of :class:`_PatchRate` and the
    best checkpoint's score.
    """

    def __init__(self, strategy: ParallelStrategy, *, progress: bool) -> None:
        super().__init__(strategy, start_method="spawn")
        self.progress = progress

    def _wrapping_function(self, *args: Any, **kwargs: Any) -> None:
        with _quiet_lightning(self.progress):
            super()._wrapping_function(*args, **kwargs)

    def get_extra_results(self, trainer: L.Trainer) -> dict[str, Any]:
        extra = super().get_extra_results(trainer)
        rate = next((c for c in trainer.callbacks if isinstance(c, _PatchRate)), None)  # type: ignore[attr-defined]
        score = trainer.checkpoint_callback.best_model_score if trainer.checkpoint_callback else None  # type: ignore[attr-defined]
        extra["flair_deploy"] = {
            "epochs": int(trainer.current_epoch),
            "patches": rate.patches if rate else 0,
            "seconds": rate.seconds if rate else 0.0,
            "best_score": None if score is None else float(score),
        }
        return extra

    def update_main_process_results(self, trainer: L.Trainer, extra: dict[str, Any]) -> None:
        super().update_main_process_results(trainer, extra)
        ours = extra.get("flair_deploy") or {}
        for c in trainer.callbacks:  # type: ignore[attr-defined]
            if isinstance(c, _PatchRate):
                c.patches, c.seconds = int(ours.get("patches", 0)), float(ours.get("seconds", 0.0))
        if trainer.state.fn == "fit" and "epochs" in ours:
            trainer.fit_loop.epoch_progress.current.completed = int(ours["epochs"])
        ckpt = trainer.checkpoint_callback
        if isinstance(ckpt, ModelCheckpoint) and ours.get("best_score") is not None:
            ckpt.best_model_score = torch.tensor(ours["best_score"])


def _shim_spawned_workers(trainer: L.Trainer, *, progress: bool) -> None:
    """Give spawn-based strategies (``ddp_spawn``) a launcher that applies the shim in every worker."""
    strategy = trainer.strategy
    launcher = getattr(strategy, "_launcher", None)
    if (
        isinstance(strategy, ParallelStrategy)
        and type(launcher) is _MultiProcessingLauncher
        and launcher._start_method == "spawn"
    ):
        # Lightning keeps the launcher in a private attribute; the strategy uses it at fit/validate.
        strategy._launcher = _ShimmedSpawnLauncher(strategy, progress=progress)


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
    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    return png
