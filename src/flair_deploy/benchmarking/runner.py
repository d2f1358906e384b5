"""Run a benchmark: plan the cases, measure each, compare with the FP32 reference, collect a report.

For every runnable case and tile size one backend is created and activated (its creation and
activation time is the row's ``setup_s``: session creation, engine deserialisation), then every batch
size is measured on it (each batch's untimed first calls are its ``warmup_s``: torch.compile compilation
and CUDA-graph capture happen there). With a raster, each measured configuration is also run end to end
through detect's pipeline on the same backend.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping

import numpy as np
import numpy.typing as npt

from flair_deploy.artifacts import Describer, given_description
from flair_deploy.benchmarking.fingerprint import (
    Ceiling,
    Fingerprint,
    collect_fingerprint,
    cpu_ceiling,
    gpu_ceiling,
    measure_peak_gflops,
)
from flair_deploy.benchmarking.model_only import compare_logits, measure_model_only, reference_logits
from flair_deploy.benchmarking.plan import BenchmarkConfig, Case, parity_reference, plan_cases
from flair_deploy.benchmarking.report import BenchmarkReport, Mode, Row, Status
from flair_deploy.benchmarking.workload import gflop_per_tile, raster_tiles
from flair_deploy.description import ModelDescription, Precision
from flair_deploy.errors import FlairDeployError
from flair_deploy.inference.backends import Backend, BackendName, available_backends, create_backend
from flair_deploy.sample import sample_tiles

__all__ = ["BackendOpener", "RowCallback", "open_backend", "resolve_ceilings", "run_benchmark"]

Array = npt.NDArray[np.float32]

#: Creates the (inactive) backend for a case at a tile size; tests inject fakes here.
BackendOpener = Callable[[Case, int | None, BenchmarkConfig], Backend]
#: Called with each row as soon as it is known (progress display).
RowCallback = Callable[[Row], None]


def _describer(cfg: BenchmarkConfig) -> Describer | None:
    """What describes the undescribed models of the run; with several models, it is meant for those.

    In a run of several models, a self-describing artifact keeps its own description whatever the
    preset or IGN config says (they describe IGN's weights, e.g. ``-m ign.pth -m ign.fp16.onnx``);
    with one model, a disagreement is an error as in every other command.
    """
    given = given_description(cfg.describer())
    if given is None or len(cfg.models) == 1:
        return given
    return dataclasses.replace(given, check=False)


def open_backend(case: Case, tile: int | None, cfg: BenchmarkConfig) -> Backend:
    """Create the (inactive) backend of a runnable *case* at *tile* px (the default :data:`BackendOpener`).

    Raises:
        BackendError: When the backend cannot be created (runtime missing, wrong precision...).
    """
    if case.artifact is None:  # pragma: no cover - planned cases without an artifact are skipped
        raise FlairDeployError(f"no artifact for {case.backend} {case.precision}")
    options = dict(case.options)
    if options.get("provider") == "tensorrt":
        # The TensorRT provider builds one engine for one profile: make it this tile and these batches.
        # min 1: parity batches can be smaller than any benchmarked batch.
        options.setdefault("profile_batches", (1, max(cfg.batches), max(cfg.batches)))
        if tile is not None:
            options.setdefault("profile_tile", tile)
    return create_backend(
        case.backend,
        case.artifact,
        device=cfg.device,
        precision=case.request_precision,
        options=options,
        preset=_describer(cfg),
    )


def resolve_ceilings(cfg: BenchmarkConfig, fp: Fingerprint) -> dict[Precision, Ceiling]:
    """Hardware ceilings per precision for the run's device.

    The anchor precision is FP32 on a CPU and FP16 on a GPU. Its ceiling is ``cfg.peak_gflops`` when
    given, else measured (``cfg.measure_peak``), else estimated (SIMD formula on CPUs, datasheet on
    GPUs); the other precisions keep the estimate's ratio to the anchor.

    Returns:
        Ceilings per precision (empty for an unknown GPU without --peak-gflops or --measure-peak).
    """
    cuda = cfg.device.startswith("cuda")
    anchor = Precision.FP16 if cuda else Precision.FP32
    estimate: dict[Precision, Ceiling] = {}
    for p in Precision:
        c = gpu_ceiling(fp.gpu_name or "", p) if cuda else cpu_ceiling(fp, p)
        if c is not None:
            estimate[p] = c
    given: Ceiling | None = None
    if cfg.peak_gflops is not None:
        given = Ceiling(precision=anchor, gflops=cfg.peak_gflops, source="given with --peak-gflops")
    elif cfg.measure_peak:
        given = measure_peak_gflops(cfg.device, anchor)
    if given is None:
        return estimate
    out = {anchor: given}
    for p in Precision:
        if p is anchor:
            continue
        if anchor in estimate and p in estimate:
            ratio = estimate[p].gflops / estimate[anchor].gflops
            out[p] = Ceiling(
                precision=p,
                gflops=round(given.gflops * ratio, 1),
                source=f"{given.source} x {ratio:g} ({p.value}/{anchor.value} ratio of the estimate)",
            )
        else:
            out[p] = Ceiling(
                precision=p, gflops=given.gflops, source=f"{given.source} ({anchor.value} figure)"
            )
    return out


class _Workload:
    """Tiles per (tile size, bands, dtype), and the reference logits per tile size, built once."""

    def __init__(self, cfg: BenchmarkConfig, opener: BackendOpener) -> None:
        self.cfg = cfg
        self.opener = opener
        self.count = max(max(cfg.batches), cfg.parity_tiles)
        self._tiles: dict[tuple[int, tuple[str, ...], str], Array] = {}
        self._refs: dict[int, tuple[ModelDescription, Array] | None] = {}
        ref = parity_reference(cfg)
        self.reference = ref
        self.reference_label = (
            f"{ref[0].value} fp32 cpu on {ref[1].name}, {cfg.parity_tiles} tiles"
            if ref and cfg.parity_tiles
            else None
        )

    def tiles(self, desc: ModelDescription, tile: int) -> Array:
        key = (tile, desc.bands, desc.input_dtype)
        if key not in self._tiles:
            if self.cfg.raster is not None:
                self._tiles[key] = raster_tiles(self.cfg.raster, desc, self.count, tile)
            else:
                self._tiles[key] = sample_tiles(desc, self.count, tile)
        return self._tiles[key]

    def reference_logits(self, tile: int) -> tuple[ModelDescription, Array] | None:
        if self.reference is None or not self.cfg.parity_tiles:
            return None
        if tile not in self._refs:
            backend_name, artifact = self.reference
            # Always on the CPU at FP32: on a GPU, torch's convolutions would use TF32 by default.
            ref_cfg = self.cfg.model_copy(update={"device": "cpu"})
            case = Case(backend_name, Precision.FP32, "reference", artifact, {}, Precision.FP32)
            try:
                with self.opener(case, tile, ref_cfg) as backend:
                    tiles = self.tiles(backend.description, tile)[: self.cfg.parity_tiles]
                    logits = reference_logits(backend, tiles, batch=min(4, len(tiles)))
                    self._refs[tile] = (backend.description, logits)
            except FlairDeployError as exc:
                # No reference is no reason to drop the speed rows: parity columns stay empty.
                self._refs[tile] = None
                self.reference_label = f"unavailable ({_first_line(exc)})"
        return self._refs[tile]


def _skip_row(
    case: Case,
    reason: str,
    *,
    status: Status = Status.SKIPPED,
    tile: int | None = None,
    batch: int | None = None,
    device: str,
) -> Row:
    return Row(
        mode=Mode.MODEL_ONLY,
        model=case.artifact.name if case.artifact else "–",
        backend=case.backend.value,
        precision=case.precision,
        variant=case.variant,
        device=device,
        batch=batch,
        tile=tile,
        status=status,
        reason=reason,
        artifact=str(case.artifact) if case.artifact else None,
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def run_benchmark(
    cfg: BenchmarkConfig,
    *,
    on_row: RowCallback | None = None,
    opener: BackendOpener | None = None,
    end_to_end: Callable[..., Row] | None = None,
) -> BenchmarkReport:
    """Benchmark every configuration of *cfg* and return the report.

    Args:
        cfg: The run configuration.
        on_row: Called with each row as soon as it is measured or skipped.
        opener: Creates backends (default: :func:`~flair_deploy.inference.backends.create_backend`).
        end_to_end: Runs one end-to-end row (default:
            :func:`~flair_deploy.benchmarking.end_to_end.run_end_to_end`).

    Returns:
        The report: fingerprint, ceilings, parity reference, settings and rows.

    Raises:
        ConfigError: If a model file does not exist.
        BackendError: For an unknown device.
    """
    from flair_deploy.errors import ConfigError

    for m in cfg.models:
        if not m.is_file():
            raise ConfigError(f"model file {m} does not exist; give a checkpoint, .onnx or engine path")
    if cfg.raster is not None and not cfg.raster.is_file():
        raise ConfigError(f"raster {cfg.raster} does not exist; give a GeoTIFF or VRT path")
    open_case = opener or open_backend
    if end_to_end is None:
        from flair_deploy.benchmarking.end_to_end import run_end_to_end

        end_to_end = run_end_to_end
    available = available_backends(cfg.device)
    fp = collect_fingerprint(cfg.device)
    ceilings = resolve_ceilings(cfg, fp)
    cases = plan_cases(cfg, available, fp.ort_providers)
    work = _Workload(cfg, open_case)
    rows: list[Row] = []

    def emit(row: Row) -> None:
        rows.append(row)
        if on_row is not None:
            on_row(row)

    for case in cases:
        if case.skip is not None:
            emit(_skip_row(case, case.skip, device=cfg.device))
            continue
        for tile_opt in cfg.tiles or (None,):
            try:
                start = time.perf_counter()
                backend = open_case(case, tile_opt, cfg)
                backend.__enter__()
                setup = time.perf_counter() - start
            except FlairDeployError as exc:
                emit(_skip_row(case, _first_line(exc), tile=tile_opt, device=cfg.device))
                continue
            try:
                _run_case(
                    case,
                    backend,
                    tile_opt or backend.description.tile_size,
                    setup,
                    cfg,
                    work,
                    ceilings,
                    emit,
                    end_to_end,
                )
            finally:
                backend.__exit__(None, None, None)
    settings = {
        "min_time_s": cfg.min_time,
        "min_iters": cfg.min_iters,
        "warmup_iters": cfg.warmup_iters,
        "tiles_from": str(cfg.raster) if cfg.raster else "sample world (flair_deploy.sample)",
        "threads": cfg.threads or "runtime default",
        "device": cfg.device,
    }
    return BenchmarkReport(
        fingerprint=fp,
        ceilings=list(ceilings.values()),
        parity_reference=work.reference_label,
        settings=settings,
        rows=rows,
    )


def _run_case(
    case: Case,
    backend: Backend,
    tile: int,
    setup: float,
    cfg: BenchmarkConfig,
    work: _Workload,
    ceilings: Mapping[Precision, Ceiling],
    emit: Callable[[Row], None],
    end_to_end: Callable[..., Row],
) -> None:
    desc = backend.description
    tiles = work.tiles(desc, tile)
    # The null backend runs no network: no FLOPs, no fraction of the hardware ceiling.
    gflop = None if case.backend is BackendName.NULL else gflop_per_tile(desc, tile)
    ceiling = ceilings.get(case.precision)
    ref = work.reference_logits(tile)
    for batch in cfg.batches:
        if backend.max_batch is not None and batch > backend.max_batch:
            emit(
                _skip_row(
                    case,
                    f"batch {batch} exceeds this artifact's maximum batch {backend.max_batch}",
                    tile=tile,
                    batch=batch,
                    device=backend.device,
                )
            )
            continue
        try:
            res = measure_model_only(
                backend,
                tiles[:batch],
                min_time=cfg.min_time,
                min_iters=cfg.min_iters,
                warmup_iters=cfg.warmup_iters,
            )
            parity = None
            # The null backend's logits are a fixed field, not the model's: no parity to report.
            if (
                case.backend is not BackendName.NULL
                and ref is not None
                and ref[0].num_classes == desc.num_classes
                and ref[0].bands == desc.bands
            ):
                ref_tiles = tiles[: len(ref[1])]
                parity = compare_logits(reference_logits(backend, ref_tiles, batch), ref[1], desc.active_mask)
        except FlairDeployError as exc:
            emit(
                _skip_row(
                    case,
                    _first_line(exc),
                    status=Status.FAILED,
                    tile=tile,
                    batch=batch,
                    device=backend.device,
                )
            )
            continue
        lat = res.latency
        tps = batch / lat.p50
        achieved = tps * gflop if gflop is not None else None
        row = Row(
            mode=Mode.MODEL_ONLY,
            model=case.artifact.name if case.artifact else "–",
            backend=case.backend.value,
            precision=backend.precision,
            variant=case.variant,
            device=backend.device,
            batch=batch,
            tile=tile,
            status=Status.OK,
            setup_s=setup,
            warmup_s=lat.warmup,
            iterations=lat.iterations,
            p50_ms=lat.p50 * 1e3,
            p90_ms=lat.p90 * 1e3,
            p99_ms=lat.p99 * 1e3,
            mean_ms=lat.mean * 1e3,
            tiles_per_s=tps,
            mpx_per_s=tps * tile * tile / 1e6,
            gflop_per_tile=gflop,
            achieved_gflops=achieved,
            ceiling_gflops=ceiling.gflops if ceiling else None,
            ceiling_fraction=achieved / ceiling.gflops if achieved is not None and ceiling else None,
            peak_rss_mib=res.peak_rss_mib,
            peak_device_mib=res.peak_device_mib,
            argmax_agreement=parity.argmax_agreement if parity else None,
            max_abs_dlogit=parity.max_abs_dlogit if parity else None,
            stages=res.stages,
            artifact=str(case.artifact) if case.artifact else None,
        )
        emit(row)
        if cfg.raster is not None:
            emit(end_to_end(backend, row=row, raster=cfg.raster, ceiling=ceiling))
