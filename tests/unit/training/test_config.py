"""TrainConfig validation, path resolution, the sample preset, and IGN's flair-1-config.yaml mapping."""

from pathlib import Path

import pytest
import yaml

from flair_deploy.errors import ConfigError
from flair_deploy.ign import convert_ign_train
from flair_deploy.training.config import load_train_config, sample_config_base

REPO = Path(__file__).resolve().parents[3]
DATA = {"data": {"train_csv": "/d/train.csv", "val_csv": "/d/val.csv"}}
PATHS = {"data.train_csv": "/d/train.csv", "data.val_csv": "/d/val.csv"}


def _cfg(*overrides, base=None):
    cfg, _notes = load_train_config(None, overrides, PATHS, base=base)
    return cfg


def _write(tmp_path, data, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_yaml_paths_are_relative_to_the_yaml_folder(tmp_path, monkeypatch):
    sub = tmp_path / "conf"
    sub.mkdir()
    path = _write(sub, {"data": {"train_csv": "lists/train.csv", "val_csv": "/abs/val.csv"}})
    monkeypatch.chdir(tmp_path)
    cfg, notes = load_train_config(path, ["logging.out_dir=runs/x"])
    assert cfg.data.train_csv == (sub / "lists/train.csv").resolve()
    assert cfg.data.val_csv == Path("/abs/val.csv")
    assert cfg.logging.out_dir == Path("runs/x")  # command-line values stay relative to the cwd
    assert notes == ()


def test_precedence_flags_over_set_over_yaml(tmp_path):
    path = _write(tmp_path, {**DATA, "optim": {"lr": 0.1, "epochs": 3}})
    cfg, _ = load_train_config(path, ["optim.lr=0.2", "optim.epochs=4"], {"optim.epochs": 5})
    assert (cfg.optim.lr, cfg.optim.epochs) == (0.2, 5)


def test_unknown_key_is_one_line_error(tmp_path):
    path = _write(tmp_path, {**DATA, "optim": {"learning_rate": 0.1}})
    with pytest.raises(ConfigError, match=r"optim\.learning_rate: unknown key") as exc:
        load_train_config(path)
    assert "\n" not in str(exc.value)


def test_meanstd_lengths_are_checked_against_bands():
    with pytest.raises(ConfigError, match=r"mean has 5 values for 3 bands"):
        _cfg(
            "data.bands=[1,2,3]",
            "data.normalization.kind=meanstd",
            "data.normalization.mean=[1,2,3,4,5]",
            "data.normalization.std=[1,1,1,1,1]",
        )
    cfg = _cfg(
        "data.bands=[1,2,3]",
        "data.normalization.kind=meanstd",
        "data.normalization.mean=[1,2,3]",
        "data.normalization.std=[2,2,2]",
    )
    assert cfg.description().normalization.mean == (1.0, 2.0, 3.0)


def test_flair_preset_picks_statistics_of_the_selected_bands():
    desc = _cfg("data.bands=[4,1]").description()
    assert desc.bands == ("NIR", "R")
    assert desc.normalization.mean == (106.38, 105.08)
    assert desc.normalization.std == (39.69, 52.17)
    with pytest.raises(ConfigError, match="covers FLAIR bands 1-5"):
        _cfg("data.bands=[1,6]")


def test_scale_divisor_follows_the_input_dtype():
    desc = _cfg("data.input_dtype=uint16", "data.normalization.kind=scale").description()
    assert desc.normalization.max_value == 65535.0


def test_mixed_precision_is_rejected_without_a_gpu_accelerator():
    with pytest.raises(ConfigError, match=r"precision '16-mixed' needs a GPU"):
        _cfg("trainer.precision=16-mixed")
    with pytest.raises(ConfigError, match="needs a GPU"):
        _cfg("trainer.precision=bf16-mixed", "trainer.accelerator=cpu")
    assert _cfg("trainer.precision=16-mixed", "trainer.accelerator=gpu").trainer.precision == "16-mixed"


def test_custom_class_table_follows_codes_not_file_order(tmp_path):
    text = """
data:
  train_csv: t.csv
  val_csv: v.csv
  classes:
    3: {name: water}
    1: {name: building, color: "#ff0000"}
    2: {name: road, active: false}
loss:
  class_weights: {3: 2.5}
"""
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    cfg, _ = load_train_config(path)
    desc = cfg.description()
    assert [c.code for c in desc.classes] == [1, 2, 3]
    assert [c.name for c in desc.classes] == ["building", "road", "water"]
    assert desc.active_mask == (True, False, True)
    assert cfg.logit_weights() == [1.0, 0.0, 2.5]


def test_zero_weight_makes_a_class_inactive_and_unknown_codes_are_errors():
    cfg = _cfg("data.classes=flair19", "loss.class_weights={19: 0}")
    assert [c.code for c in cfg.description().classes if not c.active] == [19]
    with pytest.raises(ConfigError, match=r"codes \[42\] that are not in data.classes"):
        _cfg("loss.class_weights={42: 0}")


def test_ignore_index_cannot_collide_with_a_logit():
    with pytest.raises(ConfigError, match="would be read as logit 0"):
        _cfg("data.ignore_index=0")
    assert _cfg("data.ignore_index=255").data.ignore_index == 255


def test_metadata_needs_the_aerial_json():
    with pytest.raises(ConfigError, match=r"data.aerial_json is not set"):
        _cfg("model.use_metadata=true")
    desc = _cfg("model.use_metadata=true", "data.aerial_json=/d/a.json").description()
    assert desc.metadata is not None and desc.metadata.dim > 0


def test_tile_size_must_fit_the_encoder_stride():
    with pytest.raises(ConfigError, match="multiple of the network's output stride 32"):
        _cfg("model.tile_size=100").description()


def test_sample_yaml_matches_the_builtin_sample_settings():
    raw = yaml.safe_load((REPO / "configs" / "train-sample.yaml").read_text(encoding="utf-8"))
    from_yaml = _cfg(base=raw)
    builtin = _cfg(base=sample_config_base())
    assert from_yaml == builtin
    desc = builtin.description()
    assert [c.code for c in desc.classes if c.active] == [1, 2, 3, 4, 5, 6, 7, 10, 11]


# ---------------------------------------------------------------------------------------------- IGN

IGN_YAML = """
paths:
    out_folder: 'out'
    out_model_name: 'my_model'
    train_csv: 'csv/train.csv'
    val_csv: 'csv/val.csv'
    test_csv: 'csv/test.csv'
    ckpt_model_path: ""
    path_metadata_aerial: '../flair_aerial_metadata.json'
tasks:
    train: True
    train_tasks:
        init_weights_only_from_ckpt: False
        resume_training_from_ckpt: False
    predict: True
    metrics: True
    delete_preds: True
model_framework:
    model_provider: SegmentationModelsPytorch
    HuggingFace:
        org_model: openmmlab/upernet-swin-small
    SegmentationModelsPytorch:
        encoder_decoder: tu-convnext_tiny_unet
use_augmentation: True
use_metadata: False
channels: [1,2,3]
norm_type: custom
norm_means: [105.08,110.87,101.82]
norm_stds: [52.17,45.38,44]
seed: 2022
batch_size: 5
learning_rate: 0.02
num_epochs: 3
use_weights: True
classes:
    3:  [2, 'impervious surface']
    1:  [1, 'building']
    19: [0, 'other']
    2:  [1, 'pervious surface']
georeferencing_output : True
accelerator: cpu
num_nodes: 1
gpus_per_node: 1
strategy: 'auto'
num_workers: 10
ckpt_save_also_last: True
ckpt_verbose: False
ckpt_weights_only: False
ckpt_monitor: val_loss
ckpt_monitor_mode: min
ckpt_earlystopping_patience: 30
cp_csv_and_conf_to_output: True
enable_progress_bar: True
progress_rate: 10
"""


def _ign(tmp_path, text=IGN_YAML):
    path = tmp_path / "flair-1-config.yaml"
    path.write_text(text, encoding="utf-8")
    return load_train_config(path)


def test_ign_config_is_mapped(tmp_path):
    cfg, _notes = _ign(tmp_path)
    assert cfg.data.train_csv == (tmp_path / "csv/train.csv").resolve()
    assert cfg.data.test_csv == (tmp_path / "csv/test.csv").resolve()
    assert (cfg.tasks.train, cfg.tasks.predict, cfg.tasks.metrics, cfg.tasks.delete_preds) == (True,) * 4
    assert cfg.tasks.georeferenced and cfg.tasks.checkpoint is None
    assert cfg.data.bands == (1, 2, 3)
    assert (cfg.model.arch, cfg.model.encoder) == ("unet", "tu-convnext_tiny")  # split on the LAST "_"
    assert (cfg.optim.optimizer, cfg.optim.lr, cfg.optim.momentum, cfg.optim.epochs) == ("sgd", 0.02, 0.0, 3)
    assert cfg.optim.batch_size == 5 and cfg.optim.scheduler == "plateau"
    assert (cfg.checkpoint.monitor, cfg.checkpoint.resolved_mode) == ("val_loss", "min")
    assert cfg.checkpoint.early_stopping_patience == 30
    assert (cfg.trainer.accelerator, cfg.trainer.devices, cfg.num_workers) == ("cpu", 1, 10)
    assert cfg.logging.out_dir == (tmp_path / "out" / "my_model").resolve()
    desc = cfg.description()
    assert desc.normalization.mean == (105.08, 110.87, 101.82)


def test_ign_classes_are_keyed_by_code_and_weight_zero_is_inactive(tmp_path):
    cfg, _ = _ign(tmp_path)
    desc = cfg.description()
    assert [(c.code, c.name, c.active) for c in desc.classes] == [
        (1, "building", True),
        (2, "pervious surface", True),
        (3, "impervious surface", True),
        (19, "other", False),
    ]
    assert cfg.logit_weights() == [1.0, 1.0, 2.0, 0.0]


def test_ign_unsupported_keys_are_reported(tmp_path):
    _, notes = _ign(tmp_path)
    text = "\n".join(notes)
    for key in (
        "progress_rate",
        "model_framework.HuggingFace.org_model",
    ):
        assert key in text


def test_ign_huggingface_provider_builds_the_hf_model_asked_for(tmp_path):
    text = IGN_YAML.replace("model_provider: SegmentationModelsPytorch", "model_provider: HuggingFace")
    cfg, notes = _ign(tmp_path, text)
    assert (cfg.model.provider, cfg.model.hf_model) == ("huggingface", "openmmlab/upernet-swin-small")
    assert any("encoder_decoder" in n and "ignored" in n for n in notes)
    arch = cfg.description().architecture
    assert (arch.provider, arch.arch, arch.encoder) == ("huggingface", "upernet", "swin-small")


def test_ign_unknown_huggingface_model_is_one_line_listing_known_names(tmp_path):
    text = IGN_YAML.replace("model_provider: SegmentationModelsPytorch", "model_provider: HuggingFace")
    text = text.replace("openmmlab/upernet-swin-small", "facebook/mask2former-swin-tiny")
    with pytest.raises(ConfigError, match=r"'facebook/mask2former-swin-tiny'.*known: .*nvidia/mit-b0") as err:
        _ign(tmp_path, text)
    assert "\n" not in str(err.value)


def test_ign_unknown_key_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['use_wieghts'\]"):
        _ign(tmp_path, IGN_YAML + "use_wieghts: True\n")


def test_ign_norm_lengths_are_checked_against_channels(tmp_path):
    with pytest.raises(ConfigError, match="mean has 3 values for 5 bands"):
        _ign(tmp_path, IGN_YAML.replace("channels: [1,2,3]", "channels: [1,2,3,4,5]"))


def test_ign_resume_needs_a_checkpoint_path():
    raw = yaml.safe_load(IGN_YAML)
    raw["tasks"]["train_tasks"]["resume_training_from_ckpt"] = True
    with pytest.raises(ConfigError, match=r"needs paths.ckpt_model_path"):
        convert_ign_train(raw)
    raw["paths"]["ckpt_model_path"] = "ckpt/last.ckpt"
    ours = convert_ign_train(raw).values
    assert ours["checkpoint"]["resume_from"] == "ckpt/last.ckpt"


def test_mixing_ign_and_our_layout_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="mixes IGN keys"):
        _ign(tmp_path, IGN_YAML + "optim: {lr: 0.1}\n")
