"""train(): a tiny run end to end, checkpoint reload in a fresh process, resume, outputs, bad input,
all-or-nothing run folders, interrupts and exact resume, the rank-0 rule."""

import signal
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml

from flair_deploy.errors import CheckpointError, ConfigError, InputDataError, OutputError
from flair_deploy.sample import make_sample_dataset
from flair_deploy.training.config import load_train_config, sample_config_base
from flair_deploy.training.run import TrainingInterrupted, is_global_zero_process, plot_learning_curve, train


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
            "model.encoder_depth=3",  # a small network: checkpoints of a few MB, fast steps
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


# ---------------------------------------------------------------- all or nothing, one-line data errors
def _csv(path, rows):
    path.write_text("".join(f"{img},{msk}\n" for img, msk in rows), encoding="utf-8")
    return path


def _rows(csv_path):
    return [line.split(",") for line in csv_path.read_text(encoding="utf-8").split()]


def _with_train_csv(cfg, csv_path):
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"train_csv": csv_path})})


def test_mixed_patch_sizes_are_one_line_and_leave_no_run_folder(sample, tmp_path):
    big = make_sample_dataset(tmp_path / "big", n_train=2, n_val=1, n_test=1, size=64, with_aerial=False)
    small_img, small_msk = _rows(sample.train_csv)[0]
    big_img, big_msk = _rows(big.train_csv)[0]
    mixed = _csv(
        tmp_path / "mixed.csv",
        [(sample.root / small_img, sample.root / small_msk), (big.root / big_img, big.root / big_msk)],
    )
    out = tmp_path / "out"
    cfg = _with_train_csv(_tiny_config(sample, out), mixed)
    with pytest.raises(InputDataError) as exc:
        train(cfg, progress=False)
    message = str(exc.value)
    assert "\n" not in message
    assert "different sizes" in message and "32x32" in message and "64x64" in message
    assert "nothing was kept" in message
    # No checkpoint was written: nothing is left that would make the fixed rerun refuse the folder.
    assert not out.exists()
    train(_tiny_config(sample, out), progress=False)
    assert (out / "checkpoints" / "best.ckpt").is_file()


def test_failure_before_the_first_checkpoint_keeps_what_was_there(sample, tmp_path):
    out = tmp_path / "out"
    (out / "sample-data").mkdir(parents=True)  # e.g. --sample-data writes its dataset into the run folder
    cfg = _tiny_config(sample, out)
    with pytest.raises(InputDataError, match="nothing was kept"):
        train(cfg, progress=False, callbacks=[_RaiseAt(0, InputDataError("patch X is broken"))])
    assert sorted(p.name for p in out.iterdir()) == ["sample-data"]


def _RaiseAt(epoch, exc):
    """A callback that raises *exc* at the start of training epoch *epoch* (0-based)."""
    import lightning as L  # after flair_deploy.training, which applies the torchvision shim first

    class RaiseAt(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == epoch:
                raise exc

    return RaiseAt()


def test_failure_after_a_checkpoint_keeps_it_and_says_how_to_resume(sample, tmp_path):
    out = tmp_path / "out"
    cfg = _tiny_config(sample, out, "optim.epochs=2")
    with pytest.raises(InputDataError) as exc:
        train(cfg, progress=False, callbacks=[_RaiseAt(1, InputDataError("patch X is broken"))])
    message = str(exc.value)
    assert message.startswith("patch X is broken (kept ")
    last = out / "checkpoints" / "last.ckpt"
    assert last.is_file() and (out / "checkpoints" / "best.ckpt").is_file()
    assert f"--set checkpoint.resume_from={last}" in message


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"PK\x03\x04 truncated", r"cannot read checkpoint"),
        (b"", r"cannot read checkpoint"),
    ],
)
def test_corrupt_resume_checkpoint_is_one_line_before_any_output(sample, tmp_path, content, expected):
    bad = tmp_path / "last.ckpt"
    bad.write_bytes(content)
    out = tmp_path / "out"
    cfg = _resume(_tiny_config(sample, out), bad, 1)
    with pytest.raises(CheckpointError, match=expected) as exc:
        train(cfg, progress=False)
    assert "checkpoint.resume_from" in str(exc.value) and "\n" not in str(exc.value)
    assert not out.exists()


