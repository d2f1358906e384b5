"""Multi-process training: 2 CPU processes (gloo) through the command line, as a user runs it.

Lightning's ``ddp`` re-launches the command for rank 1 (which must not refuse the run folder rank 0
just created); ``ddp_spawn`` starts fresh interpreters (which must get the torchvision shim). Both
must write one run folder, report once, and score the validation set as one process would: the
confusion matrix is summed over ranks and no patch is counted twice (5 validation patches over 2
ranks). The rank-0 rule itself has a fast test in test_run.py.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import flair_deploy
from flair_deploy.sample import make_sample_dataset

pytestmark = pytest.mark.slow  # two interpreters with torch and Lightning each, and gloo: about a minute


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp") / "sample"
    return make_sample_dataset(root, n_train=8, n_val=5, n_test=1, size=32, with_aerial=False)


def _one_process_val_miou(checkpoint, sample):
    import lightning as L

    from flair_deploy.description import ModelDescription
    from flair_deploy.training.data import FlairDataModule
    from flair_deploy.training.task import SegmentationTask

    task = SegmentationTask.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True)
    desc = ModelDescription.from_dict(task.hparams["description"])
    data = FlairDataModule(
        train_csv=None, val_csv=sample.val_csv, description=desc, band_indexes=(1, 2, 3, 4, 5), batch_size=2
    )
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    return trainer.validate(task, datamodule=data, verbose=False)[0]["val_miou"]


@pytest.mark.parametrize("strategy", ["ddp", "ddp_spawn"])
def test_two_process_training_on_the_cpu(sample, tmp_path, strategy):
    out = tmp_path / "run"
    argv = [
        *("train", "--train-csv", str(sample.train_csv), "--val-csv", str(sample.val_csv)),
        *("--out", str(out), "--epochs", "1", "--no-progress"),
        *("--set", "model.tile_size=32", "--set", "optim.batch_size=2", "--set", "logging.tensorboard=false"),
        *(
            "--set",
            "trainer.accelerator=cpu",
            "--set",
            "trainer.devices=2",
            "--set",
            f"trainer.strategy={strategy}",
        ),
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "NODE_RANK", "RANK", "WORLD_SIZE")}
    src = str(Path(flair_deploy.__file__).parents[1])  # the tree under test, also in the re-launched ranks
    env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
    proc = subprocess.run(
        [sys.executable, "-m", "flair_deploy", *argv],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "already holds a training run" not in proc.stderr
    assert "torchvision::nms" not in proc.stderr
    # Reported once, by rank 0.
    assert proc.stdout.count("training unet/") == 1, proc.stdout
    assert proc.stdout.count("done in ") == 1, proc.stdout
    assert "1 epochs" in proc.stdout
    best = out / "checkpoints" / "best.ckpt"
    assert best.is_file() and (out / "checkpoints" / "last.ckpt").is_file()
    assert (out / "checkpoints" / "train-config.yaml").is_file()
    assert (out / "learning-curve.png").is_file()
    assert len(list((out / "logs" / "csv").iterdir())) == 1  # one log version, not one per rank
    reported = float(re.search(r"val mIoU (\d\.\d+)", proc.stdout).group(1))
    assert reported == pytest.approx(_one_process_val_miou(best, sample), abs=1e-4)
