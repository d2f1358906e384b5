"""IGN's config files, read as they are: ``flair-1-config.yaml`` (train) and ``flair-1-config-detect.yaml``.

Users migrating from IGN's ``flair`` and ``flair-detect`` commands keep their files. Both adapters are
driven by one table per file (:data:`TRAIN_KEYS`, :data:`DETECT_KEYS`): for every IGN key, the key it
becomes in our schema, the type IGN gives it, and a note. A key the table maps with no note is copied;
a key the table maps with a rule (classes, ``encoder_decoder``, paths, ...) is converted by that rule; a
key the table lists with no target is **reported** (returned as a note), never silently dropped; a key
the table does not list is an error suggesting the closest IGN key.

What IGN's code only pretends to honour is honoured here:

* ``classes: {code: [weight, name]}``: keys are **mask codes** (IGN's code silently uses the dict's
  order instead); a weight of 0 makes the class inactive (ignored by the loss, masked at inference).
* ``encoder_decoder: resnet34_unet`` is split on the **last** underscore, so encoders such as
  ``efficientnet-b0`` or ``tu-convnext_tiny`` work.
* ``norm_means``/``norm_stds`` are checked against ``channels`` (IGN fails later with an IndexError).
* ``tasks``: IGN's whole ``flair --conf`` run (train, predict ``test_csv``, metrics, ``delete_preds``)
  maps to our ``tasks`` section and runs as IGN's control flow does
  (:mod:`flair_deploy.training.pipeline`); ``paths.ckpt_model_path`` is the model to predict with when
  ``tasks.train`` is false, and a checkpoint that cannot be read is an error, not untrained weights.
* detect: IGN writes 0-based class indices and stitches by cropping a margin, so an IGN detect config
  maps to ``indices=True`` and ``stitching="crop"`` with IGN's margin.

The older train layout (``model_architecture``/``encoder_name``, ``tasks.train_load_ckpt``) is accepted.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from flair_deploy.artifacts import Describer, GivenDescription
from flair_deploy.config import KEYS_DOC, closest, validation_message
from flair_deploy.description import (
    FLAIR_CLASSES,
    ArchitectureSpec,
    ClassInfo,
    ModelDescription,
    Normalization,
    NormalizationKind,
    Provenance,
)
from flair_deploy.errors import ConfigError
from flair_deploy.flair_format import FLAIR_BANDS

__all__ = [
    "DETECT_KEYS",
    "TRAIN_KEYS",
    "IgnKey",
    "IgnMapping",
    "convert_ign_detect",
    "convert_ign_train",
    "describe_weights",
    "describer",
    "is_ign_config",
    "is_ign_detect_config",
    "is_ign_train_config",
    "split_encoder_decoder",
    "weights_config",
]


@dataclass(frozen=True, slots=True)
class IgnKey:
    """One row of an IGN config table.

    Attributes:
        ign: The IGN key, dotted for nested sections (``paths.train_csv``).
        ours: The key it becomes in our schema (dotted); None when it is reported, not applied.
        kind: The type IGN gives the value (checked for detect keys; our schema checks train values).
        note: How it is mapped, or why it is not applied (printed for reported keys).
        convert: Turns IGN's value into ours for a plain copy (e.g. ``max(1, n)``).
        rule: The value is converted by a rule of the adapter (not copied), e.g. ``classes``.
        report: For a key with no target: whether a value is worth a note (default: any truthy value,
            since a false or empty option asks for nothing that is dropped).
    """

    ign: str
    ours: str | None
    kind: type | tuple[type, ...] = object
    note: str = ""
    convert: Callable[[Any], Any] | None = None
    rule: bool = False
    report: Callable[[Any], bool] = bool

    @property
    def copied(self) -> bool:
        """Whether the value is copied to :attr:`ours` (through :attr:`convert`)."""
        return self.ours is not None and not self.rule


@dataclass(frozen=True, slots=True)
class IgnMapping:
    """An IGN config turned into our schema's values.

    Attributes:
        values: Nested values for our config class (merge ``--set`` and flags on top).
        notes: One line per IGN key that is reported rather than applied, or applied approximately.
        origins: Our dotted key → the IGN key it came from, so that errors name the key in the file.
    """

    values: dict[str, Any]
    notes: tuple[str, ...] = ()
    origins: dict[str, str] = field(default_factory=dict)


#: Every key of IGN's ``flair-1-config.yaml`` (current and previous layout).
TRAIN_KEYS: tuple[IgnKey, ...] = (
    IgnKey("paths.out_folder", "logging.out_dir", str, "out_dir = out_folder/out_model_name", rule=True),
    IgnKey("paths.out_model_name", "logging.out_dir", str, "out_dir = out_folder/out_model_name", rule=True),
    IgnKey("paths.train_csv", "data.train_csv", str, convert=lambda v: str(v) if v else None),
    IgnKey("paths.val_csv", "data.val_csv", str, convert=lambda v: str(v) if v else None),
    IgnKey("paths.test_csv", "data.test_csv", str, convert=lambda v: str(v) if v else None),
    IgnKey("paths.path_metadata_aerial", "data.aerial_json", str, convert=lambda v: str(v) if v else None),
    IgnKey(
        "paths.ckpt_model_path",
        "checkpoint.resume_from",
        str,
        "checkpoint.resume_from or init_weights_from, as the tasks.train_tasks options say",
        rule=True,
    ),
    IgnKey(
        "tasks.train",
        "tasks.train",
        bool,
        "false: only predict, with paths.ckpt_model_path (tasks.checkpoint)",
        rule=True,
    ),
    IgnKey(
        "tasks.train_tasks.init_weights_only_from_ckpt",
        "checkpoint.init_weights_from",
        bool,
        "true: checkpoint.init_weights_from = paths.ckpt_model_path (fine-tuning)",
        rule=True,
    ),
    IgnKey(
        "tasks.train_tasks.resume_training_from_ckpt",
        "checkpoint.resume_from",
        bool,
        "true: checkpoint.resume_from = paths.ckpt_model_path",
        rule=True,
    ),
    IgnKey(
        "tasks.train_load_ckpt",
        "checkpoint.init_weights_from",
        bool,
        "older layout of init_weights_only_from_ckpt",
        rule=True,
    ),
    IgnKey(
        "tasks.predict",
        "tasks.predict",
        bool,
        "predict paths.test_csv into out_dir/predictions_<out_model_name>/PRED_<name>.tif",
        convert=bool,
    ),
    IgnKey(
        "tasks.metrics",
        "tasks.metrics",
        bool,
        "with tasks.predict: out_dir/metrics/confmat.npy + metrics.json (IGN's) and out_dir/evaluation/",
        rule=True,
    ),
    IgnKey(
        "tasks.delete_preds",
        "tasks.delete_preds",
        bool,
        "with tasks.metrics: the predictions are not kept once scored",
        rule=True,
    ),
    IgnKey(
        "model_framework.model_provider",
        "model.provider",
        str,
        "HuggingFace → huggingface (built offline from org_model), SegmentationModelsPytorch → smp",
        rule=True,
    ),
    IgnKey(
        "model_framework.HuggingFace.org_model",
        "model.hf_model",
        str,
        "used with model_provider HuggingFace; any band count (IGN's HF path takes 3)",
        rule=True,
    ),
    IgnKey(
        "model_framework.SegmentationModelsPytorch.encoder_decoder",
        "model.encoder",
        str,
        "split on the last '_' into model.encoder and model.arch",
        rule=True,
    ),
    IgnKey("model_architecture", "model.arch", str, convert=lambda v: str(v).lower()),
    IgnKey("encoder_name", "model.encoder", str, convert=str),
    IgnKey("use_augmentation", "data.augment", bool, convert=bool),
    IgnKey("use_metadata", "model.use_metadata", bool, convert=bool),
    IgnKey("channels", "data.bands", list),
    IgnKey(
        "norm_type",
        "data.normalization.kind",
        str,
        "custom -> meanstd, scaling -> scale, without -> none",
        rule=True,
    ),
    IgnKey("norm_means", "data.normalization.mean", list, "used with norm_type custom", rule=True),
    IgnKey("norm_stds", "data.normalization.std", list, "used with norm_type custom", rule=True),
    IgnKey("seed", "seed", int),
    IgnKey("batch_size", "optim.batch_size", int),
    IgnKey("learning_rate", "optim.lr", float),
    IgnKey("num_epochs", "optim.epochs", int),
    IgnKey(
        "use_weights",
        "loss.class_weights",
        bool,
        "false: unweighted loss, weight-0 classes stay inactive",
        rule=True,
    ),
    IgnKey("supervision_starts_at_one", None, bool, "not needed: class keys are used as the mask codes"),
    IgnKey("classes", "data.classes", dict, "keyed by mask code; weights -> loss.class_weights", rule=True),
    IgnKey(
        "georeferencing_output",
        "tasks.georeferenced",
        bool,
        "predictions carry the patch's CRS and transform (never its nodata)",
        convert=bool,
    ),
    IgnKey("accelerator", "trainer.accelerator", str),
    IgnKey("num_nodes", "trainer.num_nodes", int),
    IgnKey("gpus_per_node", "trainer.devices", (int, str, list)),
    IgnKey("strategy", "trainer.strategy", str, convert=lambda v: "auto" if v is None else v),
    IgnKey("num_workers", "num_workers", int),
    IgnKey("ckpt_save_also_last", "checkpoint.save_last", bool),
    IgnKey("ckpt_verbose", None, bool, "ignored; checkpoint paths are printed at the end of training"),
    IgnKey("ckpt_weights_only", "checkpoint.weights_only", bool),
    IgnKey("ckpt_monitor", "checkpoint.monitor", str),
    IgnKey("ckpt_monitor_mode", "checkpoint.mode", str),
    IgnKey("ckpt_earlystopping_patience", "checkpoint.early_stopping_patience", int),
    IgnKey(
        "cp_csv_and_conf_to_output",
        None,
        bool,
        "the resolved config is always written beside the checkpoints",
    ),
    IgnKey(
        "enable_progress_bar", None, bool, "use `flair-deploy train --no-progress` to hide the progress bar"
    ),
    IgnKey("progress_rate", None, int, "ignored; the progress bar refreshes itself"),
)

_DESCRIBES = (
    "describes the weights with channels and n_classes (describe_weights): IGN-layout weights that carry "
    "no description; a self-describing model or a --preset must agree with it"
)


def _never(value: Any) -> bool:
    return False


#: Every key of IGN's ``flair-1-config-detect.yaml`` (flair-1 ``main``, ``configs/``).
DETECT_KEYS: tuple[IgnKey, ...] = (
    IgnKey("output_path", "output", str, "output = output_path/output_name(.tif)", rule=True),
    IgnKey("output_name", "output", str, "output = output_path/output_name(.tif)", rule=True),
    IgnKey("input_img_path", "inputs", str, convert=lambda v: (str(v),)),
    IgnKey("channels", "bands", list, convert=tuple),
    IgnKey("bands", "bands", list, convert=tuple),  # the older name of `channels`
    IgnKey("img_pixels_detection", "tile_size", int),
    IgnKey("margin", "margin", int),
    IgnKey(
        "output_type",
        "probabilities",
        str,
        "class_prob: also writes a *_proba.tif (rounded, not truncated)",
        rule=True,
    ),
    IgnKey("n_classes", "expected_classes", int),
    IgnKey("model_weights", "model", str, convert=str),
    IgnKey("model_framework", None, dict, _DESCRIBES, report=_never),
    IgnKey("model_name", None, str, _DESCRIBES, report=_never),
    IgnKey("encoder_name", None, str, _DESCRIBES, report=_never),
    IgnKey("batch_size", "batch_size", int),
    IgnKey("num_worker", "readers", int, convert=lambda v: max(1, v)),
    IgnKey(
        "use_gpu",
        "device",
        bool,
        "true: cuda when a CUDA device is visible, else cpu (as flair-detect)",
        rule=True,
    ),
    IgnKey("write_dataframe", None, bool, "ignored: no slicing GeoPackage is written"),
    IgnKey("norma_task", None, list, _DESCRIBES, report=_never),
)

_TRAIN = {k.ign: k for k in TRAIN_KEYS}
_DETECT = {k.ign: k for k in DETECT_KEYS}
# Top-level keys only IGN's train layout has; our schema has sections instead.
_IGN_TRAIN_MARKERS = frozenset(
    {"model_framework", "norm_type", "channels", "use_weights", "num_epochs", "model_architecture"}
)
_OUR_TRAIN_SECTIONS = frozenset({"data", "model", "optim", "loss", "trainer", "checkpoint", "logging"})
_IGN_DETECT_MARKERS = frozenset({"img_pixels_detection", "input_img_path", "model_weights", "norma_task"})
_FLAIR_COLORS = {code: color for code, _, color in FLAIR_CLASSES}
_NORM_KINDS = {"custom": "meanstd", "scaling": "scale", "without": "none"}


def is_ign_train_config(raw: Mapping[str, Any]) -> bool:
    """Whether a YAML mapping is in IGN's ``flair-1-config.yaml`` layout rather than ours.

    Raises:
        ConfigError: If it mixes both layouts.
    """
    ign = sorted(_IGN_TRAIN_MARKERS & raw.keys())
    ours = sorted(_OUR_TRAIN_SECTIONS & raw.keys())
    if ign and ours:
        raise ConfigError(
            f"config mixes IGN keys {ign} with flair-deploy sections {ours}; use one layout (see {KEYS_DOC})"
        )
    return bool(ign)


def is_ign_detect_config(raw: Mapping[str, Any]) -> bool:
    """Whether a YAML mapping looks like IGN's detect config rather than our detect config."""
    return bool(_IGN_DETECT_MARKERS & raw.keys())


