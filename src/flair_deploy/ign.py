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
* detect: IGN writes 0-based class indices and stitches by cropping a margin, so an IGN detect config
  maps to ``indices=True`` and ``stitching="crop"`` with IGN's margin.

The older train layout (``model_architecture``/``encoder_name``, ``tasks.train_load_ckpt``) is accepted.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flair_deploy.config import KEYS_DOC, closest
from flair_deploy.description import FLAIR_CLASSES
from flair_deploy.errors import ConfigError

__all__ = [
    "DETECT_KEYS",
    "TRAIN_KEYS",
    "IgnKey",
    "IgnMapping",
    "convert_ign_detect",
    "convert_ign_train",
    "is_ign_detect_config",
    "is_ign_train_config",
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
        None,
        bool,
        "is false, but `flair-deploy train` always trains",
        report=lambda v: v is False,
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
    IgnKey("tasks.predict", None, bool, "not part of training; use `flair-deploy evaluate --predictions`"),
    IgnKey("tasks.metrics", None, bool, "not part of training; use `flair-deploy evaluate`"),
    IgnKey("tasks.delete_preds", None, bool, "not part of training; use `flair-deploy evaluate`"),
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
        None,
        bool,
        "prediction option; `flair-deploy detect/evaluate` write GeoTIFFs",
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
    IgnKey("model_framework", None, dict, "ignored: the architecture comes from the model or --preset"),
    IgnKey("model_name", None, str, "ignored: the architecture comes from the model or --preset"),
    IgnKey("encoder_name", None, str, "ignored: the architecture comes from the model or --preset"),
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
    IgnKey(
        "norma_task",
        None,
        list,
        "ignored: normalisation comes from the model description (inside the network)",
    ),
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
    ckpt = _path(flat.get("paths.ckpt_model_path"))
    init = bool(
        flat.get("tasks.train_tasks.init_weights_only_from_ckpt") or flat.get("tasks.train_load_ckpt")
    )
    resume = bool(flat.get("tasks.train_tasks.resume_training_from_ckpt"))
    if (init or resume) and ckpt is None:
        raise ConfigError(f"{source}: a tasks.train_tasks option needs paths.ckpt_model_path")
    if resume:
        b.set("checkpoint.resume_from", ckpt, "paths.ckpt_model_path")
    elif init:
        b.set("checkpoint.init_weights_from", ckpt, "paths.ckpt_model_path")
    elif ckpt is not None:
        b.note(
            "paths.ckpt_model_path", "used only with init_weights_only_from_ckpt / resume_training_from_ckpt"
        )

    # ---- rules: model
    provider = flat.get("model_framework.model_provider")
    enc_dec = flat.get("model_framework.SegmentationModelsPytorch.encoder_decoder")
    if provider not in (None, "SegmentationModelsPytorch", "HuggingFace"):
        raise ConfigError(
            f"{source}: model_framework.model_provider {provider!r} is not SegmentationModelsPytorch "
            "or HuggingFace"
        )
    if provider == "HuggingFace":
        from flair_deploy.hf_models import hf_variant

        org = flat.get("model_framework.HuggingFace.org_model")
        if not org:
            raise ConfigError(
                f"{source}: model_framework.model_provider is HuggingFace but "
                "model_framework.HuggingFace.org_model is empty; name the model, e.g. nvidia/mit-b0"
            )
        hf_variant(str(org), source=f"{source}: model_framework.HuggingFace.org_model")
        b.set("model.provider", "huggingface", "model_framework.model_provider")
        b.set("model.hf_model", str(org), "model_framework.HuggingFace.org_model")
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
        encoder, sep, arch = str(enc_dec).rpartition("_")
        if not sep or not encoder or not arch:
            raise ConfigError(
                f"{source}: encoder_decoder {enc_dec!r} is not `<encoder>_<architecture>`, e.g. resnet34_unet"
            )
        key = "model_framework.SegmentationModelsPytorch.encoder_decoder"
        b.set("model.encoder", encoder, key)
        b.set("model.arch", arch.lower(), key)

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
        b.notes.append("model_weights are IGN weights without a description: give --preset")
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