def test_truncated_real_checkpoint_is_refused(run, sample, tmp_path):
    _, result = run
    data = result.last_checkpoint.read_bytes()
    bad = tmp_path / "last.ckpt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"checkpoint.resume_from .*cannot read checkpoint"):
        train(_resume(_tiny_config(sample, tmp_path / "out"), bad, 2), progress=False)


def test_resume_checkpoint_of_another_model_is_refused(run, sample, tmp_path):
    _, result = run
    cfg = _tiny_config(sample, tmp_path / "out", "model.encoder_depth=4")
    with pytest.raises(CheckpointError, match=r"another architecture than this config.*init_weights_from"):
        train(_resume(cfg, result.last_checkpoint, 2), progress=False)
    assert not (tmp_path / "out").exists()


def test_weights_only_checkpoint_cannot_be_resumed(run, sample, tmp_path):
    _, result = run
    state = torch.load(result.best_checkpoint, map_location="cpu", weights_only=True)
    slim = tmp_path / "weights.ckpt"
    torch.save({"state_dict": state["state_dict"], "hyper_parameters": state["hyper_parameters"]}, slim)
    with pytest.raises(CheckpointError, match=r"holds weights only.*init_weights_from"):
        train(_resume(_tiny_config(sample, tmp_path / "out"), slim, 2), progress=False)


# ---------------------------------------------------------------- interrupt and exact resume
def test_interrupt_before_the_first_checkpoint_removes_the_run(sample, tmp_path):
    out = tmp_path / "out"
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingInterrupted, match=r"before the first checkpoint: nothing was kept") as exc:
        train(_tiny_config(sample, out), progress=False, callbacks=[_RaiseAt(0, KeyboardInterrupt())])
    assert exc.value.resume_from is None and exc.value.kept == ()
    assert not out.exists()
    assert signal.getsignal(signal.SIGINT) is handler  # Lightning's SIG_IGN does not outlive the run


def test_interrupted_run_resumes_to_the_same_end_as_the_uninterrupted_one(sample, tmp_path):
    # The default one-cycle schedule (per step), two epochs; the same seed for both runs.
    overrides = ("optim.scheduler=onecycle", "optim.epochs=2")
    whole = train(_tiny_config(sample, tmp_path / "whole", *overrides), progress=False)

    cfg = _tiny_config(sample, tmp_path / "cut", *overrides)
    with pytest.raises(TrainingInterrupted) as exc:
        train(cfg, progress=False, callbacks=[_RaiseAt(1, KeyboardInterrupt())])
    last = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    message = str(exc.value)
    assert exc.value.resume_from == last
    assert "interrupted in epoch 2 of 2" in message and "(end of epoch 1)" in message
    config_path = tmp_path / "cut" / "checkpoints" / "train-config.yaml"
    assert f"flair-deploy train -c {config_path} --set checkpoint.resume_from={last}" in message

    resumed = train(_resume(cfg, last, 2), progress=False)
    assert resumed.epochs_run == whole.epochs_run == 2
    assert resumed.final_metrics.keys() == whole.final_metrics.keys()
    for key, value in whole.final_metrics.items():
        assert resumed.final_metrics[key] == pytest.approx(value, abs=1e-6), key
    a = torch.load(whole.last_checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    b = torch.load(resumed.last_checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6, msg=key)


# ---------------------------------------------------------------- which process owns the run folder
@pytest.mark.parametrize(
    ("env", "zero"),
    [
        ({}, True),  # started by hand: the only process
        ({"LOCAL_RANK": "0", "NODE_RANK": "0", "WORLD_SIZE": "2"}, True),  # Lightning's rank 0
        ({"LOCAL_RANK": "1", "NODE_RANK": "0", "WORLD_SIZE": "2"}, False),  # re-launched for rank 1
        ({"LOCAL_RANK": "0", "NODE_RANK": "1"}, False),  # first process of the second node
        ({"LOCAL_RANK": "0", "GROUP_RANK": "1"}, False),  # torchrun's name for the node rank
        ({"RANK": "0", "LOCAL_RANK": "0"}, True),  # torchrun: the global rank decides
        ({"RANK": "3", "LOCAL_RANK": "0"}, False),
        ({"SLURM_PROCID": "2"}, False),
    ],
)
def test_only_global_rank_zero_owns_the_run_folder(monkeypatch, env, zero):
    for var in ("RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK"):
        monkeypatch.delenv(var, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert is_global_zero_process() is zero
