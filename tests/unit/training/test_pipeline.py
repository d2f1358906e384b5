"""run_tasks(): IGN's whole `flair --conf` run from one IGN config (train, predict, metrics, delete_preds),
predicting without training, and the refusals that come before any work."""

import json
import warnings

import numpy as np
import pytest
import rasterio
import torch
import yaml

from flair_deploy.errors import CheckpointError, ConfigError, InputDataError, OutputError
from flair_deploy.flair_format import FLAIR_CLASSES, FLAIR_RVBIE_MEAN, FLAIR_RVBIE_STD, read_patch_csv
from flair_deploy.sample import SAMPLE_CLASS_CODES, make_sample_dataset
from flair_deploy.training.config import load_train_config
from flair_deploy.training.pipeline import run_outputs, run_tasks

# A small network and one short epoch: the run takes seconds on a CPU.
FAST = [
    "model.encoder_depth=3",
    "trainer.limit_train_batches=2",
    "trainer.log_every_n_steps=1",
    "logging.tensorboard=false",
]
IGN_METRIC_KEYS = [
    "Avg_metrics_name",
    "Avg_metrics",
    "classes",
    "per_class_iou",
    "per_class_fscore",
    "per_class_precision",
    "per_class_recall",
]


def ign_config(sample, out_folder, *, name="tiny", **tasks):
    """IGN's flair-1-config.yaml layout, every key, for the tiny sample."""
    task_block = {"train": True, "predict": True, "metrics": True, "delete_preds": False, **tasks}
    ckpt = str(task_block.pop("ckpt", "") or "")
    task_block["train_tasks"] = {
        "init_weights_only_from_ckpt": task_block.pop("init", False),
        "resume_training_from_ckpt": task_block.pop("resume", False),
    }
    return {
        "paths": {
            "out_folder": str(out_folder),
            "out_model_name": name,
            "train_csv": str(sample.train_csv),
            "val_csv": str(sample.val_csv),
            "test_csv": str(sample.test_csv),
            "ckpt_model_path": ckpt,
            "path_metadata_aerial": "",
        },
        "tasks": task_block,
        "model_framework": {
            "model_provider": "SegmentationModelsPytorch",
            "HuggingFace": {"org_model": "openmmlab/upernet-swin-small"},
            "SegmentationModelsPytorch": {"encoder_decoder": "resnet18_unet"},
        },
        "use_augmentation": False,
        "use_metadata": False,
        "channels": [1, 2, 3, 4, 5],
        "norm_type": "custom",
        "norm_means": list(FLAIR_RVBIE_MEAN),
        "norm_stds": list(FLAIR_RVBIE_STD),
        "seed": 2022,
        "batch_size": 2,
        "learning_rate": 0.01,
        "num_epochs": 1,
        "use_weights": True,
        # The classes the sample draws are trained; the others get IGN's weight 0.
        "classes": {code: [1 if code in SAMPLE_CLASS_CODES else 0, name] for code, name, _ in FLAIR_CLASSES},
        "georeferencing_output": True,
        "accelerator": "cpu",
        "num_nodes": 1,
        "gpus_per_node": 1,
        "strategy": "auto",
        "num_workers": 0,
        "ckpt_save_also_last": True,
        "ckpt_verbose": False,
        "ckpt_weights_only": False,
        "ckpt_monitor": "val_loss",
        "ckpt_monitor_mode": "min",
        "ckpt_earlystopping_patience": 30,
        "cp_csv_and_conf_to_output": True,
        "enable_progress_bar": False,
        "progress_rate": 10,
    }


def load(raw, path, *overrides):
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return load_train_config(path, [*FAST, *overrides])


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny") / "sample"
    return make_sample_dataset(root, n_train=6, n_val=2, n_test=3, size=32, with_aerial=False)


@pytest.fixture(scope="module")
def whole_run(sample, tmp_path_factory):
    """Train + predict + metrics from one IGN config, delete_preds off."""
    tmp = tmp_path_factory.mktemp("whole")
    cfg, notes = load(ign_config(sample, tmp / "runs"), tmp / "flair-1-config.yaml")
    return cfg, notes, run_tasks(cfg, progress=False)


def _read(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)  # georeferencing off
        src = rasterio.open(path)
    with src:
        return src.read(1), src.profile, src.crs, src.transform, src.nodata


