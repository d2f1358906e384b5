"""IGN's config files read as they are: every key mapped or reported, unknown keys suggest the right one."""

from pathlib import Path

import pytest
import yaml

from flair_deploy.errors import ConfigError
from flair_deploy.ign import (
    DETECT_KEYS,
    TRAIN_KEYS,
    convert_ign_detect,
    convert_ign_train,
    is_ign_detect_config,
    is_ign_train_config,
)

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = {
    "train": (REPO / "configs" / "ign" / "flair-1-config.yaml", TRAIN_KEYS, convert_ign_train),
    "detect": (REPO / "configs" / "ign" / "flair-1-config-detect.yaml", DETECT_KEYS, convert_ign_detect),
}


def _leaves(node, table, prefix=""):
    """The dotted keys of a YAML mapping as the adapters see them (sections IGN nests are descended)."""
    for key, value in node.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and any(k.startswith(dotted + ".") for k in table):
            yield from _leaves(value, table, dotted + ".")
        else:
            yield dotted, value


@pytest.mark.parametrize("kind", ["train", "detect"])
def test_every_key_of_the_bundled_example_is_mapped_or_reported(kind):
    path, rows, convert = EXAMPLES[kind]
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    table = {r.ign: r for r in rows}
    mapping = convert(raw, source=path.name)
    notes = "\n".join(mapping.notes)
    for key, value in _leaves(raw, table):
        if value is None and any(k.startswith(key + ".") for k in table):
            continue  # an empty section
        assert key in table, f"{key} of {path.name} is not in the table"
        row = table[key]
        if row.ours is None:
            assert not row.report(value) or key in notes, f"{key} is neither applied nor reported"
        elif row.copied and value not in (None, ""):
            assert row.ours in mapping.origins, f"{key} is not copied to {row.ours}"


@pytest.mark.parametrize("rows", [TRAIN_KEYS, DETECT_KEYS])
def test_the_tables_list_each_key_once_with_a_reason_for_what_is_not_applied(rows):
    keys = [r.ign for r in rows]
    assert len(keys) == len(set(keys))
    assert all(r.note for r in rows if r.ours is None or r.rule)


def test_every_ign_key_is_documented():
    readme = (REPO / "configs" / "README.md").read_text(encoding="utf-8")
    for row in (*TRAIN_KEYS, *DETECT_KEYS):
        assert row.ign.rsplit(".", 1)[-1] in readme, row.ign


def test_unknown_key_suggests_the_closest_ign_key():
    with pytest.raises(
        ConfigError, match=r"\['use_wieghts'\].*did you mean 'use_weights'\?.*configs/README.md"
    ):
        convert_ign_train({"channels": [1, 2, 3], "use_wieghts": True})
    with pytest.raises(ConfigError, match=r"did you mean 'img_pixels_detection'"):
        convert_ign_detect({"input_img_path": "a.tif", "img_pixel_detection": 512})


def test_detect_maps_ign_semantics_and_reports_the_rest():
    m = convert_ign_detect(
        {
            "output_path": "out",
            "output_name": "zone",
            "input_img_path": "a.tif",
            "channels": [3, 2, 1],
            "img_pixels_detection": 256,
            "margin": 32,
            "output_type": "class_prob",
            "num_worker": 0,
            "write_dataframe": True,
            "model_name": "unet",
        }
    )
    v = m.values
    assert (v["stitching"], v["indices"], v["probabilities"]) == ("crop", True, True)
    assert v["output"] == str(Path("out") / "zone.tif") and v["inputs"] == ("a.tif",)
    assert (v["bands"], v["tile_size"], v["margin"], v["readers"]) == ((3, 2, 1), 256, 32, 1)
    text = "\n".join(m.notes)
    assert "write_dataframe" in text and "model_name" not in text  # model_name describes the weights
    assert m.origins["tile_size"].endswith("img_pixels_detection")


def test_detect_values_of_the_wrong_type_name_the_key():
    with pytest.raises(ConfigError, match=r"img_pixels_detection='512px' should be a int"):
        convert_ign_detect({"img_pixels_detection": "512px"})
    with pytest.raises(ConfigError, match="argmax or class_prob"):
        convert_ign_detect({"input_img_path": "a.tif", "output_type": "probas"})


def test_train_errors_name_the_ign_key(tmp_path):
    from flair_deploy.training.config import load_train_config

    path = tmp_path / "flair-1-config.yaml"
    path.write_text(
        "paths: {train_csv: t.csv, val_csv: v.csv}\nchannels: [1, 2, 3]\nnorm_type: scaling\nlearning_rate: -1\n",
        encoding="utf-8",
    )
    with pytest.raises(
        ConfigError, match=r"flair-1-config.yaml: learning_rate: input should be greater than 0 \(got -1\)"
    ):
        load_train_config(path)


