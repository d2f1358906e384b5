"""``detect`` configuration: :class:`DetectConfig` and :func:`load_detect_config`.

A :class:`DetectConfig` is frozen and validated once (unknown keys are errors). The tiling values it
holds are checked by the tiling rules' one home (:func:`~flair_deploy.inference.tiling.check_tiling`);
those that depend on the model (tile size, overlap, margin default to the model description's) are
resolved by :meth:`DetectConfig.resolve_tiling` into a
:class:`~flair_deploy.inference.tiling.TilingPlan`.

:func:`load_detect_config` reads our detect YAML or IGN's detect config as it is (mapped by
:func:`flair_deploy.ign.convert_ign_detect`: IGN's 0-based class indices and margin cropping, without
IGN's off-by-one write window); keys with no equivalent are reported, never silently dropped.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import Field, model_validator

from flair_deploy.choices import Compression, Stitching
from flair_deploy.config import DescribesWeights, FrozenConfig, Loaded, build_config, read_yaml, resolve_paths
from flair_deploy.description import ModelDescription, Precision
from flair_deploy.errors import ConfigError
from flair_deploy.ign import convert_ign_detect, is_ign_detect_config, weights_config
from flair_deploy.inference.sources import FLAIR_ELEVATION_SCALE, RESAMPLINGS
from flair_deploy.inference.tiling import TilingPlan, check_tiling, plan_tiling

__all__ = [
    "BandSourcesConfig",
    "Compression",
    "DetectConfig",
    "PatchSourcesConfig",
    "Stitching",
    "default_batch_size",
    "load_detect_config",
]


def default_batch_size(device: str) -> int:
    """Tiles per inference call when none is configured: 1 on a CPU, 16 on a GPU (the engines' opt batch)."""
    return 1 if device.startswith("cpu") else 16


class _ProductOptions(FrozenConfig):
    """What band-source configs share: the elevation, its encoding, reprojection and resampling."""

    elevation: Path | None = None
    elevation_scale: float = FLAIR_ELEVATION_SCALE
    elevation_offset: float = 0.0
    reproject: bool = False
    resampling: Literal[RESAMPLINGS] | None = None  # type: ignore[valid-type]


class BandSourcesConfig(_ProductOptions):
    """The model's bands assembled from separate rasters (BD ORTHO products), instead of ``inputs``.

    Either ``rvb`` and ``irc`` (optionally ``elevation``), giving R, G, B, NIR (, E), or ``band``: one
    ``PATH[:BAND][*SCALE][+OFFSET]`` per model band. See :mod:`flair_deploy.inference.sources` and
    docs/bd-ortho.md.

    Attributes:
        rvb: BD ORTHO RVB ortho (R, G, B): one tile, or a folder of tiles matched by IGN names.
        irc: BD ORTHO IRC ortho (NIR, R, G) of the same tile(s).
        band: Explicit sources, one per model band in its order, instead of rvb/irc/elevation.
        elevation: Height above ground in metres: one file for every tile (a VRT mosaic), or a folder
            of tiles matched by name.
        elevation_scale: Units of E per metre of height (FLAIR: 5, one unit = 0.2 m).
        elevation_offset: Added to E after scaling.
        reproject: Warp sources in another CRS onto the RVB ortho's grid (else they are refused).
        resampling: Kernel for sources on another grid; None: bilinear for floating-point sources
            (elevation), nearest for integer ones.
    """

    rvb: Path | None = None
    irc: Path | None = None
    band: tuple[str, ...] = ()


class PatchSourcesConfig(_ProductOptions):
    """``evaluate`` on BD ORTHO patches: the patch list's images are RVB rasters, completed per row.

    Each row's IRC raster and elevation are found by
    :func:`~flair_deploy.inference.sources.find_partner` (same IGN tile corner, else same name with RVB
    → IRC) and the row is read as a VRT of R, G, B, NIR (, E). See docs/bd-ortho.md.

    Attributes:
        irc: Folder of IRC rasters (NIR, R, G), or one file.
        elevation: Height above ground in metres: one file (a mosaic) or a folder; None for 4 bands.
        elevation_scale: Units of E per metre of height (FLAIR: 5, one unit = 0.2 m).
        elevation_offset: Added to E after scaling.
        reproject: Warp sources in another CRS onto each RVB image's grid (else they are refused).
        resampling: Kernel for sources on another grid; None: bilinear for floating-point sources,
            nearest for integer ones.
    """

    irc: Path


class DetectConfig(DescribesWeights):
    """Everything one ``detect`` run needs.

    Attributes:
        inputs: Input rasters (GeoTIFF, VRT, any GDAL raster); one output set per input.
        sources: Assemble the inputs from separate band rasters instead (BD ORTHO RVB, IRC and an
            elevation model); exclusive with ``inputs``.
        output: Output ``.tif`` (one input) or folder.
        model: Model file (``.onnx``, ``.ckpt``/``.pth``/``.safetensors``, ``.engine``).
        backend: ``torch``, ``onnxruntime`` or ``tensorrt``; None chooses from the model file.
        device: ``cpu``, ``cuda`` or ``cuda:<i>``.
        precision: Requested precision; None = the artifact's own.
        preset, ign_config: What describes weights that carry none (see
            :class:`~flair_deploy.config.DescribesWeights`).
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
        readers: Reader threads (each opens its own dataset handle); None = half the physical cores,
            2 to 8 (:meth:`reader_threads`).
        prefetch: Input strips (block-aligned rows of a chunk, at least 256) read ahead of inference
            (bounds memory: back-pressure); None = one per reader thread.
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
            with input blocks that are read once, so memory would grow with the raster; inputs are read
            in block-aligned strips and outputs written a row of blocks at a time, so a small cache
            loses nothing.
        chunk_mb: Stitching memory budget, MiB: the output is cut into strips as wide as this allows
            (accumulators of one tile row over the strip's width), so memory does not grow with the
            raster's width; tiles on strip boundaries are computed for both strips.
        workers: Map the chunks on this many Ray actors (one backend session each: one per GPU, or
            per group of CPU cores); None maps in this process. Needs ``flair-deploy[distributed]``.
        ray_address: Ray cluster to join (``RAY_ADDRESS`` when unset); none starts a local instance.
        merge: With ``workers`` and several inputs, also merge the mosaic (``mosaic.vrt``, always
            written then) into one Cloud-Optimised GeoTIFF, ``mosaic.tif``.
    """

    inputs: tuple[Path, ...] = ()
    sources: BandSourcesConfig | None = None
    output: Path
    model: Path | None = None
    backend: Literal["torch", "onnxruntime", "tensorrt"] | None = None
    device: str = "cpu"
    precision: Precision | None = None
    backend_options: dict[str, Any] = Field(default_factory=dict)
    bands: tuple[Annotated[int, Field(ge=1)], ...] | None = None
    tile_size: Annotated[int, Field(gt=0)] | None = None
    overlap: Annotated[int, Field(ge=0)] | None = None
    margin: Annotated[int, Field(ge=0)] | None = None
    stitching: Stitching = Stitching.BLEND
    blend_border: Annotated[int, Field(ge=0)] | None = None
    pad_mode: Literal["reflect", "constant"] = "reflect"
    batch_size: Annotated[int, Field(ge=1, le=1024)] | None = None
    readers: Annotated[int, Field(ge=1, le=64)] | None = None
    prefetch: Annotated[int, Field(ge=1, le=64)] | None = None
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
    gdal_cache_mb: Annotated[int, Field(ge=16, le=65536)] = 64
    chunk_mb: Annotated[int, Field(ge=1, le=1 << 20)] = 192
    workers: Annotated[int, Field(ge=1, le=4096)] | None = None
    ray_address: str | None = None
    merge: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        # What can be checked before the model is known, by the same rules and messages as the plan.
        try:
            check_tiling(
                self.stitching,
                tile=self.tile_size,
                overlap=self.overlap,
                margin=self.margin,
                border=self.blend_border,
            )
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        if not self.inputs and self.sources is None:
            raise ValueError("no input given; give RASTER... (or inputs: in --config), or --rvb and --irc")
        if self.inputs and self.sources is not None:
            raise ValueError(
                "both RASTER... and band sources (--rvb/--irc/--band) were given; give one of them"
            )
        if self.sources is not None and self.workers is not None:
            raise ValueError(
                "--workers does not take band sources (--rvb/--irc/--band) yet; map them without --workers, "
                "or write the VRTs with flair_deploy.inference.sources.assemble_bands and give those"
            )
        if self.merge and self.workers is None:
            raise ValueError("merge applies to --workers jobs; add --workers N (1 is fine) or drop --merge")
        return self

    def reader_threads(self) -> tuple[int, int]:
        """Return ``(readers, prefetch)``: the configured values, or the defaults.

        The defaults are half the physical cores (2 to 8), each reading one strip ahead: a GPU host
        must decode its tiles as fast as the GPU maps them.
        """
        from flair_deploy.inference.backends.base import physical_cores

        readers = self.readers or max(2, min(8, physical_cores() // 2))
        return readers, self.prefetch or readers

    def resolve_tiling(self, description: ModelDescription) -> TilingPlan:
        """The run's tiling plan: unset values from the model (:func:`~flair_deploy.inference.tiling.plan_tiling`).

        Raises:
            ConfigError: If the tile is not a multiple of the network's output stride, or the
                overlap, margin or border do not fit.
        """
        return plan_tiling(
            description,
            stitching=self.stitching,
            tile=self.tile_size,
            overlap=self.overlap,
            margin=self.margin,
            border=self.blend_border,
        )


#: Dotted keys of :class:`DetectConfig` holding paths (relative to the YAML file's folder).
PATH_KEYS = (
    "inputs",
    "output",
    "model",
    "metadata_json",
    "sources.rvb",
    "sources.irc",
    "sources.elevation",
)


def load_detect_config(
    path: Path | None = None,
    overrides: Sequence[str] = (),
    flags: Mapping[str, Any] | None = None,
    *,
    flag_names: Mapping[str, str] | None = None,
) -> Loaded[DetectConfig]:
    """Build a :class:`DetectConfig` from our detect YAML or IGN's detect or train config.

    Precedence: *flags* > *overrides* (``--set key=value``) > the YAML file > defaults. IGN's file is
    recognised by its keys and mapped by :func:`flair_deploy.ign.convert_ign_detect`; relative paths in
    our YAML are relative to its folder (IGN's, like IGN's tool, to the working directory). Both IGN
    files also describe IGN-layout weights (``ign_config``); IGN's train config only does that.

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
            # Its channels, norma_task, n_classes and model_framework describe IGN-layout weights.
            data = {**data, "ign_config": str(path)}
        elif (
            ign := weights_config(path, command="detect", bands_key="bands", raw=raw)
        ) is not None:  # IGN's train config
            data, notes = ign.values, ign.notes
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
