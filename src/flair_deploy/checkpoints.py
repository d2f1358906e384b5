"""Load networks from checkpoints: ours (self-describing) and IGN's released FLAIR weights.

Every load is safe (``torch.load(weights_only=True)`` or safetensors) and strict: keys are mapped
explicitly and any missing or unexpected key is an error that lists them, never a silent
``strict=False``.

Supported layouts:

* ``flair-deploy``: a Lightning checkpoint written by ``flair-deploy train`` (``hyper_parameters`` holds
  the description; weights under ``model.*``), or a ``.safetensors``/``.pt`` state dict of
  :class:`~flair_deploy.models.FlairSegmenter` plus a description given by the caller.
* ``ign-lightning``: IGN's ``.ckpt`` (``state_dict`` with ``model.seg_model.*``, optional ``model.enc.*``
  and ``criterion.weight``). With a ``provider: huggingface`` description the ``model.seg_model.*`` keys
  are HF keys (written by transformers 4): they are renamed to the installed transformers' names and
  the never-trained UperNet auxiliary head is dropped (:func:`flair_deploy.hf_models.import_hf_state_dict`).
* ``ign-state-dict`` / ``smp-state-dict``: IGN's released ``*_weights.pth`` (bare SMP keys, or prefixed
  ``model.seg_model.`` / ``seg_model.``).

IGN's files carry no description, so one must come from a preset (:data:`PRESETS`), an IGN config
file, or explicit arguments; a file that describes itself keeps its description
(:func:`flair_deploy.artifacts.resolve_description`, the one preset rule). The number of logits is read
from the weights and checked against it. Checkpoints are written by
:func:`flair_deploy.artifacts.save_checkpoint` (tests, benchmarks) or the Lightning trainer.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from flair_deploy.artifacts import (
    PRESETS,
    SUFFIXES,
    ArtifactKind,
    Describer,
    GivenDescription,
    given_description,
    kind_suffixes,
    preset_description,
    resolve_description,
)
from flair_deploy.description import ModelDescription, file_sha256
from flair_deploy.errors import CheckpointError
from flair_deploy.models import FlairSegmenter, build_model

__all__ = [
    "PRESETS",
    "CheckpointLayout",
    "LoadedModel",
    "describes_itself",
    "load_checkpoint",
    "map_ign_state_dict",
    "preset_description",
    "read_state",
]

CheckpointLayout = Literal["flair-deploy", "ign-lightning", "ign-state-dict", "smp-state-dict"]


@dataclass(frozen=True)
class LoadedModel:
    """A network ready for inference and the description it came with.

    Attributes:
        model: The network, in eval mode, on the CPU.
        description: Its description; ``provenance.source_sha256`` is the checkpoint's SHA-256.
        layout: The checkpoint layout that was recognised.
        sha256: SHA-256 of the checkpoint file.
    """

    model: FlairSegmenter
    description: ModelDescription
    layout: CheckpointLayout
    sha256: str


def read_state(path: Path) -> Mapping[str, Any]:
    """Read a checkpoint file safely (no arbitrary unpickling).

    Raises:
        CheckpointError: If the file is missing, corrupt, or needs unsafe unpickling; one line naming
            what was refused (never advising unsafe loading).
    """
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a file")
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is not None and kind is not ArtifactKind.CHECKPOINT:
        raise CheckpointError(
            f"{path.name} is an {kind.value} file, not a checkpoint; give a checkpoint "
            f"({' '.join(kind_suffixes(ArtifactKind.CHECKPOINT))})"
        )
    if path.suffix.lower() == ".safetensors":
        try:
            from safetensors.torch import load_file

            return dict(load_file(str(path)))
        except Exception as exc:  # noqa: BLE001  (safetensors raises several unrelated types for corrupt files)
            raise CheckpointError(
                f"cannot read safetensors file {path}: {_first_sentence(str(exc)) or type(exc).__name__}"
            ) from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as exc:
        raise _load_error(path, exc) from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, expected a dict of tensors")
    return obj


def describes_itself(state: Mapping[str, Any]) -> bool:
    """Whether a checkpoint read by :func:`read_state` carries its model description (ours does).

    Callers holding a description from a config pass it to :func:`load_checkpoint` only for files
    that carry none (IGN's weights): a self-describing file keeps its own.
    """
    hp = state.get("hyper_parameters")
    return isinstance(hp, Mapping) and "description" in hp


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_REFUSED_GLOBAL = re.compile(r"GLOBAL (\S+) was not an allowed global")
_UNPICKLER = "WeightsUnpickler error:"


def _first_sentence(text: str) -> str:
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return line.split(". ")[0].rstrip(".")


def _load_error(path: Path, exc: BaseException) -> CheckpointError:
    """Turn torch's safe-loading failure into one line naming what was refused.

    torch's own message advises re-running with ``weights_only=False``, which executes whatever the
    file contains; that advice is never passed on.
    """
    text = _ANSI.sub("", str(exc))
    refused = _REFUSED_GLOBAL.search(text)
    if refused:
        return CheckpointError(
            f"refusing to load checkpoint {path}: it contains a pickled {refused.group(1)}, which is not a "
            "tensor or plain value (only tensors and plain values are loaded, never arbitrary objects); "
            "re-save its weights as a state dict (torch.save(model.state_dict(), path)) or as .safetensors"
        )
    detail = text.split(_UNPICKLER, 1)[1] if _UNPICKLER in text else text
    lines = [
        ln.strip()
        for ln in detail.splitlines()
        if ln.strip() and "weights_only" not in ln and not ln.strip().startswith("Check the documentation")
    ]
    if isinstance(exc, EOFError):
        what = "the file is empty or truncated"
    elif lines and lines[0].startswith("Unsupported operand"):
        what = f"not a PyTorch file ({lines[0].lower()} in its pickle stream)"
    else:
        what = _first_sentence(lines[0]) if lines else type(exc).__name__
    return CheckpointError(
        f"cannot read checkpoint {path}: {what}; expected a PyTorch/Lightning checkpoint or a "
        ".safetensors file (only tensors and plain values are loaded, never arbitrary objects)"
    )


def _detect(state: Mapping[str, Any]) -> tuple[CheckpointLayout, Mapping[str, Tensor]]:
    if "state_dict" in state and isinstance(state["state_dict"], Mapping):
        sd = state["state_dict"]
        hp = state.get("hyper_parameters")
        if isinstance(hp, Mapping) and "description" in hp:
            return "flair-deploy", sd
        if any(k.startswith("model.seg_model.") for k in sd):
            return "ign-lightning", sd
        if any(k.startswith("model.net.") for k in sd):
            return "flair-deploy", sd
        raise CheckpointError(
            "Lightning checkpoint has neither flair-deploy keys (model.net.*) nor IGN keys "
            f"(model.seg_model.*); first keys: {list(sd)[:4]}"
        )
    tensors = {k: v for k, v in state.items() if isinstance(v, Tensor)}
    if not tensors:
        raise CheckpointError("checkpoint holds no tensors; expected a state dict or a Lightning checkpoint")
    if any(k.startswith("net.") for k in tensors):
        return "flair-deploy", tensors
    if any(k.startswith(("model.seg_model.", "seg_model.")) for k in tensors):
        return "ign-state-dict", tensors
    if any(k.startswith("encoder.") for k in tensors):
        return "smp-state-dict", tensors
    raise CheckpointError(
        "unknown checkpoint key layout; expected flair-deploy keys (net.*), IGN keys "
        f"(model.seg_model.*) or SMP keys (encoder.*, decoder.*); first keys: {list(tensors)[:4]}"
    )


def map_ign_state_dict(sd: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], Tensor | None]:
    """Map IGN/SMP keys to :class:`FlairSegmenter` keys.

    ``model.seg_model.X``, ``seg_model.X`` and bare ``X`` become ``net.X``; ``criterion.weight`` is
    returned separately (it says which classes were trained).

    Returns:
        The mapped state dict and the criterion weights (or None).

    Raises:
        CheckpointError: For IGN metadata-encoder weights (``model.enc.*``), which IGN's released code
            cannot produce and whose fusion differs from ours.
    """
    out: dict[str, Tensor] = {}
    criterion: Tensor | None = None
    for key, value in sd.items():
        if key == "criterion.weight":
            criterion = value
            continue
        if key.startswith("model.enc."):
            raise CheckpointError(
                "checkpoint has IGN metadata-encoder weights (model.enc.*); IGN's metadata fusion is "
                "not supported, export the image-only part by retraining without use_metadata"
            )
        for prefix in ("model.seg_model.", "seg_model."):
            if key.startswith(prefix):
                key = key[len(prefix) :]
                break
        out["net." + key] = value
    return out, criterion


def _logits_in_weights(sd: Mapping[str, Tensor]) -> int | None:
    # SMP heads, then the HuggingFace decode heads (SegFormer and UperNet both name it classifier).
    for key in (
        "net.segmentation_head.0.weight",
        "net.segmentation_head.weight",
        "net.decode_head.classifier.weight",
    ):
        if key in sd:
            return int(sd[key].shape[0])
    return None


def _check_weights_shape(
    sd: Mapping[str, Tensor],
    model: FlairSegmenter,
    description: ModelDescription,
    path: Path,
    given: GivenDescription | None,
) -> None:
    """Check the logit and band counts of undescribed weights against what describes them.

    The message names the key that set the count (``n_classes``, ``channels``, a preset) so that the
    user knows what to correct.
    """
    keys = given.keys if given is not None else {}
    n_logits = _logits_in_weights(sd)
    if n_logits is not None and n_logits != description.num_classes:
        key = keys.get("classes", "the description")
        raise CheckpointError(
            f"class-count mismatch: {path} has {n_logits} logits but {key} gives "
            f"{description.num_classes} classes; describe the weights with {n_logits} classes"
        )
    # The network's first convolution (its first 4-D weight) takes one input channel per band.
    first = next((k for k, v in model.state_dict().items() if v.ndim == 4), "")
    n_bands = int(sd[first].shape[1]) if first in sd and sd[first].ndim == 4 else None
    if n_bands is not None and n_bands != description.in_channels:
        key = keys.get("bands", "the description")
        raise CheckpointError(
            f"band-count mismatch: {path} takes {n_bands} bands but {key} gives "
            f"{description.in_channels} {list(description.bands)}; describe the weights with {n_bands} bands"
        )


def _import_hf(model: FlairSegmenter, sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Map IGN's HF weights (written by transformers 4) onto the installed transformers' key names.

    The UperNet auxiliary head (never trained by IGN) and recomputed buffers are dropped by
    :func:`flair_deploy.hf_models.import_hf_state_dict`; every other key must match strictly.
    """
    from flair_deploy.hf_models import import_hf_state_dict

    inner = {k.removeprefix("net."): v for k, v in sd.items() if k.startswith("net.")}
    renamed, _dropped = import_hf_state_dict(model.net, inner)
    out = {k: v for k, v in sd.items() if not k.startswith("net.")}
    out.update({"net." + k: v for k, v in renamed.items()})
    return out


def _strict_load(model: FlairSegmenter, sd: Mapping[str, Tensor], *, source: str) -> None:
    expected = model.state_dict()
    # Normalisation buffers are rebuilt from the description; a checkpoint that also has them must agree.
    own = {"normalize.scale", "normalize.offset"}
    missing = sorted(k for k in expected if k not in sd and k not in own)
    unexpected = sorted(k for k in sd if k not in expected)
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: weights do not match the described architecture; "
            f"missing {len(missing)} keys {missing[:5]}, unexpected {len(unexpected)} keys {unexpected[:5]}; "
            "check --preset / arch / encoder / bands"
        )
    bad = [k for k in sd if tuple(sd[k].shape) != tuple(expected[k].shape)]
    if bad:
        k = bad[0]
        raise CheckpointError(
            f"{source}: {len(bad)} tensors have the wrong shape, e.g. {k}: checkpoint "
            f"{tuple(sd[k].shape)} vs model {tuple(expected[k].shape)}; check bands, classes and encoder"
        )
    for k in own & sd.keys():
        if not torch.allclose(sd[k].float(), expected[k], rtol=1e-5, atol=1e-6):
            raise CheckpointError(
                f"{source}: stored normalisation ({k}) differs from the description's; "
                "the checkpoint and its description disagree"
            )
    merged = dict(expected)
    merged.update(sd)
    model.load_state_dict(merged, strict=True)


