"""The library entry point of ``flair-deploy detect``: :func:`detect` and :func:`run_detection`.

:func:`detect` checks what it can without the model (files exist, outputs may be written, no other job
is writing them), creates the backend, checks every input against the model's description, and only
then writes anything. :func:`run_detection` does the same with a backend the caller already holds (the
benchmark reuses it for its end-to-end rows). Both return a :class:`DetectSummary`.

Concurrent jobs: each input's outputs are written under an :class:`~flair_deploy.atomic.OutputLock`,
taken before their temporaries exist and released after the rename, so a second job writing the same
output is refused with one line and never deletes the first one's temporaries.

Resuming: every output carries its :class:`~flair_deploy.ledger.JobSettings` as tags
(:func:`job_settings`). With ``resume``, an input whose outputs all exist is skipped only if they were
made with this run's settings; otherwise the run is refused, naming the first differing setting, or,
with ``overwrite`` as well, those outputs are recomputed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import rasterio
import rasterio.errors

from flair_deploy.atomic import (
    OutputLock,
    check_destination,
    check_free_space,
    check_unlocked,
    remove_stale_temporaries,
)
from flair_deploy.description import ModelDescription, file_sha256
from flair_deploy.errors import ConfigError, FlairDeployError, InputDataError, OutputError
from flair_deploy.flair_format import list_rasters
from flair_deploy.inference.config import DetectConfig, default_batch_size
from flair_deploy.inference.pipeline import MetadataFn, StageSeconds, check_backend_fits, run_raster
from flair_deploy.inference.raster import (
    OutputPaths,
    OutputWriter,
    RasterInfo,
    estimated_map_bytes,
    inspect_raster,
    plan_outputs,
)
from flair_deploy.inference.tiling import Tile, TilingPlan
from flair_deploy.ledger import JobSettings, OutputKind
from flair_deploy.maps import qgis_style_path

__all__ = [
    "DetectProgress",
    "DetectSummary",
    "assembled_config",
    "detect",
    "expand_inputs",
    "job_settings",
    "map_writer",
    "outputs_to_make",
    "run_detection",
]


@dataclass(frozen=True, slots=True)
class DetectProgress:
    """Progress of a run, passed to the progress callback after each batch.

    Attributes:
        raster: 1-based index of the raster being processed.
        rasters: Number of rasters to process.
        name: File name of the raster being processed.
        tiles_done: Tiles done in this raster.
        tiles_total: Tiles in this raster.
        pixels_done: Pixels done over all rasters so far.
        pixels_total: Pixels of all rasters to process.
    """

    raster: int
    rasters: int
    name: str
    tiles_done: int
    tiles_total: int
    pixels_done: int
    pixels_total: int


@dataclass(frozen=True, slots=True)
class DetectSummary:
    """What a ``detect`` run did and how fast.

    Attributes:
        outputs: Files written (class maps, then probabilities/confidence when requested).
        resumed: Inputs skipped because a previous run (or a concurrent job) had finished them with the
            same settings (``resume``).
        rasters: Rasters processed.
        tiles: Tiles in the grids.
        tiles_skipped: Tiles skipped (all nodata).
        tiles_inferred: Tiles run through the network.
        pixels: Pixels covered.
        km2: Ground area covered, km².
        seconds: Per-stage seconds summed over rasters (``wall`` is the whole run).
        peak_rss_mb: Peak resident memory of the process, MiB.
        backend: Backend summary (``name precision device``).
        precision: Precision the network ran at.
        stitching: Stitching and tiling, e.g. ``blend tile=512 overlap=128 border=16``.
        notes: Remarks worth showing the user (ignored options...).
    """

    outputs: tuple[Path, ...]
    resumed: tuple[Path, ...]
    rasters: int
    tiles: int
    tiles_skipped: int
    tiles_inferred: int
    pixels: int
    km2: float
    seconds: StageSeconds
    peak_rss_mb: float
    backend: str
    precision: str
    stitching: str
    notes: tuple[str, ...] = ()

    @property
    def mpx_per_s(self) -> float:
        """Raster megapixels per wall-clock second."""
        return self.pixels / 1e6 / self.seconds.wall if self.seconds.wall > 0 else 0.0

    @property
    def tiles_per_s(self) -> float:
        """Inferred tiles per wall-clock second."""
        return self.tiles_inferred / self.seconds.wall if self.seconds.wall > 0 else 0.0

    @property
    def busy(self) -> float:
        """Share of the wall time the backend was busy (see :class:`StageSeconds`)."""
        return self.seconds.busy

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (for benchmark reports)."""
        s = self.seconds
        return {
            "outputs": [str(p) for p in self.outputs],
            "resumed": [str(p) for p in self.resumed],
            "rasters": self.rasters,
            "tiles": self.tiles,
            "tiles_skipped": self.tiles_skipped,
            "tiles_inferred": self.tiles_inferred,
            "pixels": self.pixels,
            "km2": self.km2,
            "seconds": dataclasses.asdict(s),
            "busy": self.busy,
            "mpx_per_s": self.mpx_per_s,
            "tiles_per_s": self.tiles_per_s,
            "peak_rss_mb": self.peak_rss_mb,
            "backend": self.backend,
            "precision": self.precision,
            "stitching": self.stitching,
            "notes": list(self.notes),
        }


