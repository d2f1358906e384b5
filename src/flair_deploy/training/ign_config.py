"""Read IGN's ``flair-1-config.yaml`` as it is and map it onto our training config.

Users migrating from IGN's ``flair`` command keep their config file: :func:`convert_ign_config` turns
it into our schema's nested dict, honouring what IGN's code only pretends to honour:

* ``classes: {code: [weight, name]}``: keys are **mask codes** (IGN's code silently uses the dict's
  order instead); a weight of 0 makes the class inactive (ignored by the loss, masked at inference).
* ``model_framework.SegmentationModelsPytorch.encoder_decoder: resnet34_unet`` is split on the
  **last** underscore, so encoders such as ``efficientnet-b0`` or ``tu-convnext_tiny`` work.
* ``norm_means``/``norm_stds`` are checked against ``channels`` (IGN fails later with an IndexError).

Keys we understand but do not act on (IGN's HuggingFace provider, prediction and metrics tasks,
``georeferencing_output``, progress options, ...) are returned as notes for the CLI to print; a key
IGN's config does not have is a :class:`~flair_deploy.errors.ConfigError`, as in our own schema.
The older layout (``model_architecture``/``encoder_name``, ``tasks.train_load_ckpt``) is accepted too.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flair_deploy.description import FLAIR_CLASSES
from flair_deploy.errors import ConfigError

__all__ = ["IGN_KEYS", "convert_ign_config", "is_ign_config"]

#: Every key of IGN's ``flair-1-config.yaml`` (current and previous layout), as dotted paths.
IGN_KEYS: frozenset[str] = frozenset(
    {
        "paths.out_folder",
        "paths.out_model_name",
        "paths.train_csv",
        "paths.val_csv",
        "paths.test_csv",
        "paths.ckpt_model_path",
        "paths.path_metadata_aerial",
        "tasks.train",
        "tasks.train_tasks.init_weights_only_from_ckpt",
        "tasks.train_tasks.resume_training_from_ckpt",
        "tasks.train_load_ckpt",
        "tasks.predict",
        "tasks.metrics",
        "tasks.delete_preds",
        "model_framework.model_provider",
        "model_framework.HuggingFace.org_model",
        "model_framework.SegmentationModelsPytorch.encoder_decoder",
        "model_architecture",
        "encoder_name",
        "use_augmentation",
        "use_metadata",
        "channels",
        "norm_type",
        "norm_means",
        "norm_stds",
        "seed",
        "batch_size",
        "learning_rate",
        "num_epochs",
        "use_weights",
        "supervision_starts_at_one",
        "classes",
        "georeferencing_output",
        "accelerator",
        "num_nodes",
        "gpus_per_node",
        "strategy",
        "num_workers",
        "ckpt_save_also_last",
        "ckpt_verbose",
        "ckpt_weights_only",
        "ckpt_monitor",
        "ckpt_monitor_mode",
        "ckpt_earlystopping_patience",
        "cp_csv_and_conf_to_output",
        "enable_progress_bar",
        "progress_rate",
    }
)

# Top-level keys only IGN's layout has; our schema has sections instead.
_IGN_MARKERS = frozenset(
    {"model_framework", "norm_type", "channels", "use_weights", "num_epochs", "model_architecture"}
)
_OUR_SECTIONS = frozenset({"data", "model", "optim", "loss", "trainer", "checkpoint", "logging"})
_FLAIR_COLORS = {code: color for code, _, color in FLAIR_CLASSES}
_NORM_KINDS = {"custom": "meanstd", "scaling": "scale", "without": "none"}


def is_ign_config(raw: Mapping[str, Any]) -> bool:
    """Whether a YAML mapping is in IGN's ``flair-1-config.yaml`` layout rather than ours.

    Raises:
        ConfigError: If it mixes both layouts.
    """
    ign = sorted(_IGN_MARKERS & raw.keys())
    ours = sorted(_OUR_SECTIONS & raw.keys())
    if ign and ours:
        raise ConfigError(
            f"config mixes IGN keys {ign} with flair-deploy sections {ours}; use one layout "
            "(see configs/README.md)"
        )
    return bool(ign)


def _flatten(node: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in node.items():
        dotted = f"{prefix}{key}"
        # `classes` is a table whose keys are data, not config keys.
        if isinstance(value, Mapping) and dotted != "classes" and value:
            out.update(_flatten(value, dotted + "."))
        elif value in (None, {}) and any(k.startswith(dotted + ".") for k in IGN_KEYS):
            continue  # an empty section, e.g. `HuggingFace:` with nothing under it
        else:
            out[dotted] = value
    return out


def _path(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None


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


def convert_ign_config(
    raw: Mapping[str, Any], *, source: str = "IGN config"
) -> tuple[dict[str, Any], list[str]]:
    """Map an IGN ``flair-1-config.yaml`` mapping to our training config layout.

    Args:
        raw: The parsed YAML.
        source: Name of the file, for messages.

    Returns:
        A nested dict for :class:`~flair_deploy.training.config.TrainConfig` (paths as written, still
        relative to the file), and one note per IGN key or value that is not acted upon.

    Raises:
        ConfigError: For a key IGN's config does not have, or a value that cannot be mapped.
    """
    flat = _flatten(raw)
    unknown = sorted(k for k in flat if k not in IGN_KEYS)
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {unknown} for an IGN flair-1-config.yaml; check the spelling "
            "(see configs/README.md for the keys that are mapped)"
        )
    notes: list[str] = []
    data: dict[str, Any] = {"normalization": {}}
    model: dict[str, Any] = {}
    optim: dict[str, Any] = {"optimizer": "sgd", "momentum": 0.0, "weight_decay": 0.0, "scheduler": "plateau"}
    trainer: dict[str, Any] = {}
    checkpoint: dict[str, Any] = {}
    logging: dict[str, Any] = {}
    out: dict[str, Any] = {}

    def note(key: str, why: str) -> None:
        notes.append(f"{key}: {why}")

    # ---- paths
    for ign_key, ours in (
        ("paths.train_csv", "train_csv"),
        ("paths.val_csv", "val_csv"),
        ("paths.test_csv", "test_csv"),
        ("paths.path_metadata_aerial", "aerial_json"),
    ):
        if _path(flat.get(ign_key)) is not None:
            data[ours] = _path(flat[ign_key])
    folder, name = _path(flat.get("paths.out_folder")), _path(flat.get("paths.out_model_name"))
    if folder or name:
        logging["out_dir"] = str(Path(folder or ".") / (name or ""))
    ckpt = _path(flat.get("paths.ckpt_model_path"))
    init = bool(
        flat.get("tasks.train_tasks.init_weights_only_from_ckpt") or flat.get("tasks.train_load_ckpt")
    )
    resume = bool(flat.get("tasks.train_tasks.resume_training_from_ckpt"))
    if (init or resume) and ckpt is None:
        raise ConfigError(f"{source}: a tasks.train_tasks option needs paths.ckpt_model_path")
    if resume:
        checkpoint["resume_from"] = ckpt
    elif init:
        checkpoint["init_weights_from"] = ckpt
    elif ckpt is not None:
        note(
            "paths.ckpt_model_path", "used only with init_weights_only_from_ckpt / resume_training_from_ckpt"
        )

    # ---- tasks
    if flat.get("tasks.train") is False:
        note("tasks.train", "is false, but `flair-deploy train` always trains")
    for key in ("tasks.predict", "tasks.metrics", "tasks.delete_preds"):
        if key in flat:
            note(key, "not part of training; use `flair-deploy evaluate` (metrics, optional predictions)")

    # ---- model
    provider = flat.get("model_framework.model_provider")
    enc_dec = flat.get("model_framework.SegmentationModelsPytorch.encoder_decoder")
    if provider not in (None, "SegmentationModelsPytorch", "HuggingFace"):
        raise ConfigError(
            f"{source}: model_framework.model_provider {provider!r} is not SegmentationModelsPytorch "
            "or HuggingFace"
        )
    if provider == "HuggingFace":
        org = flat.get("model_framework.HuggingFace.org_model")
        chosen = enc_dec or "resnet34_unet"
        note(
            "model_framework.model_provider",
            f"HuggingFace ({org}) is not supported (IGN's HF path ignores the band count); training the "
            f"SMP model {chosen!r} instead (set model_framework.SegmentationModelsPytorch.encoder_decoder)",
        )
    elif "model_framework.HuggingFace.org_model" in flat:
        note("model_framework.HuggingFace.org_model", "ignored (provider is SegmentationModelsPytorch)")
    if enc_dec:
        encoder, sep, arch = str(enc_dec).rpartition("_")
        if not sep or not encoder or not arch:
            raise ConfigError(
                f"{source}: encoder_decoder {enc_dec!r} is not `<encoder>_<architecture>`, e.g. resnet34_unet"
            )
        model.update(encoder=encoder, arch=arch.lower())
    if flat.get("model_architecture"):
        model["arch"] = str(flat["model_architecture"]).lower()
    if flat.get("encoder_name"):
        model["encoder"] = str(flat["encoder_name"])
    if "use_metadata" in flat:
        model["use_metadata"] = bool(flat["use_metadata"])

    # ---- data
    if "use_augmentation" in flat:
        data["augment"] = bool(flat["use_augmentation"])
    if "channels" in flat:
        data["bands"] = flat["channels"]
    norm_type = flat.get("norm_type")
    if norm_type is not None:
        if norm_type not in _NORM_KINDS:
            raise ConfigError(f"{source}: norm_type {norm_type!r} is not one of {sorted(_NORM_KINDS)}")
        data["normalization"]["kind"] = _NORM_KINDS[norm_type]
        if norm_type == "custom":
            data["normalization"]["mean"] = flat.get("norm_means")
            data["normalization"]["std"] = flat.get("norm_stds")
        elif "norm_means" in flat or "norm_stds" in flat:
            note("norm_means/norm_stds", f"ignored with norm_type {norm_type!r}")
    starts = flat.get("supervision_starts_at_one")
    if "classes" in flat:
        use_weights = bool(flat.get("use_weights", True))
        table = _classes(flat["classes"], use_weights=use_weights, starts_at_one=starts, source=source)
        data["classes"] = table["classes"]
        out["loss"] = {"class_weights": table["weights"]}
        if not use_weights:
            note("use_weights", "false: the loss is unweighted, but weight-0 classes stay inactive")

    # ---- optimisation (IGN: plain SGD, ReduceLROnPlateau(factor 0.5, patience 10) on the monitor)
    for ign_key, ours in (("batch_size", "batch_size"), ("learning_rate", "lr"), ("num_epochs", "epochs")):
        if ign_key in flat:
            optim[ours] = flat[ign_key]
    for key in ("seed", "num_workers"):
        if key in flat:
            out[key] = flat[key]

    # ---- compute
    if "accelerator" in flat:
        trainer["accelerator"] = flat["accelerator"]
    if "gpus_per_node" in flat:
        trainer["devices"] = flat["gpus_per_node"]
    if "num_nodes" in flat:
        trainer["num_nodes"] = flat["num_nodes"]
    if "strategy" in flat:
        trainer["strategy"] = flat["strategy"] if flat["strategy"] is not None else "auto"

    # ---- checkpoints
    for ign_key, ours in (
        ("ckpt_save_also_last", "save_last"),
        ("ckpt_weights_only", "weights_only"),
        ("ckpt_monitor", "monitor"),
        ("ckpt_monitor_mode", "mode"),
        ("ckpt_earlystopping_patience", "early_stopping_patience"),
    ):
        if ign_key in flat:
            checkpoint[ours] = flat[ign_key]

    # ---- reported, not acted upon
    for key, why in (
        ("georeferencing_output", "prediction option; `flair-deploy detect/evaluate` always write GeoTIFFs"),
        ("ckpt_verbose", "ignored; checkpoint paths are printed at the end of training"),
        ("cp_csv_and_conf_to_output", "the resolved config is always written beside the checkpoints"),
        ("enable_progress_bar", "use `flair-deploy train --no-progress` to hide the progress bar"),
        ("progress_rate", "ignored; the progress bar refreshes itself"),
        ("supervision_starts_at_one", "not needed: class keys are used as the mask codes"),
    ):
        if key in flat:
            note(key, why)

    out.update(data=data, model=model, optim=optim, trainer=trainer, checkpoint=checkpoint, logging=logging)
    return out, notes
