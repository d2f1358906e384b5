"""SegmentationTask: loss semantics, validation metrics, optimisers/schedules, encoder weights."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from flair_deploy.description import ArchitectureSpec, ClassInfo, ModelDescription, Normalization
from flair_deploy.errors import CheckpointError
from flair_deploy.models import build_model
from flair_deploy.training.losses import SegmentationLoss
from flair_deploy.training.task import SegmentationTask


@pytest.fixture
def small_description():
    """3 classes (the last inactive), 2 bands, 32-px tiles, a ResNet-18 U-Net."""
    return ModelDescription(
        name="small",
        bands=("R", "G"),
        normalization=Normalization(kind="scale"),
        classes=(
            ClassInfo(code=1, name="a"),
            ClassInfo(code=2, name="b"),
            ClassInfo(code=3, name="c", active=False),
        ),
        tile_size=32,
        overlap=8,
        architecture=ArchitectureSpec(arch="unet", encoder="resnet18", encoder_depth=5),
    )


def test_weight_zero_classes_and_ignore_index_drop_out_of_the_loss():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    target = torch.randint(0, 3, (2, 4, 4))
    target[0, 0, 0] = 255
    loss = SegmentationLoss([1.0, 2.0, 0.0], ignore_index=255)(logits, target)
    keep = (target != 255) & (target != 2)
    w = torch.tensor([1.0, 2.0, 0.0])
    per_pixel = F.cross_entropy(logits, target.clamp(max=2), reduction="none")
    expected = (per_pixel * w[target.clamp(max=2)] * keep).sum() / (w[target.clamp(max=2)] * keep).sum()
    torch.testing.assert_close(loss, expected)


def test_an_all_ignored_batch_gives_zero_loss_not_nan():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    target = torch.full((1, 4, 4), 2)  # only the inactive class
    loss = SegmentationLoss([1.0, 1.0, 0.0], dice_weight=1.0)(logits, target)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_dice_term_is_added():
    logits = torch.randn(1, 3, 8, 8)
    target = torch.randint(0, 2, (1, 8, 8))
    ce = SegmentationLoss([1.0, 1.0, 0.0])(logits, target)
    both = SegmentationLoss([1.0, 1.0, 0.0], dice_weight=0.5)(logits, target)
    assert both > ce


def test_checkpoint_keys_are_model_and_criterion_only(small_description):
    task = SegmentationTask(small_description.to_dict())
    prefixes = {k.split(".")[0] for k in task.state_dict()}
    assert prefixes == {"model", "criterion"}
    assert task.hparams["description"] == small_description.to_dict()
    assert task.criterion.weight.tolist() == [1.0, 1.0, 0.0]  # inactive class always weighs 0


def test_validation_miou_is_a_true_mean_over_active_classes(small_description):
    import lightning as L

    task = SegmentationTask(small_description.to_dict())
    # Ground truth: 15 pixels of class a, 1 of class b. Prediction: the inactive class c has the largest
    # logit everywhere (must be masked), then a everywhere except one pixel predicted b where truth is a.
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, 3, 3] = 1
    logits = torch.zeros(1, 3, 4, 4)
    logits[:, 2] = 10.0
    logits[:, 0] = 5.0
    logits[0, 1, 0, 0] = 6.0
    task.model.forward = lambda image, metadata=None: logits + 0 * image.sum()
    batch = {"image": torch.zeros(1, 2, 4, 4), "mask": target, "name": ["p"]}
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    trainer.validate(task, dataloaders=DataLoader([batch], batch_size=None), verbose=False)
    # IoU(a) = 14 / 16, IoU(b) = 0 / 2: the mean is 0.4375; the support-weighted mean would be 0.82.
    assert task.last_val_metrics["val_miou"] == pytest.approx((14 / 16 + 0.0) / 2)
    assert task.last_val_metrics["val_oa"] == pytest.approx(14 / 16)
    assert {k for k in task.last_val_metrics if k.startswith("val_iou/")} == {"val_iou/a", "val_iou/b"}


@pytest.mark.parametrize(
    ("scheduler", "kind", "interval"),
    [
        ("onecycle", torch.optim.lr_scheduler.OneCycleLR, "step"),
        ("cosine", torch.optim.lr_scheduler.CosineAnnealingLR, "epoch"),
        ("plateau", torch.optim.lr_scheduler.ReduceLROnPlateau, "epoch"),
    ],
)
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_optimizers_and_schedules(small_description, scheduler, kind, interval, optimizer):
    task = SegmentationTask(
        small_description.to_dict(), optimizer=optimizer, scheduler=scheduler, monitor="val_oa", momentum=0.0
    )
    task._trainer = SimpleNamespace(estimated_stepping_batches=12, max_epochs=3)
    conf = task.configure_optimizers()
    opt = conf["optimizer"]
    assert isinstance(opt, torch.optim.SGD if optimizer == "sgd" else torch.optim.AdamW)
    assert isinstance(conf["lr_scheduler"]["scheduler"], kind)
    assert conf["lr_scheduler"]["interval"] == interval
    if scheduler == "plateau":
        assert conf["lr_scheduler"]["monitor"] == "val_oa"  # not a hard-coded val_loss
        assert conf["lr_scheduler"]["scheduler"].mode == "max"


def test_encoder_weights_from_a_local_3_band_file_are_adapted(tmp_path, small_description):
    rgb = small_description.model_copy(update={"bands": ("R", "G", "B")})
    source = build_model(rgb).net.encoder.state_dict()
    sd = {k: v.clone() for k, v in source.items()}
    sd["fc.weight"] = torch.zeros(10, 512)  # a classifier head, as torchvision ResNets have
    path = tmp_path / "resnet18.pth"
    torch.save(sd, path)
    task = SegmentationTask(small_description.to_dict(), encoder_weights_path=str(path))
    conv = task.model.net.encoder.state_dict()["conv1.weight"]
    torch.testing.assert_close(conv, source["conv1.weight"][:, [0, 1]] * 1.5)
    layer = task.model.net.encoder.state_dict()["layer1.0.conv1.weight"]
    torch.testing.assert_close(layer, source["layer1.0.conv1.weight"])
    assert "encoder_weights_path" not in task.hparams


def test_encoder_weights_for_another_encoder_are_refused(tmp_path, small_description):
    path = tmp_path / "w.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "other.weight": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match=r"missing \d+ keys.*unexpected 1 keys \['other.weight'\]"):
        SegmentationTask(small_description.to_dict(), encoder_weights_path=str(path))