def expand_inputs(inputs: Sequence[Path]) -> list[Path]:
    """Expand folders into the rasters they hold (:data:`~flair_deploy.flair_format.RASTER_SUFFIXES`, sorted).

    Raises:
        InputDataError: For a missing path or a folder with no raster.
    """
    out: list[Path] = []
    for p in inputs:
        if p.is_dir():
            out.extend(list_rasters(p))
        elif not p.exists():
            raise InputDataError(f"input raster {p} does not exist; check the path")
        else:
            out.append(p)
    return out


def detect(
    cfg: DetectConfig,
    *,
    progress: Callable[[DetectProgress], None] | None = None,
) -> DetectSummary:
    """Run ``detect``: create the backend from ``cfg.model`` and map every input raster.

    Args:
        cfg: The run configuration.
        progress: Called after each batch.

    Returns:
        The run summary.

    Raises:
        FlairDeployError: Any user error (bad input, unwritable output, backend failure), raised
            before an output file is created whenever it can be detected up front.
        OutputError: If another job is writing an output, or (``resume``) a finished output was made
            with other settings and ``overwrite`` was not given; one line naming the holder or the
            setting.
    """
    if cfg.model is None:
        raise ConfigError("no model given; pass --model MODEL.onnx (or .ckpt, .pth, .engine)")
    if cfg.sources is not None:  # BD ORTHO products: the same run on VRTs that exist while it lasts
        with assembled_config(cfg) as assembled:
            return detect(assembled, progress=progress)
    planned = _plan_run_outputs(cfg)  # cheap checks first: a typo must not wait for a model to load
    from flair_deploy.inference.backends import create_backend

    backend = create_backend(
        cfg.backend,
        cfg.model,
        device=cfg.device,
        precision=cfg.precision,
        options=cfg.backend_options or None,
        preset=cfg.describer(),
    )
    sha = backend.description.provenance.source_sha256 or file_sha256(cfg.model)
    with backend:
        return _run(backend, cfg, planned, progress=progress, model_sha256=sha)


@dataclass(frozen=True, slots=True)
class _RunOutputs:
    """The inputs of a run with their outputs: all of them, those still to make, and those finished.

    *finished* (``resume`` only) are skipped once their tags show this run's settings, which are known
    only when the backend is.
    """

    plans: tuple[OutputPaths, ...]
    todo: tuple[OutputPaths, ...]
    finished: tuple[OutputPaths, ...] = ()


def _plan_run_outputs(cfg: DetectConfig) -> _RunOutputs:
    plans = plan_outputs(
        expand_inputs(cfg.inputs), cfg.output, probabilities=cfg.probabilities, confidence=cfg.confidence
    )
    todo, finished = _check_outputs(plans, cfg)
    return _RunOutputs(tuple(plans), tuple(todo), tuple(finished))


def job_settings(
    cfg: DetectConfig,
    description: ModelDescription,
    plan: TilingPlan,
    *,
    precision: str,
    model_sha256: str | None,
) -> JobSettings:
    """The settings the maps of a run depend on (written as their tags, compared by ``resume``).

    Args:
        cfg: The run configuration.
        description: The model's description.
        plan: The run's tiling (``cfg.resolve_tiling(description)``).
        precision: Precision the backend runs at.
        model_sha256: SHA-256 of the model's weights, if known.
    """
    outputs: tuple[OutputKind, ...] = ("classes",)
    if cfg.probabilities:
        outputs += ("probabilities",)
    if cfg.confidence:
        outputs += ("confidence",)
    return JobSettings(
        model_sha256=model_sha256 or description.provenance.source_sha256 or "unknown",
        model_name=description.name,
        precision=precision,
        stitching=_stitching_label(plan),
        class_values="logit indices" if cfg.indices else "FLAIR class codes",
        tile=plan.tile,
        # inspect_raster takes the first bands when none are mapped: the same for every input.
        bands=tuple(cfg.bands) if cfg.bands is not None else tuple(range(1, description.in_channels + 1)),
        pad_mode=cfg.pad_mode,
        outputs=outputs,
        block=cfg.block_size,
    )


