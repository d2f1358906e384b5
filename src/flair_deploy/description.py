"""The model description: the one object that travels with a model.

A :class:`ModelDescription` says everything a runtime needs to use a network correctly: the band order
it expects, how raw band values are normalised, the classes behind each logit (FLAIR codes, names,
colours, whether the class was trained), the tile size and ground sampling distance it was trained at,
the metadata-vector input, the architecture that rebuilds it, and where it came from.

The same object is serialised in three places, always through :meth:`ModelDescription.to_json`:

* the Lightning checkpoint's ``hyper_parameters["description"]`` (written by ``flair-deploy train``);
* the ONNX ``metadata_props`` (key :data:`ONNX_KEY`, plus the QGIS Deepness keys);
* the JSON sidecar beside every TensorRT engine.

Which artifact keeps it where (the suffix table, the sidecar rule, the preset rule) is
:mod:`flair_deploy.artifacts`.

Validators raise; they never repair an inconsistent description.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from flair_deploy.atomic import write_text
from flair_deploy.errors import ModelDescriptionError

# FLAIR's bands, statistics and nomenclature live in flair_format; the names stay importable from here.
from flair_deploy.flair_format import FLAIR_BANDS, FLAIR_CLASSES, FLAIR_RVBIE_MEAN, FLAIR_RVBIE_STD

__all__ = [
    "DEEPNESS_SCALE",
    "FLAIR_CLASSES",
    "FLAIR_RVBIE_MEAN",
    "FLAIR_RVBIE_STD",
    "ONNX_KEY",
    "SCHEMA_VERSION",
    "ArchitectureSpec",
    "ClassInfo",
    "MetadataSpec",
    "ModelDescription",
    "Normalization",
    "NormalizationKind",
    "Precision",
    "Provenance",
    "class_preset",
    "file_sha256",
]

SCHEMA_VERSION = 1
ONNX_KEY = "flair_deploy.description"
#: What QGIS Deepness divides every raster value by before its standardisation, whatever the dtype.
DEEPNESS_SCALE = 255.0


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Precision(StrEnum):
    """Numerical precision of an artifact's graph."""

    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"
    INT8 = "int8"


class NormalizationKind(StrEnum):
    """How raw band values become network inputs.

    * ``meanstd``: ``(x - mean[b]) / std[b]`` per band (IGN's ``custom``).
    * ``scale``: ``x / max_value`` (IGN's ``scaling``: 255 for uint8 data, 65535 for uint16).
    * ``none``: raw values (IGN's ``without``).
    """

    MEANSTD = "meanstd"
    SCALE = "scale"
    NONE = "none"


class Normalization(_Frozen):
    """Per-band normalisation, applied inside the network so every runtime is fed raw values."""

    kind: NormalizationKind = NormalizationKind.MEANSTD
    mean: tuple[float, ...] = FLAIR_RVBIE_MEAN
    std: tuple[float, ...] = FLAIR_RVBIE_STD
    max_value: Annotated[float, Field(gt=0)] = 255.0

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.kind is NormalizationKind.MEANSTD:
            if len(self.mean) != len(self.std):
                raise ValueError(
                    f"normalisation mean has {len(self.mean)} values but std has {len(self.std)}; "
                    "give one mean and one std per selected band"
                )
            if any(s <= 0 for s in self.std):
                raise ValueError(f"normalisation std must be > 0 for every band, got {list(self.std)}")
        return self

    def affine(self, num_bands: int) -> tuple[list[float], list[float]]:
        """Return per-band ``(scale, offset)`` such that ``normalised = x * scale + offset``.

        Args:
            num_bands: Number of input bands; checked against the mean/std lengths.

        Returns:
            Two lists of ``num_bands`` floats.

        Raises:
            ModelDescriptionError: If mean/std do not have one value per band.
        """
        if self.kind is NormalizationKind.MEANSTD:
            if len(self.mean) != num_bands:
                raise ModelDescriptionError(
                    f"normalisation has {len(self.mean)} mean/std values for {num_bands} bands; "
                    "give one mean and one std per selected band"
                )
            return [1.0 / s for s in self.std], [-m / s for m, s in zip(self.mean, self.std, strict=True)]
        if self.kind is NormalizationKind.SCALE:
            return [1.0 / self.max_value] * num_bands, [0.0] * num_bands
        return [1.0] * num_bands, [0.0] * num_bands