def _flatten(node: Mapping[str, Any], table: Mapping[str, IgnKey], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in node.items():
        dotted = f"{prefix}{key}"
        nested = any(k.startswith(dotted + ".") for k in table)
        # `classes` is a table whose keys are data, not config keys; so is detect's `model_framework`.
        if isinstance(value, Mapping) and value and nested:
            out.update(_flatten(value, table, dotted + "."))
        elif value in (None, {}) and nested:
            continue  # an empty section, e.g. `HuggingFace:` with nothing under it
        else:
            out[dotted] = value
    return out


def _check_known(flat: Mapping[str, Any], table: Mapping[str, IgnKey], source: str, what: str) -> None:
    unknown = sorted(k for k in flat if k not in table)
    if unknown:
        hint = closest(unknown[0], list(table))
        raise ConfigError(
            f"{source}: unknown key(s) {unknown} for an IGN {what}{hint}; the IGN keys flair-deploy reads "
            f"are listed in {KEYS_DOC}"
        )


class _Builder:
    """Collects our values, their origins and the notes while a table is applied."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.values: dict[str, Any] = {}
        self.notes: list[str] = []
        self.origins: dict[str, str] = {}

    def set(self, ours: str, value: Any, ign: str) -> None:
        from flair_deploy.config import set_dotted

        set_dotted(self.values, ours, value)
        self.origins[ours] = f"{self.source}: {ign}"

    def note(self, key: str, why: str) -> None:
        self.notes.append(f"{key}: {why}")

    def mapping(self) -> IgnMapping:
        return IgnMapping(self.values, tuple(self.notes), self.origins)


def _copy_and_report(flat: Mapping[str, Any], table: Mapping[str, IgnKey], b: _Builder) -> None:
    """Apply the table's plain copies and report its unapplied keys (rules are the caller's)."""
    for key, value in flat.items():
        row = table[key]
        if row.ours is None:
            if row.report(value):
                b.note(key, row.note)
        elif row.copied:
            value = row.convert(value) if row.convert is not None else value
            if value is not None:
                b.set(row.ours, value, key)


# ------------------------------------------------------------------------------------------- train


def _classes(raw: Any, *, use_weights: bool, starts_at_one: bool | None, source: str) -> dict[str, Any]:
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError(f"{source}: classes must map mask codes to [weight, name], got {raw!r}")
    table: dict[int, dict[str, Any]] = {}
    weights: dict[int, float] = {}
    for key, value in raw.items():
        try:
            code = int(key)
            weight, name = value
            weight = float(weight)
        except (TypeError, ValueError):
            raise ConfigError(
                f"{source}: classes entry {key!r}: {value!r} is not `code: [weight, name]`, "
                "e.g. `1: [1, 'building']`"
            ) from None
        table[code] = {"name": str(name), "color": _FLAIR_COLORS.get(code, "#808080")}
        # IGN's weight doubles as an on/off switch (its metrics drop weight-0 classes): keep that meaning
        # even without use_weights, where the loss itself is unweighted.
        weights[code] = weight if use_weights else (0.0 if weight == 0 else 1.0)
    if starts_at_one and 0 in table:
        raise ConfigError(
            f"{source}: classes has key 0 but supervision_starts_at_one is true; key the classes by the "
            "values found in the masks (flair-deploy honours the keys as mask codes)"
        )
    return {"classes": table, "weights": weights}


def _path(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None


def split_encoder_decoder(value: Any, *, source: str) -> tuple[str, str]:
    """Split IGN's ``encoder_decoder`` (``resnet34_unet``) on its last ``_`` into (encoder, arch).

    Raises:
        ConfigError: For a value that is not ``<encoder>_<architecture>``.
    """
    encoder, sep, arch = str(value).rpartition("_")
    if not sep or not encoder or not arch:
        raise ConfigError(
            f"{source}: encoder_decoder {value!r} is not `<encoder>_<architecture>`, e.g. resnet34_unet"
        )
    return encoder, arch.lower()


def _tasks(flat: Mapping[str, Any], b: _Builder) -> None:
    """IGN's ``tasks`` block and ``paths.ckpt_model_path``, as IGN's ``main.py`` runs them.

    IGN trains when ``tasks.train`` (starting from ``ckpt_model_path``'s weights with
    ``init_weights_only_from_ckpt``, or continuing its full training state with
    ``resume_training_from_ckpt``; with both, Lightning's resume wins), then predicts ``test_csv`` when
    ``tasks.predict`` (with the best checkpoint after training, else with ``ckpt_model_path``), scores
    the predictions only inside predict when ``tasks.metrics``, and deletes them after scoring when
    ``delete_preds``. Options IGN's control flow never reaches are reported, not applied.
    """
    ckpt = _path(flat.get("paths.ckpt_model_path"))
    train = bool(flat.get("tasks.train", True))
    predict = bool(flat.get("tasks.predict", False))
    metrics = bool(flat.get("tasks.metrics", False))
    init = bool(
        flat.get("tasks.train_tasks.init_weights_only_from_ckpt") or flat.get("tasks.train_load_ckpt")
    )
    resume = bool(flat.get("tasks.train_tasks.resume_training_from_ckpt"))
    b.set("tasks.train", train, "tasks.train")
    if not train:
        if init or resume:
            b.note("tasks.train_tasks", "ignored: tasks.train is false (IGN reads them only when training)")
        if predict:
            if ckpt is None:
                raise ConfigError(
                    f"{b.source}: tasks.predict without tasks.train needs paths.ckpt_model_path, the "
                    "model to predict with"
                )
            b.set("tasks.checkpoint", ckpt, "paths.ckpt_model_path")
        elif ckpt is not None:
            b.note("paths.ckpt_model_path", "not used: tasks.train and tasks.predict are false")
    else:
        if (init or resume) and ckpt is None:
            raise ConfigError(f"{b.source}: a tasks.train_tasks option needs paths.ckpt_model_path")
        if resume:
            b.set("checkpoint.resume_from", ckpt, "paths.ckpt_model_path")
            if init:
                b.note(
                    "tasks.train_tasks.init_weights_only_from_ckpt",
                    "superseded by resume_training_from_ckpt (as in IGN, the full resume wins)",
                )
        elif init:
            b.set("checkpoint.init_weights_from", ckpt, "paths.ckpt_model_path")
        elif ckpt is not None:
            b.note(
                "paths.ckpt_model_path",
                "not used: with tasks.train, only init_weights_only_from_ckpt / resume_training_from_ckpt "
                "read it (predictions use the run's best checkpoint)",
            )
    # IGN computes metrics only inside predict, and deletes predictions only inside metrics.
    if metrics:
        if predict:
            b.set("tasks.metrics", True, "tasks.metrics")
        else:
            b.note("tasks.metrics", "ignored without tasks.predict (IGN scores only inside predict)")
    if flat.get("tasks.delete_preds"):
        if predict and metrics:
            b.set("tasks.delete_preds", True, "tasks.delete_preds")
        elif predict:
            b.note("tasks.delete_preds", "ignored without tasks.metrics (IGN deletes only after scoring)")


def _hf_org_model(provider: Any, org_model: Any, source: str) -> str | None:
    """Check IGN's ``model_framework.model_provider``; return ``org_model`` when it is HuggingFace.

    Raises:
        ConfigError: For another provider, or HuggingFace with an empty ``org_model``.
    """
    if provider not in (None, "SegmentationModelsPytorch", "HuggingFace"):
        raise ConfigError(
            f"{source}: model_framework.model_provider {provider!r} is not SegmentationModelsPytorch "
            "or HuggingFace"
        )
    if provider != "HuggingFace":
        return None
    if not org_model:
        raise ConfigError(
            f"{source}: model_framework.model_provider is HuggingFace but "
            "model_framework.HuggingFace.org_model is empty; name the model, e.g. nvidia/mit-b0"
        )
    return str(org_model)


def convert_ign_train(raw: Mapping[str, Any], *, source: str = "IGN config") -> IgnMapping:
    """Map an IGN ``flair-1-config.yaml`` mapping onto :class:`~flair_deploy.training.config.TrainConfig`.

    Args:
        raw: The parsed YAML.
        source: Name of the file, for messages.

    Returns:
        Nested values (paths as written, still relative to the file), a note per IGN key that is not
        acted upon, and the IGN key behind each of our keys.

    Raises:
        ConfigError: For a key IGN's config does not have, or a value that cannot be mapped.
    """
    flat = _flatten(raw, _TRAIN)
    _check_known(flat, _TRAIN, source, "flair-1-config.yaml")
    b = _Builder(source)
    # IGN trains with plain SGD and ReduceLROnPlateau(factor 0.5, patience 10) on the monitor.
    b.values["optim"] = {"optimizer": "sgd", "momentum": 0.0, "weight_decay": 0.0, "scheduler": "plateau"}
    _copy_and_report(flat, _TRAIN, b)

    # ---- rules: output folder, checkpoints
    folder, name = _path(flat.get("paths.out_folder")), _path(flat.get("paths.out_model_name"))
    if folder or name:
        b.set("logging.out_dir", str(Path(folder or ".") / (name or "")), "paths.out_folder/out_model_name")
    _tasks(flat, b)

    # ---- rules: model
    enc_dec = flat.get("model_framework.SegmentationModelsPytorch.encoder_decoder")
    org = _hf_org_model(
        flat.get("model_framework.model_provider"), flat.get("model_framework.HuggingFace.org_model"), source
    )
    if org is not None:
        from flair_deploy.hf_models import hf_variant

        hf_variant(org, source=f"{source}: model_framework.HuggingFace.org_model")
        b.set("model.provider", "huggingface", "model_framework.model_provider")
        b.set("model.hf_model", org, "model_framework.HuggingFace.org_model")
        if enc_dec:
            b.note(
                "model_framework.SegmentationModelsPytorch.encoder_decoder",
                f"ignored: model_provider is HuggingFace ({org})",
            )
        enc_dec = None
    elif flat.get("model_framework.HuggingFace.org_model"):
        b.note(
            "model_framework.HuggingFace.org_model", "ignored: model_provider is SegmentationModelsPytorch"
        )
    if enc_dec:
        encoder, arch = split_encoder_decoder(enc_dec, source=source)
        key = "model_framework.SegmentationModelsPytorch.encoder_decoder"
        b.set("model.encoder", encoder, key)
        b.set("model.arch", arch, key)

    # ---- rules: normalisation and classes
    norm_type = flat.get("norm_type")
    if norm_type is not None:
        if norm_type not in _NORM_KINDS:
            raise ConfigError(
                f"{source}: norm_type {norm_type!r} is not one of {sorted(_NORM_KINDS)}"
                f"{closest(str(norm_type), list(_NORM_KINDS))}"
            )
        b.set("data.normalization.kind", _NORM_KINDS[norm_type], "norm_type")
        if norm_type == "custom":
            b.set("data.normalization.mean", flat.get("norm_means"), "norm_means")
            b.set("data.normalization.std", flat.get("norm_stds"), "norm_stds")
        elif "norm_means" in flat or "norm_stds" in flat:
            b.note("norm_means/norm_stds", f"ignored with norm_type {norm_type!r}")
    if "classes" in flat:
        use_weights = bool(flat.get("use_weights", True))
        table = _classes(
            flat["classes"],
            use_weights=use_weights,
            starts_at_one=flat.get("supervision_starts_at_one"),
            source=source,
        )
        b.set("data.classes", table["classes"], "classes")
        b.set("loss.class_weights", table["weights"], "classes")
        if not use_weights:
            b.note("use_weights", "false: the loss is unweighted, but weight-0 classes stay inactive")
    return b.mapping()


# ------------------------------------------------------------------------------------------ detect


def convert_ign_detect(raw: Mapping[str, Any], *, source: str = "IGN detect config") -> IgnMapping:
    """Map IGN's ``flair-1-config-detect.yaml`` onto :class:`~flair_deploy.inference.config.DetectConfig`.

    Args:
        raw: The parsed YAML.
        source: Name of the file, for messages.

    Returns:
        The values, a note for each key that is ignored or approximated, and the origins of our keys.

    Raises:
        ConfigError: For a key IGN does not have, or a value of the wrong type.
    """
    flat = _flatten(raw, _DETECT)
    _check_known(flat, _DETECT, source, "flair-detect config")
    for key, value in flat.items():
        kind = _DETECT[key].kind
        if value is not None and not isinstance(value, kind):
            name = getattr(kind, "__name__", str(kind))
            raise ConfigError(f"{source}: {key}={value!r} should be a {name}")
    b = _Builder(source)
    b.values.update(stitching="crop", indices=True)
    b.notes.append("IGN semantics: 0-based class indices (indices=True) and margin cropping (stitching=crop)")
    _copy_and_report(flat, _DETECT, b)

    out_path, out_name = flat.get("output_path"), flat.get("output_name")
    if out_path is not None:
        name = out_name or "prediction"
        out = Path(out_path) / (name if name.endswith((".tif", ".tiff")) else f"{name}.tif")
        b.set("output", str(out), "output_path/output_name")
    out_type = flat.get("output_type")
    if out_type not in (None, "argmax", "class_prob"):
        raise ConfigError(f"{source}: output_type={out_type!r}; IGN accepts argmax or class_prob")
    if out_type == "class_prob":
        b.set("probabilities", True, "output_type")
        b.note("output_type=class_prob", _DETECT["output_type"].note)
    weights = flat.get("model_weights")
    if weights is not None and not str(weights).endswith((".onnx", ".engine", ".plan")):
        b.notes.append(
            "model_weights are IGN weights without a description: this config describes them (channels, "
            "norma_task, n_classes, model_framework), or give --preset"
        )
    if flat.get("use_gpu"):
        device = "cuda" if _cuda_available() else "cpu"
        b.set("device", device, "use_gpu")
        if device == "cpu":
            b.notes.append(
                "use_gpu=true but no CUDA device is visible: running on the CPU (as flair-detect does)"
            )
    return b.mapping()


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # the torch-free runtime install
        return False
    return bool(torch.cuda.is_available())


# ------------------------------------------------------------------------------ describing weights
#: Description field → the IGN train-config key that sets it (compared with a self-describing model).
_TRAIN_DESCRIBES = {
    "bands": "channels",
    "classes": "classes",
    "normalization": "norm_type",
    "architecture": "model_framework",
}


def is_ign_config(raw: Mapping[str, Any]) -> bool:
    """Whether a YAML mapping is one of IGN's configs (train or detect layout)."""
    return is_ign_train_config(raw) or is_ign_detect_config(raw)


def describe_weights(path: Path) -> GivenDescription:
    """Describe weights that carry no description (IGN's) with IGN's train or detect config.

    * ``flair-1-config.yaml``: ``channels``, ``norm_type``/``norm_means``/``norm_stds``, the ``classes``
      table (weight 0: an inactive logit), ``model_framework`` and ``use_metadata``, read as
      ``flair-deploy train`` reads them. Its data paths are not read.
    * ``flair-1-config-detect.yaml``: ``channels``, ``norma_task``, ``n_classes`` (logit *i* is FLAIR
      code *i* + 1, named after FLAIR's nomenclature; the train config's ``classes`` table names a
      custom nomenclature), ``model_framework`` (or the older ``model_name``/``encoder_name``) and
      ``img_pixels_detection``.

    Args:
        path: The YAML file.

    Returns:
        The description, with the IGN key behind each described field (for messages that name it).

    Raises:
        ConfigError: If the file is no IGN config, or a key that describes the weights is missing or
            invalid (one line naming the key and its value).
    """
    from flair_deploy.config import read_yaml

    raw = read_yaml(path)
    source = str(path)
    # Detect first: IGN's detect config shares train-layout keys (channels, model_framework).
    if is_ign_detect_config(raw):
        return _describe_detect(raw, source)
    if is_ign_train_config(raw):
        return _describe_train(raw, source)
    raise ConfigError(
        f"{source} is not an IGN config: it has none of IGN's keys "
        f"{sorted(_IGN_TRAIN_MARKERS | _IGN_DETECT_MARKERS)}; give IGN's flair-1-config.yaml or "
        "flair-1-config-detect.yaml, or describe the weights with --preset"
    )


def weights_config(
    path: Path | None,
    *,
    command: str,
    bands_key: str | None = None,
    raw: Mapping[str, Any] | None = None,
) -> IgnMapping | None:
    """Return the values that make IGN's config *path* describe a command's weights, or None.

    ``export``, ``evaluate`` and ``benchmark`` take IGN's train or detect config with ``--config``
    to describe IGN-layout weights (``ign_config``); the config's other keys are for IGN's training
    or detection and are reported, not applied. None when *path* is not an IGN config.

    Args:
        path: The ``--config`` file, or None.
        command: The command, for the note.
        bands_key: The command's key of 1-based raster bands to read (``bands``), set from the
            config's ``channels`` so the bands read are the bands the weights were trained on.
        raw: The file's YAML when the caller has already read it.

    Raises:
        ConfigError: If the file cannot be read as YAML.
    """
    from flair_deploy.config import read_yaml

    if path is None:
        return None
    if raw is None:
        raw = read_yaml(path)
    if not is_ign_config(raw):
        return None
    note = (
        "IGN config: it describes the weights (channels, normalisation, classes, model_framework); "
        f"its other keys are not used by {command}"
    )
    values: dict[str, Any] = {"ign_config": str(path)}
    origins = {"ign_config": str(path)}
    channels = raw.get("channels", raw.get("bands"))
    if bands_key is not None and channels is not None:
        values[bands_key], origins[bands_key] = channels, f"{path}: channels"
    return IgnMapping(values, (note,), origins)


def describer(preset: str | None, ign_config: Path | None) -> Describer | None:
    """Return what describes weights that carry no description: a preset, an IGN config, or None.

    Given both, the config must agree with the preset on what it sets (bands, classes,
    normalisation, architecture); the preset then describes the weights.

    Raises:
        ConfigError: If the config disagrees with the preset (one line naming the key and value).
        CheckpointError: For an unknown preset.
    """
    if ign_config is None:
        return preset
    given = describe_weights(ign_config)
    if preset is None:
        return given
    clash = given.conflict(GivenDescription.from_preset(preset).description)
    if clash is not None:
        clash = clash.replace("the model has", f"--preset {preset} has")
        raise ConfigError(f"{clash}; give only one of them, or correct the config")
    return preset


def _describe_train(raw: Mapping[str, Any], source: str) -> GivenDescription:
    from flair_deploy.config import build_config
    from flair_deploy.training.config import TrainConfig

    mapping = convert_ign_train(raw, source=source)
    data = dict(mapping.values.get("data", {}))
    model = dict(mapping.values.get("model", {}))
    # Only what describes the network is used: the data files need not exist, nor be given.
    data["train_csv"] = data.get("train_csv") or "unused"
    data["val_csv"] = data.get("val_csv") or "unused"
    if model.get("use_metadata") and not data.get("aerial_json"):
        data["aerial_json"] = "unused"
    weights = mapping.values.get("loss", {}).get("class_weights")
    values = {"data": data, "model": model, "loss": {"class_weights": weights}}
    cfg = build_config(TrainConfig, values, (), None, source=source, origins=mapping.origins)
    flat = _flatten(raw, _TRAIN)
    present = {
        "bands": "channels" in flat,
        "classes": "classes" in flat,
        "normalization": "norm_type" in flat,
        "architecture": any(k.startswith(("model_framework.", "model_arch")) for k in flat),
    }
    keys = {f: f"{source}: {k}" for f, k in _TRAIN_DESCRIBES.items() if present[f]}
    return GivenDescription(cfg.description(), source, keys)


def _describe_detect(raw: Mapping[str, Any], source: str) -> GivenDescription:
    convert_ign_detect(raw, source=source)  # validates every key and type once
    flat = _flatten(raw, _DETECT)
    channel_key = "channels" if "channels" in flat else "bands"
    channels = flat.get(channel_key)
    if not channels or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in channels):
        raise ConfigError(
            f"{source}: channels={channels!r}; IGN's detect config lists the 1-based bands the weights "
            "take, e.g. channels: [1, 2, 3, 4, 5]"
        )
    bands = tuple(FLAIR_BANDS[c - 1] if c <= len(FLAIR_BANDS) else f"B{c}" for c in channels)
    n_classes = flat.get("n_classes")
    if n_classes is None:
        raise ConfigError(f"{source}: n_classes is not set; give the number of logits of the weights")
    tile = flat.get("img_pixels_detection", 512)
    architecture, arch_key = _detect_architecture(flat, source)
    try:
        description = ModelDescription(
            name=Path(str(flat.get("model_weights") or "ign-weights")).stem,
            bands=bands,
            normalization=_detect_normalization(flat.get("norma_task"), len(bands), source),
            classes=_numbered_classes(n_classes),
            tile_size=tile,
            overlap=tile // 4,
            architecture=architecture,
            provenance=Provenance(source=source),
        )
    except ValidationError as exc:
        raise ConfigError(validation_message(exc, source=f"{source} (the weights it describes)")) from None
    keys = {
        "bands": f"{source}: {channel_key}",
        "classes": f"{source}: n_classes",
        "normalization": f"{source}: norma_task",
        "architecture": f"{source}: {arch_key}",
    }
    return GivenDescription(description, source, keys)