def _ign_formulas(confmat, active):
    """IGN's src/flair/metrics.py written out independently: delete rows and columns, percent, NaN->0."""
    keep = np.flatnonzero(active)
    cm = confmat[np.ix_(keep, keep)].astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        diag, rows, cols = np.diag(cm), cm.sum(1), cm.sum(0)
        iou = np.nan_to_num(100 * diag / (rows + cols - diag))
        precision = np.nan_to_num(100 * diag / cols)
        recall = np.nan_to_num(100 * diag / rows)
        fscore = np.nan_to_num(2 * precision * recall / (precision + recall))
    oa = 100 * np.trace(cm) / cm.sum()
    return [iou.mean(), oa, fscore.mean(), precision.mean(), recall.mean()], iou, fscore, precision, recall


def test_ign_config_maps_its_tasks(whole_run):
    cfg, notes, _ = whole_run
    assert (cfg.tasks.train, cfg.tasks.predict, cfg.tasks.metrics, cfg.tasks.delete_preds) == (
        True,
        True,
        True,
        False,
    )
    assert cfg.tasks.georeferenced
    assert not any(n.startswith(("tasks.", "georeferencing_output")) for n in notes)


def test_whole_run_writes_ign_predictions_for_every_test_patch(whole_run, sample):
    cfg, _, result = whole_run
    out = cfg.logging.out_dir
    folder = out / "predictions_tiny"  # IGN: out_folder/out_model_name/predictions_<out_model_name>
    assert result.predictions == folder
    assert result.checkpoint == out / "checkpoints" / "best.ckpt"  # IGN predicts with the best
    pairs = read_patch_csv(sample.test_csv)
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"PRED_{p.image.name}" for p in pairs)
    active = np.array([c.active for c in cfg.description().classes])
    for pair in pairs:
        pred, profile, crs, transform, nodata = _read(folder / f"PRED_{pair.image.name}")
        with rasterio.open(pair.image) as src:
            assert (crs, transform, pred.shape) == (src.crs, src.transform, (src.height, src.width))
        assert profile["dtype"] == "uint8" and profile["count"] == 1 and profile["compress"] == "lzw"
        assert nodata == 255  # never the patch's own nodata, which could name class 0
        assert pred.max() < len(active) and active[np.unique(pred)].all()  # 0-based, active indices only


def test_whole_run_metrics_in_ign_layout_match_the_predictions_on_disk(whole_run, sample):
    cfg, _, result = whole_run
    out = cfg.logging.out_dir
    confmat = np.load(out / "metrics" / "confmat.npy")
    desc = cfg.description()
    k = desc.num_classes
    assert confmat.shape == (k, k) and confmat.dtype == np.int64
    # The uncleaned matrix is what the written predictions give against the masks (rows = ground truth).
    lut = np.array(desc.code_lut())
    expected = np.zeros((k, k), dtype=np.int64)
    for pair in read_patch_csv(sample.test_csv):
        with rasterio.open(pair.mask) as m:
            gt = lut[m.read(1)]
        pred = _read(out / "predictions_tiny" / f"PRED_{pair.image.name}")[0]
        expected += np.bincount(gt.ravel() * k + pred.ravel(), minlength=k * k).reshape(k, k)
    np.testing.assert_array_equal(confmat, expected)

    report = json.loads((out / "metrics" / "metrics.json").read_text(encoding="utf-8"))
    assert list(report) == IGN_METRIC_KEYS
    assert report["Avg_metrics_name"] == ["mIoU", "Overall Accuracy", "Fscore", "Precision", "Recall"]
    assert report["classes"] == [c.name for c in desc.classes if c.active]
    avg, iou, fscore, precision, recall = _ign_formulas(confmat, desc.active_mask)
    np.testing.assert_allclose(report["Avg_metrics"], avg)
    for key, values in (
        ("per_class_iou", iou),
        ("per_class_fscore", fscore),
        ("per_class_precision", precision),
        ("per_class_recall", recall),
    ):
        np.testing.assert_allclose(report[key], values, err_msg=key)
    # Ours too, from the same matrix.
    ours = json.loads((out / "evaluation" / "metrics.json").read_text(encoding="utf-8"))
    assert ours["conventions"]["ign"]["miou"] == pytest.approx(avg[0] / 100)
    assert (out / "evaluation" / "confusion_matrix.csv").is_file()
    assert {p.name for p in result.files} >= {"metrics.json", "confmat.npy", "confusion_matrix.csv"}


def test_rerun_without_overwrite_is_refused_before_training(whole_run):
    cfg, _, _ = whole_run
    before = (cfg.logging.out_dir / "checkpoints" / "best.ckpt").stat().st_mtime_ns
    with pytest.raises(OutputError, match=r"already holds.*pass --overwrite"):
        run_tasks(cfg, progress=False)
    assert (cfg.logging.out_dir / "checkpoints" / "best.ckpt").stat().st_mtime_ns == before