def test_layout_detection():
    assert is_ign_train_config({"channels": [1], "num_epochs": 2})
    assert not is_ign_train_config({"data": {}})
    assert is_ign_detect_config({"img_pixels_detection": 512})
    assert not is_ign_detect_config({"inputs": ["a.tif"], "output": "m.tif"})
    with pytest.raises(ConfigError, match="mixes IGN keys"):
        is_ign_train_config({"channels": [1], "optim": {}})


# ------------------------------------------------------------------------------ describing weights
def _yaml(tmp_path, text: str, name: str = "c.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


DETECT = """
input_img_path: a.tif
channels: [1, 2, 3, 4]
img_pixels_detection: 256
n_classes: 13
model_weights: w.pth
model_framework:
    model_provider: SegmentationModelsPytorch
    SegmentationModelsPytorch:
        encoder_decoder: tu-convnext_tiny_unet
norma_task:
  - norm_type: custom
    norm_means: [1.0, 2.0, 3.0, 4.0]
    norm_stds: [5.0, 6.0, 7.0, 8.0]
"""


def test_a_detect_config_describes_its_weights(tmp_path):
    from flair_deploy.ign import describe_weights

    given = describe_weights(_yaml(tmp_path, DETECT))
    d = given.description
    assert d.bands == ("R", "G", "B", "NIR") and d.tile_size == 256
    assert (d.architecture.arch, d.architecture.encoder) == ("unet", "tu-convnext_tiny")
    assert list(d.normalization.mean) == [1.0, 2.0, 3.0, 4.0] and list(d.normalization.std) == [5, 6, 7, 8]
    # n_classes: logit i is FLAIR code i + 1, with FLAIR's names
    assert [c.code for c in d.classes] == list(range(1, 14)) and d.classes[0].name == "building"
    assert given.keys["classes"].endswith("n_classes") and given.keys["bands"].endswith("channels")


def test_a_train_config_describes_its_weights_with_its_class_table(tmp_path):
    from flair_deploy.ign import describe_weights

    classes = "\n".join(f"    {c}: [{0 if c in (3, 9) else 1}, 'c{c}']" for c in (9, 1, 3, 2, 4))
    path = _yaml(
        tmp_path,
        "channels: [1, 2, 3]\nnorm_type: scaling\nuse_weights: true\n"
        "model_framework:\n  model_provider: SegmentationModelsPytorch\n"
        f"  SegmentationModelsPytorch:\n    encoder_decoder: resnet18_unet\nclasses:\n{classes}\n",
    )
    d = describe_weights(path).description
    assert [c.code for c in d.classes] == [1, 2, 3, 4, 9]  # by mask code, whatever the file's order
    assert [c.active for c in d.classes] == [True, True, False, True, False]  # weight 0: inactive
    assert d.normalization.kind.value == "scale" and d.bands == ("R", "G", "B")


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (("n_classes: 13\n", ""), "n_classes is not set"),
        (("channels: [1, 2, 3, 4]", "channels: [0, 2]"), "channels=[0, 2]"),
        (("norm_type: custom", "norm_type: zscore"), "norma_task[0].norm_type='zscore'"),
        (("encoder_decoder: tu-convnext_tiny_unet", "encoder_decoder: unet"), "encoder_decoder 'unet'"),
        (("img_pixels_detection: 256", "img_pixels_detection: 100"), "tile_size"),
    ],
)
def test_a_detect_config_that_cannot_describe_weights_is_one_line(tmp_path, edit, needle):
    from flair_deploy.ign import describe_weights

    with pytest.raises(ConfigError) as info:
        describe_weights(_yaml(tmp_path, DETECT.replace(*edit)))
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_a_preset_and_a_config_must_agree(tmp_path):
    from flair_deploy.ign import describer

    preset = "flair-inc-rgbie-15cl-resnet34-unet"
    agreeing = _yaml(
        tmp_path, "\n".join(Path("configs/ign/flair-1-config-detect.yaml").read_text().splitlines())
    )
    assert describer(preset, agreeing) == preset
    with pytest.raises(
        ConfigError, match=r"c\.yaml: channels gives bands \['R', 'G', 'B', 'NIR'\], --preset"
    ):
        describer(preset, _yaml(tmp_path, DETECT))


def test_a_file_that_is_no_ign_config_cannot_describe_weights(tmp_path):
    from flair_deploy.ign import describe_weights

    with pytest.raises(ConfigError, match="is not an IGN config"):
        describe_weights(_yaml(tmp_path, "model: m.onnx\n"))