def run_detection(
    backend: Any,
    cfg: DetectConfig,
    *,
    progress: Callable[[DetectProgress], None] | None = None,
    model_sha256: str | None = None,
) -> DetectSummary:
    """Map every input raster with an *active* backend (``cfg.model`` and backend options are unused).

    Args:
        backend: A backend inside ``with backend:``.
        cfg: The run configuration.
        progress: Called after each batch.
        model_sha256: SHA-256 of the model file, for the output tags.

    Returns:
        The run summary.

    Raises:
        FlairDeployError: Any user error, raised before an output is created where possible (see
            :func:`detect`).
    """
    if cfg.sources is not None:
        with assembled_config(cfg) as assembled:
            return run_detection(backend, assembled, progress=progress, model_sha256=model_sha256)
    return _run(backend, cfg, _plan_run_outputs(cfg), progress=progress, model_sha256=model_sha256)


@contextlib.contextmanager
def assembled_config(cfg: DetectConfig) -> Iterator[DetectConfig]:
    """*cfg* with its band sources assembled into VRTs as ``inputs``, for the duration of the block.

    One VRT per BD ORTHO tile (:func:`~flair_deploy.inference.sources.plan_band_inputs`), named after the
    RVB tile so the maps are too, in a hidden folder beside the first map that is removed when the block
    ends (:func:`~flair_deploy.inference.sources.assembled_inputs`). A *cfg* without sources is yielded
    as it is.

    Raises:
        FlairDeployError: Inconsistent sources, unmatched tiles, a source that is missing, lacks the band
            asked for, is in another CRS without ``reproject`` or does not cover its tile (one line).
    """
    s = cfg.sources
    if s is None:
        yield cfg
        return
    from flair_deploy.inference.sources import assembled_inputs, plan_band_inputs

    inputs = plan_band_inputs(
        rvb=s.rvb,
        irc=s.irc,
        elevation=s.elevation,
        bands=s.band,
        elevation_scale=s.elevation_scale,
        elevation_offset=s.elevation_offset,
        resampling=s.resampling,
    )
    first = plan_outputs(
        [Path(f"{i.name}.vrt") for i in inputs],
        cfg.output,
        probabilities=cfg.probabilities,
        confidence=cfg.confidence,
    )[0].classes
    with assembled_inputs(inputs, first, reproject=s.reproject) as vrts:
        yield cfg.model_copy(update={"inputs": vrts, "sources": None})