def test_predict_without_training_uses_ckpt_model_path_and_delete_preds(whole_run, sample, tmp_path):
    cfg, _, result = whole_run
    raw = ign_config(
        sample, tmp_path / "runs", name="again", train=False, ckpt=result.checkpoint, delete_preds=True
    )
    raw["paths"]["train_csv"] = raw["paths"]["val_csv"] = ""  # not read without training (as IGN)
    again, _ = load(raw, tmp_path / "predict.yaml")
    assert again.tasks.checkpoint == result.checkpoint
    second = run_tasks(again, progress=False)
    out = again.logging.out_dir
    assert not (out / "checkpoints").exists()  # nothing trained
    assert not (out / "predictions_again").exists() and second.predictions is None  # delete_preds
    # The same checkpoint gives the same matrix as the training run's predictions.
    np.testing.assert_array_equal(
        np.load(out / "metrics" / "confmat.npy"), np.load(cfg.logging.out_dir / "metrics" / "confmat.npy")
    )


def test_predict_without_metrics_needs_no_masks_and_writes_only_predictions(whole_run, sample, tmp_path):
    _, _, result = whole_run
    images_only = tmp_path / "images.csv"
    images_only.write_text("".join(f"{p.image}\n" for p in read_patch_csv(sample.test_csv)), encoding="utf-8")
    raw = ign_config(
        sample, tmp_path / "runs", train=False, metrics=False, ckpt=result.checkpoint, delete_preds=True
    )
    raw["paths"]["test_csv"] = str(images_only)
    raw["georeferencing_output"] = False
    cfg, notes = load(raw, tmp_path / "predict.yaml")
    assert any(n.startswith("tasks.delete_preds: ignored without tasks.metrics") for n in notes)
    second = run_tasks(cfg, progress=False)
    out = cfg.logging.out_dir
    assert sorted(p.name for p in out.iterdir()) == ["predictions_tiny"]
    first = next((out / "predictions_tiny").iterdir())
    pred, _, crs, _, _ = _read(first)
    assert crs is None  # georeferencing_output: false
    np.testing.assert_array_equal(pred, _read(result.predictions / first.name)[0])
    assert len(second.files) == 3


def test_predict_from_ign_weights_uses_the_config_as_description(whole_run, sample, tmp_path):
    first, _, result = whole_run
    state = torch.load(result.checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    ign_sd = {"model.seg_model." + k.removeprefix("model.net."): v for k, v in state.items() if ".net." in k}
    ign_ckpt = tmp_path / "ign.ckpt"
    torch.save({"state_dict": ign_sd}, ign_ckpt)
    cfg, _ = load(ign_config(sample, tmp_path / "runs", train=False, ckpt=ign_ckpt), tmp_path / "c.yaml")
    run_tasks(cfg, progress=False)
    out = cfg.logging.out_dir
    np.testing.assert_array_equal(
        np.load(out / "metrics" / "confmat.npy"), np.load(first.logging.out_dir / "metrics" / "confmat.npy")
    )


def test_predict_without_training_from_an_unreadable_checkpoint_is_one_line(sample, tmp_path):
    bad = tmp_path / "broken.ckpt"
    bad.write_bytes(b"not a checkpoint")
    cfg, _ = load(ign_config(sample, tmp_path / "runs", train=False, ckpt=bad), tmp_path / "c.yaml")
    with pytest.raises(
        CheckpointError, match=r"tasks.checkpoint \(IGN: paths.ckpt_model_path\).*broken"
    ) as e:
        run_tasks(cfg, progress=False)
    assert "\n" not in str(e.value) and "untrained" in str(e.value)
    assert not (tmp_path / "runs").exists()


def test_missing_test_mask_is_refused_before_training(sample, tmp_path):
    rows = read_patch_csv(sample.test_csv)
    bad = tmp_path / "test.csv"
    bad.write_text(f"{rows[0].image},{tmp_path / 'nope.tif'}\n", encoding="utf-8")
    raw = ign_config(sample, tmp_path / "runs")
    raw["paths"]["test_csv"] = str(bad)
    cfg, _ = load(raw, tmp_path / "c.yaml")
    with pytest.raises(InputDataError, match=r"nope\.tif"):
        run_tasks(cfg, progress=False)
    assert not (tmp_path / "runs").exists()  # nothing trained, nothing written


def test_resume_from_a_weights_only_checkpoint_is_one_line(whole_run, sample, tmp_path):
    _, _, result = whole_run
    state = torch.load(result.checkpoint, map_location="cpu", weights_only=True)
    weights_only = tmp_path / "weights.ckpt"
    torch.save({k: v for k, v in state.items() if k in ("state_dict", "hyper_parameters")}, weights_only)
    raw = ign_config(sample, tmp_path / "runs", resume=True, ckpt=weights_only)
    cfg, _ = load(raw, tmp_path / "c.yaml")
    assert cfg.checkpoint.resume_from == weights_only
    with pytest.raises(CheckpointError, match="holds weights only") as e:
        run_tasks(cfg, progress=False)
    assert "init_weights_from" in str(e.value)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("tasks", "message"),
    [
        ({"metrics": True}, "tasks.metrics scores the predictions"),
        ({"predict": True, "delete_preds": True}, "tasks.delete_preds drops the predictions"),
        ({"train": False, "predict": False}, "nothing to do"),
        ({"train": False, "predict": True}, "needs tasks.checkpoint"),
        ({"predict": True}, "tasks.predict needs data.test_csv"),
        ({"checkpoint": "a.ckpt"}, "after training the run's best checkpoint is used"),
    ],
)
def test_our_tasks_section_refuses_what_cannot_run(tasks, message):
    sets = [f"tasks.{k}={v}".replace("True", "true").replace("False", "false") for k, v in tasks.items()]
    with pytest.raises(ConfigError, match=message):
        load_train_config(None, ["data.train_csv=a.csv", "data.val_csv=b.csv", *sets])