def test_evaluate_reads_the_bands_the_config_trained_on_and_is_described_by_it(tmp_path):
    from flair_deploy.training.config import load_evaluate_config

    cfg = _yaml(tmp_path, DETECT.replace("[1, 2, 3, 4]", "[4, 1, 2, 3]"))
    flags = {"checkpoint": "w.ckpt", "csv": "t.csv", "out_dir": "out"}
    loaded, notes = load_evaluate_config(cfg, (), flags)
    assert loaded.ign_config == cfg and loaded.bands == (4, 1, 2, 3)
    assert "not used by evaluate" in notes[0]
    assert loaded.describer().description.bands == ("NIR", "R", "G", "B")


def _tasks(**tasks):
    """An IGN train mapping with the given `tasks` block (and `paths.ckpt_model_path` as `ckpt`)."""
    ckpt = tasks.pop("ckpt", "")
    train_tasks = {
        "init_weights_only_from_ckpt": tasks.pop("init", False),
        "resume_training_from_ckpt": tasks.pop("resume", False),
    }
    raw = {
        "paths": {"ckpt_model_path": ckpt},
        "channels": [1, 2, 3],
        "tasks": {**tasks, "train_tasks": train_tasks},
    }
    m = convert_ign_train(raw)
    return m.values.get("tasks", {}), m.values.get("checkpoint", {}), "\n".join(m.notes)


def test_ign_whole_run_tasks_are_mapped():
    tasks, ckpt, notes = _tasks(train=True, predict=True, metrics=True, delete_preds=True)
    assert tasks == {"train": True, "predict": True, "metrics": True, "delete_preds": True}
    assert ckpt == {} and "tasks." not in notes


def test_ign_predict_without_training_reads_ckpt_model_path():
    tasks, ckpt, notes = _tasks(train=False, predict=True, ckpt="w.ckpt", init=True)
    assert tasks["checkpoint"] == "w.ckpt" and tasks["train"] is False
    assert "init_weights_from" not in ckpt and "resume_from" not in ckpt  # IGN reads them only to train
    assert "tasks.train_tasks: ignored: tasks.train is false" in notes
    with pytest.raises(
        ConfigError, match=r"tasks\.predict without tasks\.train needs paths\.ckpt_model_path"
    ):
        _tasks(train=False, predict=True)


def test_ign_init_and_resume_mean_what_ign_does():
    _, ckpt, _ = _tasks(train=True, init=True, ckpt="a.ckpt")
    assert ckpt == {"init_weights_from": "a.ckpt"}  # weights only: fine-tuning
    _, ckpt, notes = _tasks(train=True, init=True, resume=True, ckpt="a.ckpt")
    assert ckpt == {"resume_from": "a.ckpt"}  # IGN loads the weights, then Lightning's resume replaces them
    assert "superseded by resume_training_from_ckpt" in notes
    _, ckpt, notes = _tasks(train=True, predict=True, ckpt="a.ckpt")
    assert ckpt == {} and "paths.ckpt_model_path: not used" in notes  # predictions use the best checkpoint


def test_ign_options_its_control_flow_never_reaches_are_reported_not_applied():
    tasks, _, notes = _tasks(train=True, predict=False, metrics=True, delete_preds=True)
    assert "metrics" not in tasks and "delete_preds" not in tasks
    assert "tasks.metrics: ignored without tasks.predict" in notes
    tasks, _, notes = _tasks(train=True, predict=True, metrics=False, delete_preds=True)
    assert "delete_preds" not in tasks and "tasks.delete_preds: ignored without tasks.metrics" in notes


def test_georeferencing_output_is_applied():
    m = convert_ign_train({"channels": [1], "georeferencing_output": False})
    assert m.values["tasks"]["georeferenced"] is False


def test_a_detect_config_describes_huggingface_weights(tmp_path):
    pytest.importorskip("transformers")
    from flair_deploy.ign import describe_weights

    hf = DETECT.replace("model_provider: SegmentationModelsPytorch", "model_provider: HuggingFace").replace(
        "    SegmentationModelsPytorch:\n        encoder_decoder: tu-convnext_tiny_unet\n",
        "    HuggingFace:\n        org_model: openmmlab/upernet-convnext-tiny\n",
    )
    arch = describe_weights(_yaml(tmp_path, hf)).description.architecture
    assert (arch.provider, arch.arch, arch.hf_model) == (
        "huggingface",
        "upernet",
        "openmmlab/upernet-convnext-tiny",
    )
    with pytest.raises(ConfigError, match="org_model: HuggingFace model 'acme/net' is not one"):
        describe_weights(_yaml(tmp_path, hf.replace("openmmlab/upernet-convnext-tiny", "acme/net")))
