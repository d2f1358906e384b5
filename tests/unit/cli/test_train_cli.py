"""`flair-deploy train`: bad input is one line and exit 1; IGN notes are printed; a tiny run reports."""

from pathlib import Path

import pytest
import yaml

from flair_deploy.cli import main


def _run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def _one_error_line(err):
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_missing_csv_is_one_line_and_exit_1(tmp_path, capsys):
    code, _, err = _run(
        [
            "train",
            "--train-csv",
            str(tmp_path / "none.csv"),
            "--val-csv",
            str(tmp_path / "none.csv"),
            "--out",
            str(tmp_path / "out"),
        ],
        capsys,
    )
    assert code == 1
    assert "none.csv" in _one_error_line(err)
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_unknown_set_key_is_one_line_and_exit_1(tmp_path, capsys):
    code, _, err = _run(
        ["train", "--set", "optim.lrate=0.1", "--train-csv", "a.csv", "--val-csv", "b.csv"], capsys
    )
    assert code == 1
    assert "optim.lrate: unknown key" in _one_error_line(err)


def test_no_data_at_all_says_what_to_give(capsys):
    code, _, err = _run(["train"], capsys)
    assert code == 1
    assert "--sample-data" in _one_error_line(err)


def test_missing_config_file(tmp_path, capsys):
    code, _, err = _run(["train", "--config", str(tmp_path / "nope.yaml")], capsys)
    assert code == 1
    assert "cannot read config" in _one_error_line(err)


def test_ign_config_keys_that_do_not_apply_are_printed(tmp_path, capsys):
    (tmp_path / "ign.yaml").write_text(
        yaml.safe_dump(
            {
                "paths": {"train_csv": "missing-train.csv", "val_csv": "missing-val.csv"},
                "tasks": {"metrics": True},  # without predict, as IGN: never reached
                "progress_rate": 10,
                "channels": [1, 2, 3, 4, 5],
                "norm_type": "scaling",
            }
        ),
        encoding="utf-8",
    )
    code, _, err = _run(
        ["train", "--config", str(tmp_path / "ign.yaml"), "--out", str(tmp_path / "o")], capsys
    )
    assert code == 1
    assert "IGN config key not applied: progress_rate" in err
    assert "IGN config key not applied: tasks.metrics: ignored without tasks.predict" in err
    assert "missing-train.csv" in _one_error_line(err)


def test_sample_data_run_reports_checkpoint_and_throughput(tmp_path, capsys, monkeypatch):
    import flair_deploy.sample as sample_mod

    real = sample_mod.make_sample_dataset

    def tiny(root, *, overwrite=False):  # the real default (240 64-px patches) takes seconds to write
        return real(root, n_train=4, n_val=2, n_test=1, size=32, with_aerial=False, overwrite=overwrite)

    monkeypatch.setattr(sample_mod, "make_sample_dataset", tiny)
    out = tmp_path / "run"
    argv = [
        "train",
        "--sample-data",
        "--out",
        str(out),
        "--epochs",
        "1",
        "--no-progress",
        "--set",
        "optim.batch_size=2",
        "--set",
        "trainer.limit_train_batches=1",
        "--set",
        "logging.tensorboard=false",
        "--set",
        "model.tile_size=32",
    ]
    code, stdout, err = _run(argv, capsys)
    assert code in (0, None), err
    assert "training patches/s" in stdout
    assert "val mIoU" in stdout
    best = out / "checkpoints" / "best.ckpt"
    assert best.is_file() and str(best) in stdout
    assert (out / "sample-data" / "train.csv").is_file()
    # A second run into the same folder is refused without --overwrite (one line, exit 1).
    code, _, err = _run(argv, capsys)
    assert code == 1
    assert "--overwrite" in _one_error_line(err)
    assert Path(best).is_file()


def test_interrupt_is_one_line_with_the_resume_command_and_exit_130(tmp_path, capsys, monkeypatch):
    import flair_deploy.training.run as run_mod

    last = tmp_path / "out" / "checkpoints" / "last.ckpt"
    message = (
        f"training interrupted in epoch 3 of 5: kept best.ckpt, last.ckpt in {last.parent}; last.ckpt "
        f"(end of epoch 2) continues it: {run_mod.resume_command(last.parent / 'train-config.yaml', last)}"
    )

    def interrupted(cfg, **kwargs):
        raise run_mod.TrainingInterrupted(message, kept=[last], resume_from=last)

    import flair_deploy.training.pipeline as pipeline_mod

    monkeypatch.setattr(pipeline_mod, "train", interrupted)  # the command trains through run_tasks
    for name in ("a.csv", "b.csv"):
        (tmp_path / name).write_text("x.tif,y.tif\n", encoding="utf-8")
    code, stdout, err = _run(
        [
            "train",
            "--train-csv",
            str(tmp_path / "a.csv"),
            "--val-csv",
            str(tmp_path / "b.csv"),
            "--out",
            str(tmp_path / "out"),
        ],
        capsys,
    )
    assert code == 130
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == [f"interrupted: {message}"]
    assert f"--set checkpoint.resume_from={last}" in lines[0]
    assert "Traceback" not in err and "done in" not in stdout


def test_ign_config_runs_train_predict_and_metrics_and_lists_the_outputs(tmp_path, capsys):
    """IGN's `flair --conf` run from one IGN file: the bundled example, pointed at tiny data."""
    import json

    from flair_deploy.sample import make_sample_dataset

    sample = make_sample_dataset(tmp_path / "data", n_train=4, n_val=2, n_test=2, size=32, with_aerial=False)
    repo = Path(__file__).resolve().parents[3]
    raw = yaml.safe_load((repo / "configs" / "ign" / "flair-1-config.yaml").read_text(encoding="utf-8"))
    raw["paths"].update(
        out_folder=str(tmp_path / "runs"),
        train_csv=str(sample.train_csv),
        val_csv=str(sample.val_csv),
        test_csv=str(sample.test_csv),
    )
    raw["tasks"]["delete_preds"] = False
    raw["model_framework"]["SegmentationModelsPytorch"]["encoder_decoder"] = "resnet18_unet"
    raw.update(num_epochs=1, batch_size=2, num_workers=0)
    config = tmp_path / "flair-1-config.yaml"
    config.write_text(yaml.safe_dump(raw), encoding="utf-8")
    argv = ["train", "--config", str(config), "--no-progress"]
    for item in ("model.encoder_depth=3", "trainer.limit_train_batches=2", "logging.tensorboard=false"):
        argv += ["--set", item]
    code, stdout, err = _run(argv, capsys)
    assert code in (0, None), err
    run = tmp_path / "runs" / "ign-example"
    assert "then predict + metrics" in stdout and "predicted 2 test patches" in stdout
    assert "IGN config key not applied: tasks" not in err
    for path in (
        run / "metrics" / "metrics.json",
        run / "metrics" / "confmat.npy",
        run / "evaluation" / "metrics.json",
    ):
        assert path.is_file() and str(path) in stdout
    preds = sorted((run / "predictions_ign-example").glob("PRED_*.tif"))
    assert len(preds) == 2 and f"2 predictions (PRED_*.tif) in {run / 'predictions_ign-example'}" in stdout
    report = json.loads((run / "metrics" / "metrics.json").read_text(encoding="utf-8"))
    assert len(report["classes"]) == 15 and len(report["per_class_iou"]) == 15  # 19 less the 4 weight-0