def test_our_layout_asks_for_the_same_run(whole_run, tmp_path):
    cfg, _, _ = whole_run
    ours = cfg.model_dump(mode="json")
    assert ours["tasks"] == {
        "train": True,
        "predict": True,
        "metrics": True,
        "delete_preds": False,
        "georeferenced": True,
        "checkpoint": None,
    }
    path = tmp_path / "ours.yaml"
    path.write_text(yaml.safe_dump(ours), encoding="utf-8")
    again, notes = load_train_config(path)
    assert again == cfg and notes == ()
    assert run_outputs(again).predictions.name == "predictions_tiny"


def test_predictions_never_inherit_the_patch_nodata(whole_run, sample, tmp_path):
    _, _, result = whole_run
    pair = read_patch_csv(sample.test_csv)[0]
    with rasterio.open(pair.image) as src:
        profile, data = src.profile, src.read()
    assert (data != 0).any(axis=0).all()  # no pixel is nodata on every band
    image = tmp_path / pair.image.name
    with rasterio.open(image, "w", **{**profile, "nodata": 0}) as dst:  # nodata 0 = IGN's class 0
        dst.write(data)
    listed = tmp_path / "one.csv"
    listed.write_text(f"{image},{pair.mask}\n", encoding="utf-8")
    raw = ign_config(sample, tmp_path / "runs", train=False, ckpt=result.checkpoint, metrics=False)
    raw["paths"]["test_csv"] = str(listed)
    cfg, _ = load(raw, tmp_path / "c.yaml")
    run_tasks(cfg, progress=False)
    pred, _, _, _, nodata = _read(cfg.logging.out_dir / "predictions_tiny" / f"PRED_{image.name}")
    assert nodata == 255
    np.testing.assert_array_equal(pred, _read(result.predictions / f"PRED_{image.name}")[0])


def test_overwrite_replaces_an_earlier_runs_predictions_and_drops_stale_ones(whole_run, sample, tmp_path):
    _, _, result = whole_run
    raw = ign_config(sample, tmp_path / "runs", train=False, ckpt=result.checkpoint, metrics=False)
    cfg, _ = load(raw, tmp_path / "c.yaml")
    folder = run_outputs(cfg).predictions
    folder.mkdir(parents=True)
    (folder / "PRED_IMG_999999.tif").write_bytes(b"an earlier run's")
    (folder / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(OutputError, match="holds predictions of an earlier run; pass --overwrite"):
        run_tasks(cfg, progress=False)
    run_tasks(cfg, progress=False, overwrite=True)
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted([f"PRED_{p.image.name}" for p in read_patch_csv(sample.test_csv)] + ["notes.txt"])


def test_a_failure_after_training_says_how_to_predict_again(tmp_path):
    from flair_deploy.training.pipeline import _after_training
    from flair_deploy.training.run import TrainResult

    best = tmp_path / "checkpoints" / "best.ckpt"
    trained = TrainResult(
        out_dir=tmp_path,
        best_checkpoint=best,
        last_checkpoint=None,
        monitor="val_loss",
        best_score=0.5,
        config_path=tmp_path / "checkpoints" / "train-config.yaml",
    )
    with pytest.raises(InputDataError) as e, _after_training(trained, None):
        raise InputDataError("cannot read patch IMG_1")
    text = str(e.value)
    assert text.startswith("cannot read patch IMG_1 (training finished and kept")
    assert f"--set tasks.train=false --set tasks.checkpoint={best}" in text and "\n" not in text