class ClassInfo(_Frozen):
    """One output class, in logit order.

    Attributes:
        code: Value of the class in masks and in output maps (FLAIR codes start at 1).
        name: Human-readable name.
        color: ``#rrggbb`` colour for maps and legends.
        active: False for classes that were not trained (weight 0 in the loss, e.g. FLAIR's
            "15 classes" models keep 19 logits but never learnt 15, 16, 17 and 19). Inactive logits
            are masked before argmax.
        aliases: Further mask codes that are folded into this class (the challenge's 13-class
            remap folds codes 14-19 into "other").
    """

    code: Annotated[int, Field(ge=0, le=254)]
    name: Annotated[str, Field(min_length=1)]
    color: Annotated[str, Field(pattern=r"^#[0-9a-fA-F]{6}$")] = "#808080"
    active: bool = True
    aliases: tuple[int, ...] = ()

    def rgb(self) -> tuple[int, int, int]:
        """Return the colour as an ``(r, g, b)`` tuple of 0-255 integers."""
        c = self.color.lstrip("#")
        return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16)


def class_preset(name: str) -> tuple[ClassInfo, ...]:
    """Return one of IGN's nomenclature presets.

    Args:
        name: ``flair19`` (all 19 classes), ``flair15`` (19 logits, classes 15, 16, 17, 19 inactive, as
            IGN's "15 classes" models), ``flair12`` (also 13, 14, 18 inactive, as the "12 classes"
            models) or ``flair13`` (the challenge's remap: codes 1-12 kept, 13-19 folded into 13 "other").

    Returns:
        The classes in logit order.

    Raises:
        ModelDescriptionError: For an unknown preset name.
    """
    full = [ClassInfo(code=c, name=n, color=col) for c, n, col in FLAIR_CLASSES]
    if name == "flair19":
        return tuple(full)
    if name == "flair15":
        off = {15, 16, 17, 19}
        return tuple(c.model_copy(update={"active": c.code not in off}) for c in full)
    if name == "flair12":
        off = {13, 14, 15, 16, 17, 18, 19}
        return tuple(c.model_copy(update={"active": c.code not in off}) for c in full)
    if name == "flair13":
        other = ClassInfo(code=13, name="other", color="#000000", aliases=tuple(range(14, 20)))
        return (*full[:12], other)
    raise ModelDescriptionError(
        f"unknown class preset {name!r}; choose one of: flair19, flair15, flair12, flair13"
    )