def _run(
    backend: Any,
    cfg: DetectConfig,
    planned: _RunOutputs,
    *,
    progress: Callable[[DetectProgress], None] | None,
    model_sha256: str | None,
) -> DetectSummary:
    start = time.perf_counter()
    description: ModelDescription = backend.description
    notes: list[str] = []
    if cfg.expected_classes is not None and cfg.expected_classes != description.num_classes:
        raise ConfigError(
            f"the config expects {cfg.expected_classes} classes (n_classes) but model {description.name!r} "
            f"has {description.num_classes} logits; give matching weights or fix n_classes"
        )
    plan = cfg.resolve_tiling(description)
    # A TensorRT engine says which batch it is tuned for (its profile's opt); otherwise the device's default.
    batch_size = (
        cfg.batch_size
        or getattr(backend, "preferred_batch", None)
        or default_batch_size(str(getattr(backend, "device", "cpu")))
    )
    check_backend_fits(backend, plan.tile, batch_size)
    stitching = _stitching_label(plan)
    precision = str(getattr(backend, "precision", "fp32"))
    settings = job_settings(cfg, description, plan, precision=precision, model_sha256=model_sha256)
    todo, resumed = _resumable(planned, settings, cfg)
    # Every input is checked against the model before the first output exists.
    infos = [
        inspect_raster(
            p.source,
            description,
            bands=cfg.bands,
            allow_gsd_mismatch=cfg.allow_gsd_mismatch,
            assume_crs=cfg.assume_crs,
        )
        for p in todo
    ]
    _check_free_space(todo, infos, description, cfg)
    meta_factory = _metadata_factory(cfg, description, notes)
    for info in infos:
        if info.dtype != description.input_dtype:
            notes.append(
                f"{info.path.name} is {info.dtype} but the model was trained on {description.input_dtype} "
                "data: values are fed raw, check the result"
            )
    summary_line = backend.summary() if hasattr(backend, "summary") else str(getattr(backend, "name", "?"))
    # MODEL_NAME, MODEL_SHA256, PRECISION, STITCHING, CLASS_VALUES and JOB_SETTINGS: what resume checks.
    tags = {"FLAIR_DEPLOY_VERSION": _version(), "BACKEND": summary_line, **settings.to_tags()}
    pixels_total = sum(i.width * i.height for i in infos)
    outputs: list[Path] = []
    seconds = StageSeconds()
    tiles = skipped = inferred = rasters = 0
    pixels_before = 0
    km2 = 0.0
    # A bounded GDAL block cache keeps memory flat in the raster size (GDAL's default is 5 % of RAM).
    with rasterio.Env(GDAL_CACHEMAX=cfg.gdal_cache_mb * 2**20):
        for n, (out_paths, info) in enumerate(zip(todo, infos, strict=True), start=1):
            cb = None
            if progress is not None:
                cb = _raster_progress(progress, n, len(infos), info.path.name, pixels_before, pixels_total)
            # Locked from before the temporaries exist until after the rename.
            with _claimed(out_paths):
                if _finished_meanwhile(out_paths, cfg, settings):
                    resumed.append(out_paths.source)
                    continue
                writer = map_writer(cfg, info, out_paths, description, tags)
                with writer:
                    run = run_raster(
                        backend,
                        info,
                        writer,
                        plan,
                        chunk_budget_mb=cfg.chunk_mb,
                        batch_size=batch_size,
                        readers=cfg.reader_threads()[0],
                        prefetch=cfg.reader_threads()[1],
                        pad_mode=cfg.pad_mode,
                        metadata_fn=meta_factory(info) if meta_factory is not None else None,
                        probabilities=cfg.probabilities,
                        confidence=cfg.confidence,
                        progress=cb,
                    )
                    t_finish0 = time.perf_counter()
                # Overviews, COG conversion and renames happen when the writer closes: count them as writing.
                finish_s = time.perf_counter() - t_finish0
            rasters += 1
            seconds = seconds + dataclasses.replace(run.seconds, write=run.seconds.write + finish_s, wall=0.0)
            outputs.extend(out_paths.all())
            tiles += run.tiles
            skipped += run.skipped
            inferred += run.inferred
            pixels_before += run.pixels
            km2 += info.area_km2
    wall = time.perf_counter() - start
    seconds = dataclasses.replace(seconds, wall=wall)
    return DetectSummary(
        outputs=tuple(outputs),
        resumed=tuple(resumed),
        rasters=rasters,
        tiles=tiles,
        tiles_skipped=skipped,
        tiles_inferred=inferred,
        pixels=pixels_before,
        km2=km2,
        seconds=seconds,
        peak_rss_mb=peak_rss_mb(),
        backend=summary_line,
        precision=precision,
        stitching=stitching,
        notes=tuple(notes),
    )


def _check_outputs(
    plans: Sequence[OutputPaths], cfg: DetectConfig
) -> tuple[list[OutputPaths], list[OutputPaths]]:
    """Return the plans to run and (``resume``) those already finished, to check against the settings.

    Refuses outputs that another job is writing, existing outputs without --overwrite, and unwritable
    folders.

    Raises:
        OutputError: If an output is locked by another job, exists (and neither overwrite nor resume
            covers it), or its folder cannot be written.
    """
    todo: list[OutputPaths] = []
    finished: list[OutputPaths] = []
    for plan in plans:
        for p in plan.all():
            check_unlocked(p)
        if cfg.resume and plan.complete():
            finished.append(plan)
            continue
        existing = [p for p in plan.all() if p.exists()]
        if existing and not cfg.overwrite:
            hint = " (or --resume to skip finished rasters)" if len(plans) > 1 else ""
            raise OutputError(f"{existing[0]} exists; pass --overwrite to replace it{hint}")
        for p in plan.all():
            check_destination(p, overwrite=True)
            # Leftovers of killed runs never became outputs; a locked output's temporaries are kept.
            remove_stale_temporaries(p)
        for styled in plan.all():  # each map is written with its QGIS style
            remove_stale_temporaries(qgis_style_path(styled))
        todo.append(plan)
    return todo, finished


