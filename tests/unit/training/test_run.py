"""train(): a tiny run end to end, checkpoint reload in a fresh process, resume, outputs, bad input."""

import subprocess
import sys
import textwrap

import pytest
import torch
import yaml

from flair_deploy.errors import ConfigError, InputDataError, OutputError
from flair_deploy.sample import make_sample_dataset
from flair_deploy.training.config import load_train_config, sample_config_base
from flair_deploy.training.run import plot_learning_curve, train


def _tiny_config(sample, out, *overrides):
    flags = {
        "data.train_csv": str(sample.train_csv),
        "data.val_csv": str(sample.val_csv),
        "logging.out_dir": str(out),
    }
    cfg, _ = load_train_config(
        None,
        [
            "model.tile_size=32",
            "optim.batch_size=2",
            "optim.epochs=1",
            "trainer.limit_train_batches=2",
            "trainer.accelerator=cpu",
            "trainer.log_every_n_steps=1",
            "logging.tensorboard=false",  # importing TensorBoard costs seconds; CSV logs are enough here
            "optim.scheduler=cosine",  # resumable with more epochs (one-cycle is not, see below)
            *overrides,
        ],
        flags,
        base=sample_config_base(),
    )
    return cfg


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny") / "sample"
    return make_sample_dataset(root, n_train=6, n_val=2, n_test=1, size=32, with_aerial=False)


@pytest.fixture(scope="module")
def run(sample, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    cfg = _tiny_config(sample, out)
    return cfg, train(cfg, progress=False)


def test_run_writes_checkpoints_config_logs_and_curve(run):
    cfg, result = run
    assert result.best_checkpoint is not None and result.best_checkpoint.is_file()
    assert result.last_checkpoint is not None and result.last_checkpoint.is_file()
    assert result.epochs_run == 1
    assert result.patches_per_second > 0
    assert 0.0 <= result.final_metrics["val_miou"] <= 1.0
    assert result.best_score == pytest.approx(result.final_metrics["val_miou"])
    assert result.learning_curve is not None and result.learning_curve.read_bytes()[:4] == b"\x89PNG"
    # The resolved config sits beside the checkpoints and reloads to the same config.
    assert result.config_path.parent == result.best_checkpoint.parent
    reloaded, _ = load_train_config(result.config_path)
    assert reloaded == cfg.model_copy(
        update={"logging": cfg.logging.model_copy(update={"out_dir": reloaded.logging.out_dir})}
    )
    assert reloaded.logging.out_dir.is_absolute()


# A second interpreter importing torch: among the slowest unit tests, so it runs with `-m slow`.
@pytest.mark.slow
def test_checkpoint_is_plain_and_reloads_in_a_fresh_process(run, tmp_path):
    _, result = run
    ckpt = torch.load(result.best_checkpoint, map_location="cpu", weights_only=True)  # no unsafe unpickling
    desc_dict = ckpt["hyper_parameters"]["description"]
    # Reference logits from the raw checkpoint: the network rebuilt from its stored description.
    from flair_deploy.description import ModelDescription
    from flair_deploy.models import build_model

    net = build_model(ModelDescription.from_dict(desc_dict))
    net.load_state_dict(
        {k[len("model.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    )
    net.eval()
    torch.manual_seed(1)
    x = torch.rand(2, 5, 32, 32) * 255
    with torch.no_grad():
        expected = net(x)
    torch.save(x, tmp_path / "x.pt")
    script = textwrap.dedent(
        f"""
        import torch
        from pathlib import Path
        from flair_deploy.checkpoints import load_checkpoint
        loaded = load_checkpoint(Path({str(result.best_checkpoint)!r}))
        assert loaded.layout == "flair-deploy"
        assert sum(loaded.description.active_mask) == 9
        with torch.no_grad():
            torch.save(loaded.model(torch.load({str(tmp_path / "x.pt")!r})), {str(tmp_path / "y.pt")!r})
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300)
    torch.testing.assert_close(torch.load(tmp_path / "y.pt"), expected, rtol=0, atol=0)


def _resume(cfg, last, epochs):
    return cfg.model_copy(
        update={
            "optim": cfg.optim.model_copy(update={"epochs": epochs}),
            "checkpoint": cfg.checkpoint.model_copy(update={"resume_from": last}),
        }
    )


def test_full_resume_continues_from_last(run):
    cfg, first = run
    result = train(_resume(cfg, first.last_checkpoint, 2), progress=False)
    assert result.epochs_run == 2
    state = torch.load(result.last_checkpoint, map_location="cpu", weights_only=True)
    assert state["epoch"] == 1 and state["global_step"] == 4  # two epochs of two steps


@pytest.mark.slow
def test_resuming_past_the_end_of_a_one_cycle_schedule_is_refused(sample, tmp_path):
    cfg = _tiny_config(sample, tmp_path / "onecycle", "optim.scheduler=onecycle")
    first = train(cfg, progress=False)
    with pytest.raises(ConfigError, match=r"same optim.epochs"):
        train(_resume(cfg, first.last_checkpoint, 2), progress=False)


def test_existing_run_is_not_overwritten_without_permission(run):
    cfg, _ = run
    with pytest.raises(OutputError, match=r"already holds a training run.*--overwrite"):
        train(cfg, progress=False)


def test_missing_csv_fails_before_any_output(sample, tmp_path):
    cfg = _tiny_config(sample, tmp_path / "out")
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"val_csv": tmp_path / "nope.csv"})})
    with pytest.raises(InputDataError, match=r"nope.csv"):
        train(cfg, progress=False)
    assert not (tmp_path / "out").exists()


def test_bands_beyond_the_patch_are_refused(sample, tmp_path):
    cfg = _tiny_config(sample, tmp_path / "out", "data.bands=[1,2,3,4,6]", "data.normalization.kind=none")
    with pytest.raises(InputDataError, match="has 5 bands"):
        train(cfg, progress=False)


def test_gpu_accelerator_without_gpu_is_a_config_error(sample, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is available here")
    cfg = _tiny_config(sample, tmp_path / "out", "trainer.accelerator=gpu")
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        train(cfg, progress=False)


def test_learning_curve_from_a_csv_log(tmp_path):
    log = tmp_path / "metrics.csv"
    log.write_text(
        "epoch,step,train_loss_epoch,val_loss,val_miou\n"
        "0,3,,1.0,0.5\n0,3,1.2,,\n1,7,,0.8,0.7\n1,7,0.9,,\n"
        "2,8,,0.1,0.99\n",  # the final re-validation row: not an epoch of the curve
        encoding="utf-8",
    )
    png = plot_learning_curve(log, tmp_path / "curve.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(InputDataError, match="does not exist"):
        plot_learning_curve(tmp_path / "none.csv", tmp_path / "x.png")
    log.write_text("epoch,step\n", encoding="utf-8")
    with pytest.raises(InputDataError, match="no per-epoch"):
        plot_learning_curve(log, tmp_path / "x.png")


def test_resolved_config_is_valid_yaml(run):
    _, result = run
    data = yaml.safe_load(result.config_path.read_text(encoding="utf-8"))
    assert data["data"]["classes"] == "flair19"