def _numbered_classes(n: int) -> tuple[ClassInfo, ...]:
    """Logit *i* is mask code *i* + 1 (IGN's supervision starts at one), named as FLAIR's nomenclature."""
    if not 2 <= n <= 254:
        raise ConfigError(f"n_classes={n}; give the number of logits of the weights, 2 to 254")
    return tuple(
        ClassInfo(code=c, name=name, color=color) for c, name, color in map(_flair_class, range(1, n + 1))
    )


def _flair_class(code: int) -> tuple[int, str, str]:
    for c, name, color in FLAIR_CLASSES:
        if c == code:
            return c, name, color
    return code, f"class {code}", "#808080"


def _detect_normalization(task: Any, n_bands: int, source: str) -> Normalization:
    if not isinstance(task, list) or not task or not isinstance(task[0], Mapping):
        raise ConfigError(
            f"{source}: norma_task={task!r}; IGN's detect config gives a list with one entry, e.g. "
            "norma_task: [{norm_type: custom, norm_means: [...], norm_stds: [...]}]"
        )
    entry = task[0]
    kind = entry.get("norm_type")
    if kind == "custom":
        stats: dict[str, list[Any]] = {}
        for key in ("norm_means", "norm_stds"):
            values = entry.get(key)
            if not isinstance(values, list) or len(values) != n_bands:
                count = len(values) if isinstance(values, list) else values
                raise ConfigError(
                    f"{source}: norma_task[0].{key} has {count} values for {n_bands} channels; give one "
                    "per channel"
                )
            stats[key] = values
        try:
            return Normalization(
                kind=NormalizationKind.MEANSTD,
                mean=tuple(float(v) for v in stats["norm_means"]),
                std=tuple(float(v) for v in stats["norm_stds"]),
            )
        except (ValidationError, TypeError, ValueError) as exc:
            raise ConfigError(f"{source}: norma_task[0]: {exc}".splitlines()[0]) from None
    if kind == "scaling":
        return Normalization(kind=NormalizationKind.SCALE)
    if kind == "without":
        return Normalization(kind=NormalizationKind.NONE)
    raise ConfigError(
        f"{source}: norma_task[0].norm_type={kind!r}; IGN's values are custom, scaling or without"
    )