def map_writer(
    cfg: DetectConfig,
    info: RasterInfo,
    paths: OutputPaths,
    description: ModelDescription,
    tags: Mapping[str, str],
) -> OutputWriter:
    """The writer of one input's maps with the run's output options (compression, blocks, overviews...)."""
    return OutputWriter(
        info,
        paths,
        description,
        indices=cfg.indices,
        block=cfg.block_size,
        compress=cfg.compress,
        overviews=cfg.overviews,
        cog=cfg.cog,
        tags=dict(tags),
    )


def outputs_to_make(cfg: DetectConfig, settings: JobSettings) -> tuple[list[OutputPaths], list[Path]]:
    """The outputs a run makes and the inputs it skips, after every up-front check of ``detect``.

    The same checks for one process and for a distributed job: outputs locked by another job, existing
    outputs without ``overwrite``, unwritable folders, and (``resume``) finished outputs made with other
    settings.

    Raises:
        OutputError: One line naming the output and the cause.
    """
    return _resumable(_plan_run_outputs(cfg), settings, cfg)


def _resumable(
    planned: _RunOutputs, settings: JobSettings, cfg: DetectConfig
) -> tuple[list[OutputPaths], list[Path]]:
    """Split the finished plans: skipped (made with *settings*) or, with --overwrite, recomputed.

    Returns:
        The plans to run, in input order, and the inputs skipped.

    Raises:
        OutputError: If a finished output was made another way and --overwrite was not given.
    """
    redo: set[OutputPaths] = set()
    resumed: list[Path] = []
    for plan in planned.finished:
        reason = _made_differently(plan, settings)
        if reason is None:
            resumed.append(plan.source)
        elif cfg.overwrite:
            redo.add(plan)
        else:
            raise OutputError(reason)
    todo = [p for p in planned.plans if p in redo or p in planned.todo]
    return todo, resumed


#: How to fix an output that resume cannot take as finished.
_RECOMPUTE = "use --overwrite to recompute it"


def _made_differently(plan: OutputPaths, settings: JobSettings) -> str | None:
    """Why *plan*'s existing outputs are not this run's, as the one-line message, or None."""
    for path in plan.all():
        try:
            with rasterio.open(path) as ds:
                tags = ds.tags()
        except rasterio.errors.RasterioError as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            return f"{path} exists but is not a raster GDAL can read ({first}); {_RECOMPUTE}"
        try:
            recorded = JobSettings.from_tags(tags, source=str(path))
        except FlairDeployError as exc:
            return str(exc)  # names the tag and the fix
        if recorded is None:
            return (
                f"{path} has no flair-deploy job tags (MODEL_SHA256, PRECISION, STITCHING, CLASS_VALUES), "
                f"so --resume cannot tell how it was made; {_RECOMPUTE}"
            )
        diff = recorded.difference(settings)
        if diff is not None:
            return f"{path} was made with {diff}; {_RECOMPUTE}"
    return None


@contextlib.contextmanager
def _claimed(paths: OutputPaths) -> Iterator[None]:
    """Hold the :class:`OutputLock` of every output of one input."""
    with contextlib.ExitStack() as stack:
        for p in paths.all():
            stack.enter_context(OutputLock(p))
        yield


def _finished_meanwhile(paths: OutputPaths, cfg: DetectConfig, settings: JobSettings) -> bool:
    """Under the lock: True when another job finished these outputs, the same way, since planning.

    They did not exist when the run was planned (or ``overwrite`` replaces them anyway).

    Raises:
        OutputError: If another job wrote them otherwise, or without ``resume``.
    """
    existing = [p for p in paths.all() if p.exists()]
    if not existing or cfg.overwrite:
        return False
    if cfg.resume and paths.complete():
        reason = _made_differently(paths, settings)
        if reason is None:
            return True
        raise OutputError(reason)
    raise OutputError(
        f"{existing[0]} was written by another job while this one ran; pass --overwrite to replace it"
    )


def _check_free_space(
    todo: Sequence[OutputPaths], infos: Sequence[RasterInfo], description: ModelDescription, cfg: DetectConfig
) -> None:
    """Refuse a run whose outputs cannot fit, before the first tile is inferred."""
    by_folder: dict[Path, int] = {}
    for paths, info in zip(todo, infos, strict=True):
        folder = paths.classes.parent
        by_folder[folder] = by_folder.get(folder, 0) + estimated_map_bytes(
            info, paths, description, cog=cfg.cog
        )
    for folder, needed in by_folder.items():
        check_free_space(folder, needed, what="the class maps")