def load_checkpoint(
    path: Path,
    *,
    description: ModelDescription | None = None,
    preset: Describer | None = None,
) -> LoadedModel:
    """Load a network and its description from *path*.

    Args:
        path: ``.ckpt`` (ours or IGN's), ``.pth``/``.pt`` state dict, or ``.safetensors``.
        description: Description for files that carry none (IGN weights, bare state dicts).
        preset: A preset name (see :data:`PRESETS`) or a description given by the user (an IGN
            config, :func:`flair_deploy.ign.describe_weights`), alternative to *description*.

    Returns:
        The loaded model in eval mode with its description.

    Raises:
        CheckpointError: For unreadable files, unknown layouts, key or class-count mismatches.
    """
    state = read_state(path)
    layout, sd = _detect(state)
    stored: ModelDescription | None = None
    if layout == "flair-deploy":
        hp = state.get("hyper_parameters")
        stored_dict = hp.get("description") if isinstance(hp, Mapping) else None
        if stored_dict is not None:
            stored = ModelDescription.from_dict(stored_dict, source=str(path))
        sd = {k.removeprefix("model."): v for k, v in sd.items() if not k.startswith("criterion.")}
        criterion = None
    else:
        sd, criterion = map_ign_state_dict(sd)
    description = resolve_description(
        stored,
        source=f"{path} ({layout})",
        preset=preset,
        description=description,
        error=CheckpointError,
    )
    if criterion is not None and criterion.numel() == description.num_classes:
        # IGN disables classes with loss weight 0: they are untrained and must never be predicted.
        active = [bool(w > 0) for w in criterion.tolist()]
        classes = tuple(
            c.model_copy(update={"active": a}) for c, a in zip(description.classes, active, strict=True)
        )
        description = description.model_copy(update={"classes": classes})
    model = build_model(description)
    if layout != "flair-deploy" and description.architecture.provider == "huggingface":
        sd = _import_hf(model, sd)
    if stored is None:
        _check_weights_shape(sd, model, description, path, given_description(preset))
    _strict_load(model, sd, source=str(path))
    model.eval()
    sha = file_sha256(path)
    description = description.with_provenance(source=path.name, source_sha256=sha)
    return LoadedModel(model=model, description=description, layout=layout, sha256=sha)
