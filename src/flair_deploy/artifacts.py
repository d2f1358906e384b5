"""The one home for the model description of every artifact kind, and for writing checkpoints.

Every file flair-deploy hands from one stage to the next carries its
:class:`~flair_deploy.description.ModelDescription`:

=================  ==========================================  =============================================
kind               suffixes                                    where the description lives
=================  ==========================================  =============================================
``checkpoint``     ``.ckpt .pth .pt .safetensors``             ``hyper_parameters["description"]`` (ours)
``onnx``           ``.onnx``                                   ``metadata_props["flair_deploy.description"]``
``engine``         ``.engine .plan .trt``                      the sidecar ``<engine>.json``
=================  ==========================================  =============================================

:data:`SUFFIXES` is the only suffix table (``detect``, ``inspect``, ``benchmark`` and ``export`` all use
it), :func:`sidecar_path` the only sidecar rule, and :func:`resolve_description` the only preset rule:
*an artifact that describes itself keeps its description; a preset is only for weights that carry
none* (IGN's released weights).

This module imports neither torch nor onnx at import time: ONNX descriptions are read with ``onnx``
when it is installed and with onnxruntime's model metadata otherwise, so a torch-free runtime install
reads them; checkpoints import torch when one is read or written.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from flair_deploy._optional import require
from flair_deploy.atomic import atomic_path
from flair_deploy.description import (
    ONNX_KEY,
    ArchitectureSpec,
    ModelDescription,
    Normalization,
    NormalizationKind,
    class_preset,
)
from flair_deploy.errors import CheckpointError, FlairDeployError, ModelDescriptionError
from flair_deploy.flair_format import FLAIR_BANDS, flair_statistics

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "DEEPNESS_KEYS",
    "PRESETS",
    "SUFFIXES",
    "ArtifactKind",
    "Describer",
    "GivenDescription",
    "artifact_kind",
    "given_description",
    "kind_suffixes",
    "load_sidecar",
    "preset_description",
    "read_description",
    "read_engine_description",
    "read_onnx_description",
    "read_onnx_props",
    "resolve_description",
    "save_checkpoint",
    "save_sidecar",
    "sidecar_path",
    "stamp_onnx_description",
]


class ArtifactKind(StrEnum):
    """What a model file is: a checkpoint (torch), an ONNX graph or a TensorRT engine."""

    CHECKPOINT = "checkpoint"
    ONNX = "onnx"
    ENGINE = "engine"


#: Model-file suffix (lower case) → artifact kind. The one suffix table of flair-deploy.
SUFFIXES: Final[Mapping[str, ArtifactKind]] = {
    ".ckpt": ArtifactKind.CHECKPOINT,
    ".pth": ArtifactKind.CHECKPOINT,
    ".pt": ArtifactKind.CHECKPOINT,
    ".safetensors": ArtifactKind.CHECKPOINT,
    ".onnx": ArtifactKind.ONNX,
    ".engine": ArtifactKind.ENGINE,
    ".plan": ArtifactKind.ENGINE,
    ".trt": ArtifactKind.ENGINE,
}

#: Keys the QGIS Deepness plugin reads from ONNX ``metadata_props`` (see
#: :meth:`~flair_deploy.description.ModelDescription.deepness_props`); cleared before every stamp so
#: a stale one never survives a re-stamp.
DEEPNESS_KEYS: Final[tuple[str, ...]] = (
    "model_type",
    "class_names",
    "resolution",
    "tile_size",
    "tiles_overlap",
    "standardization_mean",
    "standardization_std",
    "seg_thresh",
    "seg_small_segment",
)
#: Deepness keys earlier flair-deploy versions wrote (``tiles_size``: Deepness reads ``tile_size``);
#: cleared on re-stamp.
_LEGACY_KEYS: Final[tuple[str, ...]] = ("tiles_size",)

_PREFIX = "flair_deploy."


def kind_suffixes(kind: ArtifactKind) -> tuple[str, ...]:
    """Return the suffixes of one artifact kind, in table order."""
    return tuple(s for s, k in SUFFIXES.items() if k is kind)


def _known() -> str:
    return "; ".join(f"{k.value}: {' '.join(kind_suffixes(k))}" for k in ArtifactKind)


def artifact_kind(path: Path) -> ArtifactKind:
    """Return the kind of the model file *path*, from its suffix (case-insensitive).

    Raises:
        ModelDescriptionError: For a suffix no kind has, listing the known suffixes.
    """
    suffix = path.suffix.lower()
    try:
        return SUFFIXES[suffix]
    except KeyError:
        raise ModelDescriptionError(
            f"{path.name}: unknown model file type {suffix or '(no suffix)'!r}; known suffixes: {_known()}"
        ) from None


# --------------------------------------------------------------------------------------- presets
_BANDS = {"rgbie": FLAIR_BANDS, "rgbi": FLAIR_BANDS[:4], "rgb": FLAIR_BANDS[:3]}


def _ign_preset(bands: str, ncl: int) -> ModelDescription:
    names = _BANDS[bands]
    mean, std = flair_statistics(names)
    return ModelDescription(
        name=f"FLAIR-INC_{bands}_{ncl}cl_resnet34-unet",
        bands=names,
        normalization=Normalization(mean=mean, std=std),
        classes=class_preset(f"flair{ncl}"),
        architecture=ArchitectureSpec(arch="unet", encoder="resnet34"),
    )


#: IGN's published FLAIR-INC models (19 logits; "15cl"/"12cl" say which are active), with the
#: normalisation of their model cards (FLAIR #1 statistics restricted to the bands used).
PRESETS: Final[dict[str, ModelDescription]] = {
    f"flair-inc-{b}-{n}cl-resnet34-unet": _ign_preset(b, n) for b in _BANDS for n in (15, 12)
}


def preset_description(name: str) -> ModelDescription:
    """Return the description of a named preset.

    Raises:
        CheckpointError: For an unknown preset, listing the known ones.
    """
    try:
        return PRESETS[name]
    except KeyError:
        raise CheckpointError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None


@dataclass(frozen=True, slots=True)
class GivenDescription:
    """A description the user gives for weights that carry none: a preset, or IGN's config file.

    Attributes:
        description: The description it makes.
        source: What gave it, for messages (``--preset NAME``, or the config file's path).
        keys: Description field (``bands``, ``classes``, ``normalization``, ``architecture``) → the key
            in *source* that sets it. Only these fields are compared with a self-describing artifact's.
        check: Whether a self-describing artifact that disagrees on those fields is an error (one
            model per call), or simply keeps its own description (``benchmark`` of several models,
            where the given description is meant for the weights that carry none).
    """

    description: ModelDescription
    source: str
    keys: Mapping[str, str]
    check: bool = True

    @classmethod
    def from_preset(cls, name: str) -> GivenDescription:
        """Return the description of the preset *name* (every field it sets is compared).

        Raises:
            CheckpointError: For an unknown preset, listing the known ones.
        """
        keys = {f: f"--preset {name}" for f in _COMPARED}
        return cls(preset_description(name), f"--preset {name}", keys)

    def conflict(self, stored: ModelDescription) -> str | None:
        """Return how *stored* disagrees with this description (one clause naming the key), or None.

        Classes are compared by their mask codes, or by their number when the key that sets them
        gives only a number (IGN's detect config: ``n_classes``).
        """
        for name in _COMPARED:
            key = self.keys.get(name)
            if key is None:
                continue
            count_only = name == "classes" and key.endswith("n_classes")
            ours, theirs = (
                (len(stored.classes), len(self.description.classes))
                if count_only
                else (_compared(stored, name), _compared(self.description, name))
            )
            if ours != theirs:
                return f"{key} gives {name} {theirs}, the model has {ours}"
        return None


#: The fields of a description a preset or IGN config is compared on (not names or provenance).
_COMPARED: Final[tuple[str, ...]] = ("bands", "classes", "normalization", "architecture")


def _compared(d: ModelDescription, name: str) -> Any:
    if name == "bands":
        return list(d.bands)
    if name == "classes":
        return [c.code for c in d.classes]
    if name == "normalization":
        n = d.normalization
        if n.kind is NormalizationKind.MEANSTD:
            return f"meanstd mean={[round(m, 3) for m in n.mean]} std={[round(s, 3) for s in n.std]}"
        return f"scale max_value={n.max_value:g}" if n.kind is NormalizationKind.SCALE else n.kind.value
    a = d.architecture
    return f"{a.arch}/{a.encoder}"


#: What ``preset=`` accepts everywhere: a :data:`PRESETS` name or a :class:`GivenDescription`.
Describer = str | GivenDescription


def given_description(preset: Describer | None) -> GivenDescription | None:
    """Return *preset* as a :class:`GivenDescription` (a name is looked up in :data:`PRESETS`).

    Raises:
        CheckpointError: For an unknown preset name.
    """
    if preset is None or isinstance(preset, GivenDescription):
        return preset
    return GivenDescription.from_preset(preset)


def resolve_description(
    stored: ModelDescription | None,
    *,
    source: str,
    preset: Describer | None = None,
    description: ModelDescription | None = None,
    error: type[FlairDeployError] = ModelDescriptionError,
) -> ModelDescription:
    """Apply the one preset rule and return the description to use.

    A self-describing artifact keeps its description; a preset, an IGN config or a description given
    by the caller is only for weights that carry none. Given to a self-describing artifact, it must
    agree with the artifact on what it sets (bands, classes, normalisation, architecture); a
    disagreement is one line naming the key, unless the given description says not to check (a
    ``benchmark`` of several models).

    Args:
        stored: The description the artifact carries, or None.
        source: What the artifact is, for messages (its path, optionally with its layout).
        preset: A :data:`PRESETS` name or a :class:`GivenDescription` (e.g. from an IGN config).
        description: A description built by the caller from flags (``export --bands ...``).
        error: Error class to raise (checkpoint readers raise :class:`CheckpointError`).

    Returns:
        The description to use.

    Raises:
        FlairDeployError: (*error*) if both a preset and a description are given, if a given
            description disagrees with the artifact's own, or if nothing describes it.
    """
    if preset is not None and description is not None:
        raise error("give either a preset or a description, not both")
    given = given_description(preset)
    if given is None and description is not None:
        given = GivenDescription(description, "the description flags", {f: "flags" for f in _COMPARED})
    if stored is not None:
        if given is not None and given.check and (clash := given.conflict(stored)) is not None:
            raise error(
                f"{source} describes itself and disagrees: {clash}; drop {given.source} (it describes "
                "weights that carry no description) or correct it"
            )
        return stored
    if given is not None:
        return given.description
    raise error(
        f"{source} carries no model description; give --preset ({', '.join(PRESETS)}) or an IGN "
        "config with --config, or use a file written by `flair-deploy train`/`flair-deploy export`"
    )


# --------------------------------------------------------------------------------------- ONNX
def stamp_onnx_description(
    proto: Any, description: ModelDescription, *, extra: Mapping[str, str] | None = None
) -> None:
    """Replace the flair-deploy (and Deepness) ``metadata_props`` of an ONNX ``ModelProto``.

    Other tools' keys are kept; every ``flair_deploy.*`` and Deepness key is rewritten from
    *description* (metadata models get no Deepness keys, which Deepness cannot feed), then *extra*
    keys are written over them (a QGIS-tool variant's own Deepness keys).
    """
    props = {**description.to_metadata_props(), **(extra or {})}
    stale = {*DEEPNESS_KEYS, *_LEGACY_KEYS, *props}
    kept = [
        (p.key, p.value) for p in proto.metadata_props if p.key not in stale and not p.key.startswith(_PREFIX)
    ]
    del proto.metadata_props[:]
    for key, value in [*kept, *props.items()]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def read_onnx_props(path: Path) -> dict[str, str]:
    """Return the ``metadata_props`` of an ONNX file, without its weights.

    Uses ``onnx`` when installed, else onnxruntime's model metadata (a torch- and onnx-free install).

    Raises:
        ModelDescriptionError: If *path* is not a readable ONNX model.
        MissingDependencyError: If neither onnx nor onnxruntime is installed.
    """
    if importlib.util.find_spec("onnx") is not None:
        import onnx

        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError, OSError, ValueError
            raise ModelDescriptionError(f"cannot read ONNX model {path}: {_first_line(exc)}") from None
        return {p.key: p.value for p in proto.metadata_props}
    ort = require("onnxruntime", purpose="reading .onnx models")
    so = ort.SessionOptions()
    # Only the metadata is needed: skip graph optimisation to make this cheap.
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime's pybind errors derive straight from Exception
        raise ModelDescriptionError(f"cannot read ONNX model {path}: {_first_line(exc)}") from None
    return dict(sess.get_modelmeta().custom_metadata_map)


def _onnx_stored(path: Path) -> ModelDescription | None:
    props = read_onnx_props(path)
    if ONNX_KEY not in props:
        return None
    return ModelDescription.from_metadata_props(props, source=str(path))


def read_onnx_description(path: Path, *, preset: Describer | None = None) -> ModelDescription:
    """Return the description of an ONNX file (any name: also a temporary file being written).

    Raises:
        ModelDescriptionError: If the file is unreadable, its description invalid, or the preset rule
            is broken (see :func:`resolve_description`).
    """
    return resolve_description(_onnx_stored(path), source=str(path), preset=preset)


# --------------------------------------------------------------------------------------- engines
def sidecar_path(engine: Path) -> Path:
    """Return the sidecar of a TensorRT engine: ``<engine>.json`` (``model.engine`` → ``model.engine.json``).

    The engine's bytes are the plan exactly as TensorRT serialised it; its description and build
    facts live in this one sidecar.
    """
    return engine.with_name(engine.name + ".json")


def save_sidecar(engine: Path, description: ModelDescription) -> Path:
    """Write *description* to the sidecar of *engine*, atomically; returns the sidecar's path.

    Raises:
        OutputError: If the sidecar cannot be written.
    """
    path = sidecar_path(engine)
    description.save_sidecar(path)
    return path


def load_sidecar(engine: Path) -> ModelDescription:
    """Read the description of *engine* from its sidecar.

    Raises:
        ModelDescriptionError: If the sidecar is missing or holds no valid description.
    """
    path = sidecar_path(engine)
    if not path.is_file():
        raise ModelDescriptionError(
            f"no description sidecar beside {engine} (looked for {path.name}); it is written with each "
            "engine by `flair-deploy export --tensorrt`"
        )
    return ModelDescription.load_sidecar(path)


def read_engine_description(engine: Path, *, preset: Describer | None = None) -> ModelDescription:
    """Return the description of a TensorRT engine (from its sidecar; engines always describe themselves).

    Raises:
        ModelDescriptionError: For a missing or invalid sidecar, or a preset.
    """
    return resolve_description(load_sidecar(engine), source=str(engine), preset=preset)


# --------------------------------------------------------------------------------------- any kind
def read_description(path: Path, *, preset: Describer | None = None) -> ModelDescription:
    """Return the description of any artifact: ONNX model, TensorRT engine (its sidecar) or checkpoint.

    Args:
        path: A model file with a :data:`SUFFIXES` suffix.
        preset: A :data:`PRESETS` name or a :class:`GivenDescription` (an IGN config), for weights
            that carry no description (IGN's).

    Returns:
        The validated description. For checkpoints it is the one :func:`~flair_deploy.checkpoints.
        load_checkpoint` gives (active classes from IGN's loss weights, the file's SHA-256).

    Raises:
        ModelDescriptionError: If the file is missing, of an unknown kind, carries no valid
            description, or the preset rule is broken.
        CheckpointError: For unreadable or undescribed checkpoints.
        MissingDependencyError: If the reader of the kind is not installed.
    """
    if not path.exists():
        raise ModelDescriptionError(f"{path} does not exist; give an .onnx, .engine or checkpoint file")
    kind = artifact_kind(path)
    if kind is ArtifactKind.ONNX:
        return read_onnx_description(path, preset=preset)
    if kind is ArtifactKind.ENGINE:
        return read_engine_description(path, preset=preset)
    require("torch", purpose="reading checkpoints")
    from flair_deploy.checkpoints import load_checkpoint

    return load_checkpoint(path, preset=preset).description


# --------------------------------------------------------------------------------------- checkpoints
def save_checkpoint(
    path: Path,
    model: nn.Module,
    description: ModelDescription,
    *,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a self-describing checkpoint in the layout ``flair-deploy train`` writes.

    The file holds ``state_dict`` (the network's weights under ``model.*``, as the Lightning task
    stores them) and ``hyper_parameters["description"]`` (the description as plain JSON types), so
    :func:`~flair_deploy.checkpoints.load_checkpoint` reads it with ``torch.load(weights_only=True)``.

    Args:
        path: Destination (``.ckpt`` by convention); written atomically.
        model: The network (a :class:`~flair_deploy.models.FlairSegmenter`).
        description: Its description.
        extra: Further top-level entries of plain types (e.g. ``{"epoch": 3}``).

    Returns:
        *path*.

    Raises:
        ValueError: If *extra* would replace ``state_dict`` or ``hyper_parameters``.
        OutputError: If *path* cannot be written.
    """
    torch = require("torch", purpose="writing checkpoints")
    clash = {"state_dict", "hyper_parameters"} & set(extra or {})
    if clash:
        raise ValueError(f"extra must not replace {sorted(clash)}")
    state = {
        **dict(extra or {}),
        "state_dict": {f"model.{k}": v.detach().cpu() for k, v in model.state_dict().items()},
        "hyper_parameters": {"description": description.to_dict()},
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path