def _stitching_label(plan: TilingPlan) -> str:
    if plan.mode == "crop":
        return f"crop tile={plan.tile} margin={plan.margin}"
    return f"blend tile={plan.tile} overlap={plan.overlap} border={plan.border}"


def _raster_progress(
    progress: Callable[[DetectProgress], None], n: int, total: int, name: str, before: int, pixels_total: int
) -> Callable[[int, int, int], None]:
    def cb(done: int, tiles: int, pixels: int) -> None:
        progress(DetectProgress(n, total, name, done, tiles, before + pixels, pixels_total))

    return cb


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB.

    On Linux this is ``VmHWM`` of the current address space: unlike ``ru_maxrss``, it does not inherit
    the peak of a parent process that forked and exec'd this one (a benchmark spawning fresh runs).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    try:
        import resource

        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        # Linux reports KiB, macOS bytes.
        return float(kb) / (1024.0 * 1024.0) if sys.platform == "darwin" else float(kb) / 1024.0
    except ImportError:  # pragma: no cover - Windows
        import psutil

        return float(psutil.Process().memory_info().rss) / 2**20


def _version() -> str:
    from flair_deploy import __version__

    return __version__


# ---------------------------------------------------------------------- metadata models
def _metadata_factory(
    cfg: DetectConfig, description: ModelDescription, notes: list[str]
) -> Callable[[RasterInfo], MetadataFn] | None:
    """Return raster → (tile → metadata vector) for metadata models, None for image-only models.

    Raises:
        ConfigError: If the model needs metadata that was not given, or an unknown encoding.
    """
    given = [
        k for k in ("date", "time", "camera", "altitude", "metadata_json") if getattr(cfg, k) is not None
    ]
    if description.metadata is None:
        if given:
            notes.append(f"model takes no metadata: {', '.join(given)} ignored")
        return None
    from flair_deploy import aerial

    if description.metadata.encoding != aerial.AERIAL_ENCODING:
        raise ConfigError(
            f"model {description.name!r} uses metadata encoding {description.metadata.encoding!r}; this "
            f"flair-deploy encodes {aerial.AERIAL_ENCODING!r} only"
        )
    sidecar = _read_sidecar(cfg.metadata_json) if cfg.metadata_json is not None else {}

    def pick(key: str, *alts: str) -> Any:
        value = getattr(cfg, key)
        if value is not None:
            return value
        for k in (key, *alts):
            if k in sidecar:
                return sidecar[k]
        return None

    date, tod = pick("date"), pick("time")
    camera, altitude = pick("camera"), pick("altitude", "z", "patch_centroid_z")
    missing = [
        n for n, v in (("date", date), ("time", tod), ("camera", camera), ("altitude", altitude)) if v is None
    ]
    if missing:
        raise ConfigError(
            f"model {description.name!r} needs acquisition metadata; missing {', '.join(missing)}: pass "
            "--date YYYY-MM-DD --time HH:MM --camera NAME --altitude METRES or --metadata-json FILE"
        )
    template = aerial.AerialRecord.from_flair(
        {
            "patch_centroid_x": 0.0,
            "patch_centroid_y": 0.0,
            "patch_centroid_z": altitude,
            "camera": camera,
            "date": str(date),
            "time": str(tod),
        },
        source="detect metadata options",
    )

    def for_raster(info: RasterInfo) -> MetadataFn:
        transform, crs = info.transform, info.crs

        def vector(tile: Tile) -> npt.NDArray[np.float32]:
            col, row = tile.centre()
            x, y = transform * (col, row)
            lx, ly = aerial.to_lambert93(x, y, crs)
            rec = template.model_copy(update={"x": lx, "y": ly})
            out: npt.NDArray[np.float32] = aerial.encode_aerial(rec).astype(np.float32)
            return out

        return vector

    return for_raster


def _read_sidecar(path: Path) -> dict[str, Any]:
    """Read a metadata JSON: flat keys, or a FLAIR record (also a single-entry FLAIR file)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputDataError(f"cannot read metadata JSON {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise InputDataError(
            f"metadata JSON {path} is not valid JSON: {exc.msg} at line {exc.lineno}"
        ) from None
    if not isinstance(data, dict):
        raise InputDataError(f"metadata JSON {path} must be an object with date, time, camera, altitude")
    if len(data) == 1 and isinstance(next(iter(data.values())), dict):
        data = next(iter(data.values()))
    return dict(data)