def _detect_architecture(flat: Mapping[str, Any], source: str) -> tuple[ArchitectureSpec, str]:
    framework = flat.get("model_framework") or {}
    if not isinstance(framework, Mapping):
        raise ConfigError(f"{source}: model_framework={framework!r} should be a mapping")
    org = _hf_org_model(
        framework.get("model_provider"), (framework.get("HuggingFace") or {}).get("org_model"), source
    )
    if org is not None:
        from flair_deploy.hf_models import hf_architecture

        key = "model_framework.HuggingFace.org_model"
        return hf_architecture(org, source=f"{source}: {key}"), key
    key = "model_framework.SegmentationModelsPytorch.encoder_decoder"
    enc_dec = (framework.get("SegmentationModelsPytorch") or {}).get("encoder_decoder")
    if enc_dec:
        encoder, arch = split_encoder_decoder(enc_dec, source=source)
        return ArchitectureSpec(arch=arch, encoder=encoder), key
    if flat.get("model_name") and flat.get("encoder_name"):
        arch_spec = ArchitectureSpec(arch=str(flat["model_name"]).lower(), encoder=str(flat["encoder_name"]))
        return arch_spec, "model_name/encoder_name"
    raise ConfigError(
        f"{source}: {key} is not set; give the weights' architecture, e.g. encoder_decoder: resnet34_unet"
    )