class ArchitectureSpec(_Frozen):
    """What rebuilds the network.

    Attributes:
        provider: ``smp`` (``smp.create_model`` names) or ``huggingface`` (a transformers
            ``...ForSemanticSegmentation`` built offline from :data:`flair_deploy.hf_models.HF_MODELS`).
        arch: SMP architecture, or the HF family (``segformer``, ``upernet``).
        encoder: SMP encoder, or the HF backbone (``mit-b0``, ``swin-tiny``, ``convnext-tiny``, ...).
        encoder_depth: SMP encoder stages (HF models always have 4 stages: leave it at 5).
        decoder_channels: SMP decoder widths (None for HF models).
        hf_model: The ``org_model`` name as IGN's config writes it (HF only), e.g. ``nvidia/mit-b0``.
    """

    provider: Literal["smp", "huggingface"] = "smp"
    arch: str = "unet"
    encoder: str = "resnet34"
    encoder_depth: Annotated[int, Field(ge=3, le=5)] = 5
    decoder_channels: tuple[int, ...] | None = None
    hf_model: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.provider == "smp":
            if self.hf_model is not None:
                raise ValueError(
                    f"hf_model {self.hf_model!r} is set but provider is 'smp'; set provider='huggingface' "
                    "or remove hf_model"
                )
            return self
        from flair_deploy.errors import ConfigError
        from flair_deploy.hf_models import hf_variant

        if self.hf_model is None:
            raise ValueError("provider 'huggingface' needs hf_model, e.g. 'nvidia/mit-b0'")
        try:
            v = hf_variant(self.hf_model, source="architecture.hf_model")
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        if (self.arch, self.encoder) != (v.family, v.encoder):
            raise ValueError(
                f"arch={self.arch!r} encoder={self.encoder!r} do not match hf_model {self.hf_model!r} "
                f"(arch={v.family!r}, encoder={v.encoder!r}); fix one or the other"
            )
        if self.encoder_depth != 5 or self.decoder_channels is not None:
            raise ValueError(
                f"encoder_depth/decoder_channels are SMP settings; HuggingFace model {self.hf_model!r} "
                "has a fixed depth: leave encoder_depth at 5 and decoder_channels unset"
            )
        return self

    @model_serializer(mode="wrap")
    def _compatible(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # SMP architectures serialise exactly as before provider/hf_model existed, so artifacts of SMP
        # models stay readable by earlier flair-deploy versions (their schema forbids unknown keys).
        data: dict[str, Any] = handler(self)
        if self.provider == "smp":
            data.pop("provider", None)
            data.pop("hf_model", None)
        return data

    @property
    def output_stride(self) -> int:
        """Spatial divisor the input height and width must be a multiple of."""
        if self.provider == "huggingface":
            from flair_deploy.hf_models import HF_OUTPUT_STRIDE

            return HF_OUTPUT_STRIDE
        return int(2**self.encoder_depth)


class MetadataSpec(_Frozen):
    """The optional second network input: a fixed-length vector encoding aerial metadata.

    Attributes:
        encoding: Name and version of the encoding (see :mod:`flair_deploy.aerial`).
        dim: Length of the vector.
        fields: Names of the vector's components, in order (documentation for users).
        hidden: Hidden widths of the metadata MLP.
    """

    encoding: str = "flair-aerial-v1"
    dim: Annotated[int, Field(gt=0)]
    fields: tuple[str, ...] = ()
    hidden: tuple[int, ...] = (64, 128)


class Provenance(_Frozen):
    """Where an artifact came from and how it was checked; filled in stage by stage."""

    source: str = ""
    source_sha256: str | None = None
    created_by: str = "flair-deploy"
    precision: Precision = Precision.FP32
    opset: int | None = None
    calibration_sha256: str | None = None
    calibration_method: str | None = None
    parity: dict[str, float] | None = None
    extra: dict[str, str] = Field(default_factory=dict)


class ModelDescription(_Frozen):
    """Everything needed to run a land-cover model correctly, with no other input.

    Attributes:
        schema_version: Version of this schema; readers refuse newer versions.
        name: Short model name.
        bands: Band names in the order the network expects (FLAIR: R, G, B, NIR, E).
        normalization: How raw band values are normalised (inside the network).
        input_dtype: Data type of the rasters the model was trained on (``uint8`` for FLAIR).
        classes: Classes in logit order; there is one logit per class.
        tile_size: Tile edge the model was trained on, in pixels (multiple of the output stride).
        overlap: Suggested overlap between inference tiles, in pixels.
        gsd: Ground sampling distance the model was trained at, in metres per pixel.
        architecture: Network architecture.
        metadata: Spec of the metadata input, or None for image-only models.
        nodata: Output value written where the input is nodata; never a class code.
        provenance: Source and verification trail.
    """

    schema_version: int = SCHEMA_VERSION
    name: str = "flair-unet-resnet34"
    bands: Annotated[tuple[str, ...], Field(min_length=1)] = FLAIR_BANDS
    normalization: Normalization = Normalization()
    input_dtype: Literal["uint8", "uint16", "float32"] = "uint8"
    classes: Annotated[tuple[ClassInfo, ...], Field(min_length=2)] = Field(
        default_factory=lambda: class_preset("flair19")
    )
    tile_size: Annotated[int, Field(gt=0)] = 512
    overlap: Annotated[int, Field(ge=0)] = 128
    gsd: Annotated[float, Field(gt=0)] = 0.2
    architecture: ArchitectureSpec = ArchitectureSpec()
    metadata: MetadataSpec | None = None
    nodata: Annotated[int, Field(ge=0, le=255)] = 255
    provenance: Provenance = Provenance()

    @field_validator("schema_version")
    @classmethod
    def _known_version(cls, v: int) -> int:
        if v > SCHEMA_VERSION:
            raise ValueError(
                f"description schema version {v} is newer than this flair-deploy understands "
                f"({SCHEMA_VERSION}); upgrade flair-deploy"
            )
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        stride = self.architecture.output_stride
        if self.tile_size % stride:
            raise ValueError(
                f"tile_size {self.tile_size} is not a multiple of the network's output stride {stride}; "
                f"use e.g. {max(stride, self.tile_size // stride * stride)}"
            )
        if 2 * self.overlap >= self.tile_size:
            raise ValueError(
                f"overlap {self.overlap} leaves no tile centre for tile_size {self.tile_size}; "
                f"use overlap < {self.tile_size // 2}"
            )
        if self.normalization.kind is NormalizationKind.MEANSTD and len(self.normalization.mean) != len(
            self.bands
        ):
            raise ValueError(
                f"normalisation has {len(self.normalization.mean)} mean/std values for "
                f"{len(self.bands)} bands {list(self.bands)}; give one per band"
            )
        codes = [c.code for c in self.classes]
        all_codes = codes + [a for c in self.classes for a in c.aliases]
        if len(set(all_codes)) != len(all_codes):
            raise ValueError(f"class codes (with aliases) must be unique, got {all_codes}")
        if self.nodata in all_codes:
            raise ValueError(f"nodata value {self.nodata} collides with a class code; pick another")
        if not any(c.active for c in self.classes):
            raise ValueError("at least one class must be active")
        return self

    # ------------------------------------------------------------------ derived values
    @property
    def in_channels(self) -> int:
        """Number of image bands the network takes."""
        return len(self.bands)

    @property
    def num_classes(self) -> int:
        """Number of logits the network produces."""
        return len(self.classes)

    @property
    def active_mask(self) -> tuple[bool, ...]:
        """Per-logit flag: True where the class was trained."""
        return tuple(c.active for c in self.classes)

    def code_lut(self) -> list[int]:
        """Return a 256-entry lookup table from mask code to logit index (-1 where unknown)."""
        lut = [-1] * 256
        for i, c in enumerate(self.classes):
            lut[c.code] = i
            for a in c.aliases:
                lut[a] = i
        return lut

    # ------------------------------------------------------------------ serialisation
    def to_json(self, *, indent: int | None = None) -> str:
        """Serialise to JSON (the format used in checkpoints, ONNX and sidecars)."""
        return self.model_dump_json(indent=indent)

    def to_dict(self) -> dict[str, Any]:
        """Serialise to a JSON-compatible dict (used for checkpoint hyperparameters)."""
        return self.model_dump(mode="json")

    @classmethod
    def from_json(cls, text: str | bytes, *, source: str = "description") -> ModelDescription:
        """Parse and validate a JSON description.

        Args:
            text: JSON text.
            source: What the text came from, for error messages.

        Returns:
            The validated description.

        Raises:
            ModelDescriptionError: If the text is not a valid description.
        """
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            raise ModelDescriptionError(f"{source}: invalid model description: {_first_error(exc)}") from None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "description") -> ModelDescription:
        """Validate a description given as a dict (e.g. from checkpoint hyperparameters).

        Raises:
            ModelDescriptionError: If the dict is not a valid description.
        """
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            raise ModelDescriptionError(f"{source}: invalid model description: {_first_error(exc)}") from None

    def to_metadata_props(self) -> dict[str, str]:
        """Return ONNX ``metadata_props``: the full description plus the QGIS Deepness keys.

        The Deepness keys (see :meth:`deepness_props`) describe the model to QGIS Deepness and GeoDeep;
        they are omitted for metadata models, which Deepness cannot feed. They do not make every
        artifact usable there: those tools threshold and argmax *every* graph output as probabilities,
        and take the tile size from a fixed input shape, so only the variants of
        :mod:`flair_deploy.exports.qgis_tools` (``export --for deepness/geodeep``) map correctly.
        """
        props = {
            ONNX_KEY: self.to_json(),
            "flair_deploy.schema_version": str(self.schema_version),
            "flair_deploy.precision": self.provenance.precision.value,
        }
        if self.metadata is None:
            props.update(self.deepness_props())
        return props

    def deepness_props(self, *, input_divisor: float = 1.0) -> dict[str, str]:
        """Return the metadata keys QGIS Deepness (and GeoDeep) read, for a graph fed ``raw / input_divisor``.

        Deepness multiplies every raster value by ``1/255`` whatever the raster's data type (its
        ``normalize_values_to_01``), then applies ``(v - mean) / std`` from these keys. A graph that
        takes ``raw / input_divisor`` therefore needs ``mean = 0`` and ``std = input_divisor / 255``:
        ``1/255`` for our raw-value graphs (uint8, uint16 and float32 rasters alike), ``1`` for the
        QGIS-tool variant of a uint8 model, whose graph takes 0-1 values. ``seg_thresh: 0`` and
        ``seg_small_segment: 0`` make both tools take the plain argmax of the probabilities, with no
        threshold to a default class and no median filter or sieve; ``tile_size`` is Deepness's name
        for the tile edge.

        Args:
            input_divisor: What the graph expects raw raster values to be divided by.
        """
        n = self.in_channels
        return {
            "model_type": json.dumps("Segmentor"),
            "class_names": json.dumps({str(i): c.name for i, c in enumerate(self.classes)}),
            "resolution": json.dumps(round(self.gsd * 100.0, 6)),
            "tile_size": json.dumps(self.tile_size),
            "tiles_overlap": json.dumps(round(100.0 * self.overlap / self.tile_size, 3)),
            "standardization_mean": json.dumps([0.0] * n),
            "standardization_std": json.dumps([input_divisor / DEEPNESS_SCALE] * n),
            "seg_thresh": json.dumps(0.0),
            "seg_small_segment": json.dumps(0),
        }

    @classmethod
    def from_metadata_props(cls, props: Mapping[str, str], *, source: str = "ONNX model") -> ModelDescription:
        """Read a description back from ONNX ``metadata_props``.

        Raises:
            ModelDescriptionError: If the key is missing or invalid.
        """
        if ONNX_KEY not in props:
            raise ModelDescriptionError(
                f"{source} carries no flair-deploy description (metadata key {ONNX_KEY!r}); "
                "export it with `flair-deploy export`, or give --preset/--config to describe it"
            )
        return cls.from_json(props[ONNX_KEY], source=source)

    def save_sidecar(self, path: Path) -> None:
        """Write the description as an indented JSON file (atomically).

        An engine's sidecar is named by :func:`flair_deploy.artifacts.sidecar_path`.

        Raises:
            OutputError: If *path* cannot be written.
        """
        write_text(path, self.to_json(indent=2) + "\n")

    @classmethod
    def load_sidecar(cls, path: Path) -> ModelDescription:
        """Read a JSON sidecar written by :meth:`save_sidecar`.

        Raises:
            ModelDescriptionError: If the file is missing or invalid.
        """
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ModelDescriptionError(
                f"cannot read model description sidecar {path}: {exc.strerror or exc}; "
                "it is written beside each engine by `flair-deploy export --tensorrt`"
            ) from None
        return cls.from_json(text, source=str(path))

    def with_provenance(self, **updates: Any) -> ModelDescription:
        """Return a copy whose provenance has *updates* applied (validated)."""
        prov = Provenance.model_validate({**self.provenance.model_dump(), **updates})
        return self.model_copy(update={"provenance": prov})


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "(root)"
    return f"{loc}: {err['msg']}"


def file_sha256(path: Path, *, chunk: int = 1 << 20) -> str:
    """Return the hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def describe_classes(classes: Sequence[ClassInfo]) -> str:
    """Return a one-line summary of classes, e.g. ``19 logits (15 active)``."""
    active = sum(c.active for c in classes)
    return f"{len(classes)} logits ({active} active)"
