"""`flair-deploy train`: train a segmentation model into self-describing checkpoints."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from flair_deploy._optional import require_extra
from flair_deploy.cli._options import VersionOption, given_flags
from flair_deploy.errors import ConfigError

if TYPE_CHECKING:
    from flair_deploy.training.config import TrainConfig
    from flair_deploy.training.pipeline import RunResult
    from flair_deploy.training.run import TrainResult

__all__ = ["command"]


def _sample_paths(root: Path, *, overwrite: bool) -> dict[str, Any]:
    """Generate the sample dataset into *root* (or reuse one generated there before)."""
    from flair_deploy.sample import make_sample_dataset

    if (root / "sample.json").is_file() and not overwrite:
        aerial = root / "aerial_metadata.json"
        paths = {"train_csv": root / "train.csv", "val_csv": root / "val.csv", "test_csv": root / "test.csv"}
        typer.echo(f"using the sample dataset in {root}")
        return {k: str(v.resolve()) for k, v in paths.items()} | (
            {"aerial_json": str(aerial.resolve())} if aerial.is_file() else {}
        )
    typer.echo(f"generating the sample dataset in {root} ...")
    sample = make_sample_dataset(root, overwrite=overwrite)
    data = {
        "train_csv": str(sample.train_csv.resolve()),
        "val_csv": str(sample.val_csv.resolve()),
        "test_csv": str(sample.test_csv.resolve()),
    }
    if sample.aerial_json is not None:
        data["aerial_json"] = str(sample.aerial_json.resolve())
    return data


CONFIG_MODEL = "flair_deploy.training.config:TrainConfig"

#: Option → TrainConfig key (see cli._options).
FLAGS = {
    "train_csv": "data.train_csv",
    "val_csv": "data.val_csv",
    "out": "logging.out_dir",
    "epochs": "optim.epochs",
}

EXAMPLES = (
    "flair-deploy train --sample-data --out runs/sample",
    "flair-deploy train -c configs/train-sample.yaml --sample-data --epochs 5",
    "flair-deploy train -c my-run.yaml --set optim.lr=0.001 --set seed=7",
    "flair-deploy train -c flair-1-config.yaml    (IGN's file and tasks, as is)",
    "flair-deploy train -c my-run.yaml --set tasks.predict=true \\\n    --set tasks.metrics=true",
    (
        "flair-deploy train -c runs/a/checkpoints/train-config.yaml \\\n"
        "    --set checkpoint.resume_from=runs/a/checkpoints/last.ckpt"
    ),
)


def command(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            metavar="FILE",
            help="Training YAML: ours (see configs/README.md) or IGN's flair-1-config.yaml, detected "
            "automatically. Relative paths inside are relative to the file's folder.",
        ),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            metavar="KEY=VALUE",
            help="Override one key, section.key=value (value parsed as YAML); repeatable. "
            "E.g. --set optim.lr=0.001 --set data.bands=[1,2,3].",
        ),
    ] = None,
    train_csv: Annotated[
        Path | None,
        typer.Option(metavar="CSV", help="Training patch list (image,mask rows; optional header)."),
    ] = None,
    val_csv: Annotated[
        Path | None,
        typer.Option(metavar="CSV", help="Validation patch list, used to pick the best checkpoint."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(metavar="FOLDER", help="Run folder for checkpoints/, logs/ and learning-curve.png."),
    ] = None,
    epochs: Annotated[int | None, typer.Option(metavar="N", help="Maximum epochs.")] = None,
    sample_data: Annotated[
        bool,
        typer.Option(
            "--sample-data",
            help="Generate the built-in sample dataset into OUT/sample-data and train on it "
            "(with no --config, the settings of configs/train-sample.yaml are used).",
        ),
    ] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show the progress bar.")] = True,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace the checkpoints and logs of an earlier run in OUT.")
    ] = False,
    version: VersionOption = False,
) -> None:
    """Train a segmentation model into self-describing checkpoints.

    The best checkpoint (by checkpoint.monitor, default val_miou) carries
    bands, normalisation, classes, tile size and GSD: `flair-deploy evaluate`
    and `export` need nothing else. IGN's flair-1-config.yaml is accepted as
    it is; keys it has that do not apply are listed, not ignored silently.
    Precedence: options > --set > --config file > defaults.

    Writes OUT/checkpoints/best.ckpt, last.ckpt and train-config.yaml (the
    resolved config), OUT/logs/ (CSV and TensorBoard) and
    OUT/learning-curve.png. An earlier run in OUT needs --overwrite, or
    checkpoint.resume_from to continue it.

    Then, as the config's tasks say (IGN's tasks.predict/metrics/delete_preds,
    or ours: tasks.predict, tasks.metrics, tasks.delete_preds), the best
    checkpoint predicts data.test_csv into OUT/predictions_<OUT name>/
    PRED_<name>.tif (IGN's 0-based class indices) and scores it into
    OUT/metrics/ (IGN's confmat.npy, metrics.json) and OUT/evaluation/ (ours).
    tasks.train=false only predicts, with tasks.checkpoint (IGN:
    paths.ckpt_model_path).
    """
    require_extra("train", purpose="flair-deploy train")
    from flair_deploy.training.config import load_train_config, sample_config_base
    from flair_deploy.training.pipeline import run_tasks
    from flair_deploy.training.run import TrainingInterrupted, is_global_zero_process

    if config is None and not sample_data and not set_ and (train_csv is None or val_csv is None):
        raise ConfigError(
            "nothing to train on: give --config FILE, --train-csv and --val-csv, or --sample-data "
            "(see flair-deploy train --help)"
        )
    sample: dict[str, Any] = {}
    if sample_data:
        root = (out if out is not None else Path("runs/train")) / "sample-data"
        # A rank Lightning re-launched reuses the dataset rank 0 generated; it must not rewrite it.
        sample = _sample_paths(root, overwrite=overwrite and is_global_zero_process())
    flags, names = given_flags(
        FLAGS,
        train_csv=str(train_csv.resolve()) if train_csv is not None else sample.get("train_csv"),
        val_csv=str(val_csv.resolve()) if val_csv is not None else sample.get("val_csv"),
        out=str(out.resolve()) if out is not None else None,
        epochs=epochs,
    )
    # The sample's test list and aerial metadata are recorded too (not options of their own).
    flags.update({f"data.{k}": v for k, v in sample.items() if k in ("test_csv", "aerial_json")})
    base = sample_config_base() if sample_data and config is None else None
    cfg, notes = load_train_config(config, set_ or (), flags, base=base, flag_names=names)
    for line in notes:
        typer.echo(f"IGN config key not applied: {line}", err=True)
    if is_global_zero_process():  # once, not once per process Lightning re-launches
        _announce(cfg)
    try:
        result = run_tasks(cfg, progress=progress, overwrite=overwrite)
    except TrainingInterrupted as exc:
        # Ctrl+C: one line saying what was kept and how to resume; 130 is the shell's SIGINT status.
        if is_global_zero_process():  # Ctrl+C reaches every rank; rank 0 knows what was kept
            typer.echo(f"interrupted: {exc}", err=True)
        raise typer.Exit(130) from None
    if result.global_rank == 0:
        if result.train is not None:
            _report(result.train, hint=result.evaluation is None)
        _report_tasks(result)


def _announce(cfg: TrainConfig) -> None:
    desc = cfg.description()
    active = sum(desc.active_mask)
    what = f"{desc.architecture.arch}/{desc.architecture.encoder} on {len(desc.bands)} bands ({','.join(desc.bands)}), {desc.num_classes} logits ({active} active)"
    tasks = cfg.tasks
    then = [t for t, on in (("predict", tasks.predict), ("metrics", tasks.metrics)) if on]
    after = f", then {' + '.join(then)} on {cfg.data.test_csv}" if then and tasks.train else ""
    if tasks.train:
        typer.echo(f"training {what}, up to {cfg.optim.epochs} epochs{after} -> {cfg.logging.out_dir}")
    else:
        typer.echo(
            f"predicting {cfg.data.test_csv} with {tasks.checkpoint} ({' + '.join(then)}, no training) "
            f"-> {cfg.logging.out_dir}"
        )


def _report_tasks(result: RunResult) -> None:
    ev = result.evaluation
    if ev is None:
        return
    typer.echo("")
    typer.echo(f"predicted {ev.patches} test patches with {result.checkpoint} in {ev.seconds:.1f} s")
    ign = ev.metrics.get("ign")
    if ign is not None:
        present = ev.metrics["present"]
        typer.echo(
            f"test mIoU {_fmt(present.miou)} (ours, classes present), {_fmt(ign.miou)} (IGN's convention); "
            f"overall accuracy {_fmt(present.overall_accuracy)}"
        )
    preds = [p for p in ev.files if p.name.startswith("PRED_")]
    reports = [p for p in ev.files if not p.name.startswith("PRED_")]
    for path in reports:
        typer.echo(f"  {path.parent.name + '/' + path.name:<32s} {path}")
    if preds and result.predictions is not None:
        typer.echo(f"  {len(preds)} predictions (PRED_*.tif) in {result.predictions}")
    elif ev.metrics:
        typer.echo("  predictions not kept (tasks.delete_preds)")


def _fmt(x: float | None) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:.4f}"


def _report(result: TrainResult, *, hint: bool = True) -> None:
    final = result.final_metrics
    typer.echo("")
    typer.echo(
        f"done in {result.seconds / 60:.1f} min: {result.epochs_run} epochs, "
        f"{result.patches_per_second:.1f} training patches/s"
    )
    typer.echo(
        f"best checkpoint ({result.monitor} {_fmt(result.best_score)}): val mIoU {_fmt(final.get('val_miou'))}, "
        f"overall accuracy {_fmt(final.get('val_oa'))}, val loss {_fmt(final.get('val_loss'))}"
    )
    typer.echo(f"  checkpoint:     {result.best_checkpoint}")
    if result.last_checkpoint is not None:
        typer.echo(f"  last (resume):  {result.last_checkpoint}")
    if result.config_path is not None:
        typer.echo(f"  config:         {result.config_path}")
    if result.learning_curve is not None:
        typer.echo(f"  learning curve: {result.learning_curve}")
    if result.best_checkpoint is not None and hint:
        typer.echo(f"next: flair-deploy evaluate {result.best_checkpoint} --csv <test.csv> --out <folder>")
