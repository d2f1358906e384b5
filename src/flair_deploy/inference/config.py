"""``detect`` configuration: :class:`DetectConfig` and :func:`load_detect_config`.

A :class:`DetectConfig` is frozen and validated once (unknown keys are errors). Values that depend on the
model (tile size, overlap, margin default to the model description's) are resolved by
:meth:`DetectConfig.resolve_tiling` and checked against the network's output stride.

:func:`load_detect_config` reads our detect YAML or IGN's detect config as it is (mapped by
:func:`flair_deploy.ign.convert_ign_detect`: IGN's 0-based class indices and margin cropping, without
IGN's off-by-one write window); keys with no equivalent are reported, never silently dropped.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import Field, model_validator

from flair_deploy.choices import Compression, Stitching
from flair_deploy.config import FrozenConfig, Loaded, build_config, read_yaml, resolve_paths
from flair_deploy.description import ModelDescription, Precision
from flair_deploy.errors import ConfigError
from flair_deploy.ign import convert_ign_detect, is_ign_detect_config

__all__ = [
    "Compression",
    "DetectConfig",
    "Stitching",
    "TilingPlan",
    "default_batch_size",
    "load_detect_config",
]


def default_batch_size(device: str) -> int:
    """Tiles per inference call when none is configured: 1 on a CPU, 16 on a GPU (the engines' opt batch)."""
    return 1 if device.startswith("cpu") else 16


class DetectConfig(FrozenConfig):
    """Everything one ``detect`` run needs.

    Attributes:
        inputs: Input rasters (GeoTIFF, VRT, any GDAL raster); one output set per input.
        output: Output ``.tif`` (one input) or folder.
        model: Model file (``.onnx``, ``.ckpt``/``.pth``/``.safetensors``, ``.engine``).
        backend: ``torch``, ``onnxruntime`` or ``tensorrt``; None chooses from the model file.
        device: ``cpu``, ``cuda`` or ``cuda:<i>``.
        precision: Requested precision; None = the artifact's own.
        preset: Description preset for weights that carry none (IGN's).
        backend_options: Backend-specific options (e.g. ``threads``).
        bands: 1-based raster bands for the model's bands, in the model's order; None = first N.
        tile_size: Tile edge in pixels; None = the model's.
        overlap: Blend overlap in pixels; None = the model's.
        margin: Crop margin in pixels; None = the model's overlap (IGN: 128).
        stitching: ``blend`` (weighted probabilities, no seams) or ``crop`` (IGN's grid).
        blend_border: Pixels of zero weight on inner tile sides; None = overlap // 8.
        pad_mode: Fill of pixels outside the raster: ``reflect`` or ``constant`` (0, as IGN).
        batch_size: Tiles per inference call; None = 1 on a CPU (onnxruntime and PyTorch already use
            every core on one 512-px tile, so larger batches only add memory) and 16 on a GPU (the batch TensorRT profiles are tuned for).
        readers: Reader threads (each opens its own dataset handle).
        prefetch: Tiles read ahead of inference (bounds memory: back-pressure).
        indices: Write 0-based logit indices instead of FLAIR codes.
        probabilities: Also write per-class uint8 probabilities.
        confidence: Also write the uint8 confidence of the chosen class.
        compress: Output compression (with predictor 2).
        block_size: Output tile size, multiple of 16.
        overviews: Build overviews (mode resampling for classes).
        cog: Write Cloud-Optimised GeoTIFFs.
        overwrite: Replace existing outputs.
        resume: Skip inputs whose outputs already exist (finished by an earlier run).
        allow_gsd_mismatch: Proceed when the raster's GSD differs from the model's.
        assume_crs: CRS of rasters that have none.
        date: Acquisition date (metadata models).
        time: Acquisition time of day, ``HH:MM`` or ``HHhMM`` (metadata models).
        camera: Camera name (metadata models).
        altitude: Altitude of the scene in metres (metadata models).
        metadata_json: JSON sidecar with ``date``, ``time``, ``camera``, ``altitude`` (or a FLAIR record).
        expected_classes: Number of logits the model must have (IGN's ``n_classes``).
        gdal_cache_mb: GDAL block-cache size during the run. GDAL's default is 5 % of RAM, which fills
            with input blocks that are read once, so memory would grow with the raster; tiles are read
            and written in row order, so a small cache loses nothing.
        chunk_mb: Stitching memory budget, MiB: the output is cut into strips as wide as this allows
            (accumulators of one tile row over the strip's width), so memory does not grow with the
            raster's width; tiles on strip boundaries are computed for both strips.
    """

    inputs: Annotated[tuple[Path, ...], Field(min_length=1)]
    output: Path
    model: Path | None = None
    backend: Literal["torch", "onnxruntime", "tensorrt"] | None = None
    device: str = "cpu"
    precision: Precision | None = None
    preset: str | None = None
    backend_options: dict[str, Any] = Field(default_factory=dict)
    bands: tuple[Annotated[int, Field(ge=1)], ...] | None = None
    tile_size: Annotated[int, Field(gt=0)] | None = None
    overlap: Annotated[int, Field(ge=0)] | None = None
    margin: Annotated[int, Field(ge=0)] | None = None
    stitching: Stitching = Stitching.BLEND
    blend_border: Annotated[int, Field(ge=0)] | None = None
    pad_mode: Literal["reflect", "constant"] = "reflect"
    batch_size: Annotated[int, Field(ge=1, le=1024)] | None = None
    readers: Annotated[int, Field(ge=1, le=64)] = 2
    prefetch: Annotated[int, Field(ge=1, le=4096)] = 16
    indices: bool = False
    probabilities: bool = False
    confidence: bool = False
    compress: Compression = Compression.DEFLATE
    block_size: Annotated[int, Field(ge=16, le=4096, multiple_of=16)] = 256
    overviews: bool = True
    cog: bool = False
    overwrite: bool = False
    resume: bool = False
    allow_gsd_mismatch: bool = False
    assume_crs: str | None = None
    date: dt.date | None = None
    time: str | None = None
    camera: str | None = None
    altitude: float | None = None
    metadata_json: Path | None = None
    expected_classes: Annotated[int, Field(ge=2)] | None = None
    gdal_cache_mb: Annotated[int, Field(ge=16, le=65536)] = 128
    chunk_mb: Annotated[int, Field(ge=1, le=1 << 20)] = 256

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.tile_size is not None:
            if self.overlap is not None and 2 * self.overlap >= self.tile_size:
                raise ValueError(
                    f"overlap {self.overlap} px leaves no tile centre in {self.tile_size}-px tiles; "
                    f"use an overlap < {self.tile_size // 2}"
                )
            if self.margin is not None and 2 * self.margin >= self.tile_size:
                raise ValueError(
                    f"margin {self.margin} px leaves no core in {self.tile_size}-px tiles; "
                    f"use a margin < {self.tile_size // 2}"
                )
        if self.margin is not None and self.stitching != "crop":
            raise ValueError("margin applies to stitching='crop' only; use overlap for blend")
        if self.blend_border is not None and self.stitching != "blend":
            raise ValueError("blend_border applies to stitching='blend' only")
        return self

    def resolve_tiling(self, description: ModelDescription) -> TilingPlan:
        """Fill tile size, overlap/margin and border from the model and check them against it.

        Raises:
            ConfigError: If the tile is not a multiple of the network's output stride, or the
                overlap, margin or border do not fit.
        """
        tile = self.tile_size or description.tile_size
        stride = description.architecture.output_stride
        if tile % stride:
            lower = max(stride, tile // stride * stride)
            raise ConfigError(
                f"tile size {tile} px is not a multiple of the network's output stride {stride}; "
                f"use {lower} or {lower + stride}"
            )
        overlap = self.overlap if self.overlap is not None else min(description.overlap, (tile - 1) // 2)
        margin = self.margin if self.margin is not None else min(description.overlap, (tile - 1) // 2)
        if self.stitching == "crop":
            if 2 * margin >= tile:
                raise ConfigError(
                    f"margin {margin} px leaves no core in {tile}-px tiles; use a margin < {tile // 2}"
                )
            return TilingPlan(tile, "crop", 0, margin, 0)
        if 2 * overlap >= tile:
            raise ConfigError(
                f"overlap {overlap} px leaves no tile centre in {tile}-px tiles; use an overlap < {tile // 2}"
            )
        border = self.blend_border if self.blend_border is not None else overlap // 8
        if overlap and 2 * border >= overlap:
            raise ConfigError(
                f"blend border {border} px leaves no ramp in an overlap of {overlap} px; "
                f"use a border < {(overlap + 1) // 2}"
            )
        if not overlap and border:
            raise ConfigError("a blend border needs an overlap; set overlap > 2 x border or border 0")
        return TilingPlan(tile, "blend", overlap, 0, border)


@dataclass(frozen=True, slots=True)
class TilingPlan:
    """Resolved tiling: tile edge, mode, blend overlap and border, crop margin (pixels)."""

    tile: int
    mode: Literal["blend", "crop"]
    overlap: int
    margin: int
    border: int


#: Dotted keys of :class:`DetectConfig` holding paths (relative to the YAML file's folder).
PATH_KEYS = ("inputs", "output", "model", "metadata_json")


def load_detect_config(
    path: Path | None = None,
    overrides: Sequence[str] = (),
    flags: Mapping[str, Any] | None = None,
    *,
    flag_names: Mapping[str, str] | None = None,
) -> Loaded[DetectConfig]:
    """Build a :class:`DetectConfig` from our detect YAML or IGN's ``flair-1-config-detect.yaml``.

    Precedence: *flags* > *overrides* (``--set key=value``) > the YAML file > defaults. IGN's file is
    recognised by its keys and mapped by :func:`flair_deploy.ign.convert_ign_detect`; relative paths in
    our YAML are relative to its folder (IGN's, like IGN's tool, to the working directory).

    Returns:
        The validated config and notes on IGN keys that were ignored or approximated.

    Raises:
        ConfigError: One line naming the option or key, the value and what is allowed.
    """
    data: dict[str, Any] = {}
    notes: tuple[str, ...] = ()
    origins: dict[str, str] = {}
    if path is not None:
        raw = read_yaml(path)
        if is_ign_detect_config(raw):
            mapping = convert_ign_detect(raw, source=str(path))
            data, notes, origins = mapping.values, mapping.notes, mapping.origins
        else:
            data = resolve_paths(raw, path.resolve().parent, PATH_KEYS)
    cfg = build_config(
        DetectConfig,
        data,
        overrides,
        flags,
        source=str(path) if path else "detect",
        flag_names=flag_names,
        origins=origins,
    )
    return Loaded(cfg, notes)
