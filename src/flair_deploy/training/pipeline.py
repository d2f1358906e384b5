"""A whole ``flair-deploy train`` run, as the config's ``tasks`` ask: train, predict, score (IGN's ``flair``).

IGN's ``flair --conf flair-1-config.yaml`` trains, then predicts ``test_csv`` with the **best**
checkpoint (or, without training, with ``paths.ckpt_model_path``), then scores the predictions and
optionally deletes them. :func:`run_tasks` does the same from a :class:`TrainConfig` (ours or an IGN
file read by :func:`~flair_deploy.training.config.load_train_config`), reusing
:func:`~flair_deploy.training.run.train` and :func:`~flair_deploy.training.evaluate.evaluate`.

Run folder (``logging.out_dir``, IGN's ``out_folder/out_model_name``)::

    checkpoints/, logs/, learning-curve.png       tasks.train (see flair_deploy.training.run)
    predictions_<name>/PRED_<stem>.tif             tasks.predict, unless tasks.delete_preds
    metrics/confmat.npy, metrics/metrics.json      tasks.metrics: IGN's layout, names and units
    evaluation/metrics.json, confusion_matrix.*    tasks.metrics: ours (as flair-deploy evaluate)

``<name>`` is the run folder's name (IGN's ``out_model_name``). Predictions hold IGN's values: uint8
0-based class indices, one file per test patch, LZW, with the patch's CRS and transform when
``tasks.georeferenced`` (IGN's ``georeferencing_output``).

Everything is checked before training starts (the test list, its masks when scoring, the checkpoint
to predict with, outputs of an earlier run), so a long training never ends in a refusal; the
predictions and reports appear together when the test list is done, or not at all.

Deliberate differences from IGN's code, where it is silently wrong (docs/ign-run.md):

* the predictions never inherit the patch's nodata (an inherited ``nodata=0`` declares class 0,
  "building", as no data); they declare 255, a value no class takes;
* a patch that cannot be read or predicted is an error naming it (IGN's metrics print it and skip
  the patch, so the test set silently shrinks);
* predicting without training from an unreadable or mismatching checkpoint is one error (IGN prints
  it and predicts with untrained weights);
* inactive (weight-0) logits are never predicted (IGN's plain argmax can pick them, and its metrics
  then drop those pixels);
* with ``delete_preds`` the predictions are scored in memory and never written (IGN writes, reads
  back and deletes them): the same end state, without the disk traffic.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from flair_deploy.errors import CheckpointError, FlairDeployError, OutputError
from flair_deploy.training.config import TrainConfig
from flair_deploy.training.evaluate import EvaluationResult, IgnOutputs, check_outputs, evaluate
from flair_deploy.training.run import TrainResult, train

__all__ = ["EVALUATION_DIR", "IGN_METRICS_DIR", "RunOutputs", "RunResult", "run_outputs", "run_tasks"]

#: Folder of IGN's ``confmat.npy`` and ``metrics.json`` in the run folder (IGN's name).
IGN_METRICS_DIR = "metrics"
#: Folder of our evaluation reports in the run folder.
EVALUATION_DIR = "evaluation"


@dataclass(frozen=True)
class RunOutputs:
    """Where a run's prediction and metric outputs go.

    Attributes:
        predictions: IGN's ``predictions_<name>`` folder.
        ign_metrics: IGN's ``metrics`` folder (``confmat.npy``, ``metrics.json``).
        evaluation: Our reports (``metrics.json``, ``confusion_matrix.csv``/``.png``).
    """

    predictions: Path
    ign_metrics: Path
    evaluation: Path


@dataclass(frozen=True)
class RunResult:
    """What :func:`run_tasks` did.

    Attributes:
        train: The training result (None when ``tasks.train`` is false).
        evaluation: The prediction/evaluation result (None without ``tasks.predict``).
        checkpoint: The checkpoint the predictions came from (None without ``tasks.predict``).
        predictions: The predictions folder, or None when none is kept.
        files: Every prediction and metric file written (metrics first).
        global_rank: 0 unless Lightning re-launched the command for another rank (only rank 0
            predicts and reports).
    """

    train: TrainResult | None
    evaluation: EvaluationResult | None
    checkpoint: Path | None
    predictions: Path | None
    files: tuple[Path, ...]
    global_rank: int = 0


def run_outputs(cfg: TrainConfig) -> RunOutputs:
    """The prediction and metric folders of *cfg*'s run (IGN's names)."""
    out = Path(cfg.logging.out_dir)
    return RunOutputs(
        predictions=out / f"predictions_{out.name}",
        ign_metrics=out / IGN_METRICS_DIR,
        evaluation=out / EVALUATION_DIR,
    )


def _ign_outputs(cfg: TrainConfig) -> IgnOutputs:
    where, tasks = run_outputs(cfg), cfg.tasks
    return IgnOutputs(
        predictions=None if tasks.delete_preds else where.predictions,
        metrics=where.ign_metrics if tasks.metrics else None,
        georeferenced=tasks.georeferenced,
    )


def _device(cfg: TrainConfig) -> str | None:
    accelerator = cfg.trainer.accelerator.lower()
    if accelerator == "cpu":
        return "cpu"
    if accelerator in ("gpu", "cuda"):
        return "cuda"
    return None  # auto (and others): CUDA when available, as evaluate decides


def _check_before_training(cfg: TrainConfig, *, overwrite: bool) -> bool:
    """Fail before any work on what predicting and scoring would refuse later.

    Returns:
        Whether the checkpoint to predict with without training describes itself (else False).
    """
    from flair_deploy.flair_format import read_patch_csv

    tasks = cfg.tasks
    if not tasks.predict:
        return False
    assert cfg.data.test_csv is not None  # the config requires it with tasks.predict
    pairs = read_patch_csv(Path(cfg.data.test_csv), require_masks=tasks.metrics)
    check_outputs(
        run_outputs(cfg).evaluation, pairs, score=tasks.metrics, overwrite=overwrite, ign=_ign_outputs(cfg)
    )
    stale = run_outputs(cfg).predictions
    if not overwrite and stale.is_dir() and any(stale.glob("PRED_*.tif")):
        # Ours would mix with them (or, with delete_preds, remove them): never silently.
        raise OutputError(
            f"{stale} holds predictions of an earlier run; pass --overwrite to replace them, or choose "
            "another output folder"
        )
    if tasks.train:
        return False
    assert tasks.checkpoint is not None  # the config requires it without training
    return _checked_checkpoint(Path(tasks.checkpoint))


def _checked_checkpoint(path: Path) -> bool:
    """Whether *path* describes itself; a file that cannot be read is one line naming the key."""
    from flair_deploy.checkpoints import describes_itself, read_state

    try:
        return describes_itself(read_state(path))
    except CheckpointError as exc:
        raise CheckpointError(
            f"tasks.checkpoint (IGN: paths.ckpt_model_path): {exc}; predictions need a trained model "
            "(IGN's code would predict with untrained weights)"
        ) from None


def run_tasks(cfg: TrainConfig, *, progress: bool = True, overwrite: bool = False) -> RunResult:
    """Run what ``cfg.tasks`` asks, in IGN's order: train, predict the test list, score, drop predictions.

    Args:
        cfg: The validated config (``tasks`` says what to do).
        progress: Show progress bars (training, then prediction).
        overwrite: Replace an earlier run's outputs in ``logging.out_dir``.

    Returns:
        The training and evaluation results and the prediction/metric files written.

    Raises:
        InputDataError: Missing or unreadable lists, patches or masks (before training starts).
        CheckpointError: A checkpoint to predict with that is unreadable or does not fit the config;
            training that saved no best checkpoint.
        OutputError: Outputs of an earlier run without *overwrite*.
        ConfigError: Options Lightning or the evaluation reject.
        TrainingInterrupted: On Ctrl+C during training.
    """
    tasks = cfg.tasks
    own = _check_before_training(cfg, overwrite=overwrite)
    trained: TrainResult | None = None
    if tasks.train:
        trained = train(cfg, progress=progress, overwrite=overwrite)
        if trained.global_rank != 0 or not tasks.predict:
            return RunResult(trained, None, None, None, (), global_rank=trained.global_rank)
        if trained.best_checkpoint is None:
            raise CheckpointError(
                f"training in {trained.out_dir} saved no best checkpoint (monitor {trained.monitor}), "
                "so there is nothing to predict with; check checkpoint.monitor"
            )
        checkpoint = trained.best_checkpoint  # IGN reloads the best checkpoint before predicting
        own = True
    else:
        assert tasks.checkpoint is not None
        checkpoint = Path(tasks.checkpoint)

    assert cfg.data.test_csv is not None
    ign = _ign_outputs(cfg)
    with _after_training(trained, cfg):
        result = evaluate(
            checkpoint,
            Path(cfg.data.test_csv),
            run_outputs(cfg).evaluation,
            # IGN's weights carry no description: this config's bands, classes and architecture are it.
            description=None if own else cfg.description(),
            band_indexes=cfg.data.bands,
            aerial_json=cfg.data.aerial_json if cfg.model.use_metadata else None,
            batch_size=cfg.optim.batch_size,
            num_workers=cfg.num_workers,
            device=_device(cfg),
            ignore_unknown=cfg.data.ignore_index is not None,
            overwrite=overwrite,
            progress=progress,
            score=tasks.metrics,
            ign=ign,
        )
    # An earlier run's predictions (--overwrite) must not pass for this run's: IGN's delete_preds
    # removes the whole folder, and a new list may not name every earlier patch.
    _remove_stale_predictions(run_outputs(cfg).predictions, keep=set(result.files))
    return RunResult(trained, result, checkpoint, ign.predictions, result.files)


@contextmanager
def _after_training(trained: TrainResult | None, cfg: TrainConfig) -> Iterator[None]:
    """Say, on a failure after training, that the checkpoints are kept and how to predict again."""
    try:
        yield
    except FlairDeployError as exc:
        if trained is None or trained.best_checkpoint is None:
            raise
        best = trained.best_checkpoint
        raise type(exc)(
            f"{exc} (training finished and kept {best}; predict again without training: "
            f"flair-deploy train -c {trained.config_path or '<config>'} --set tasks.train=false "
            f"--set tasks.checkpoint={best})"
        ) from None


def _remove_stale_predictions(folder: Path, *, keep: set[Path]) -> None:
    """Remove ``PRED_*.tif`` files in *folder* not in *keep* (and the folder once empty).

    Nothing but predictions goes: files someone else put there stay.
    """
    if not folder.is_dir():
        return
    for path in folder.glob("PRED_*.tif"):
        if path not in keep:
            path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        folder.rmdir()  # only when empty
