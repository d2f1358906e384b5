"""``detect --workers N``: the chunks of a job mapped on Ray, resumable, exactly once, surviving failures.

The driver (this process) plans every input's chunks exactly as the single-process path does, records
them in the job's :class:`~flair_deploy.ledger.Ledger`, and hands them to long-lived Ray actors, one per
GPU (``num_gpus=1``) or per group of CPU cores, each holding one backend session for the whole job.
At most ``in_flight`` chunks are queued per actor (bounded memory on the driver and in the object
store). A chunk is committed once: the worker writes its files under temporary names and renames
them, the driver checks the returned checksum against the file and commits it in the ledger. When all
chunks of a raster are committed, the raster's outputs are assembled from them by detect's own writer,
so the maps are those of a single-process run, pixel for pixel.

Faults: a worker process that dies (killed, out of memory, node lost) fails its chunks with a Ray
actor error: they go back to the queue and run on another actor (Ray restarts the dead one), at most
``max_attempts`` times each. A chunk whose input cannot be read fails with the reason and is not
retried; the others go on, and the job ends with exit status 1 and a summary naming the failed chunks
(rerunning the same command resumes: only uncommitted chunks are computed).

``ray_address`` (or ``RAY_ADDRESS``) joins a running cluster; otherwise a local Ray instance is started
for the job (no set-up needed). See docs/distributed.md for clusters and SLURM.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flair_deploy._optional import require
from flair_deploy.description import ModelDescription, file_sha256
from flair_deploy.distributed.chunks import ChunkResult, assemble, chunk_paths, map_chunk
from flair_deploy.errors import ConfigError, FlairDeployError
from flair_deploy.inference.chunks import Chunk
from flair_deploy.inference.config import DetectConfig, default_batch_size
from flair_deploy.inference.pipeline import StageSeconds, default_chunk_plan
from flair_deploy.inference.raster import OutputPaths, RasterInfo, inspect_raster
from flair_deploy.inference.tiling import TilingPlan, make_grid

__all__ = [
    "JobProgress",
    "JobSummary",
    "WorkerStats",
    "detect_on_ray",
    "failed_lines",
    "run_distributed",
    "summary_path",
]

#: Builds a backend inside a worker (tests pass fakes; the default creates it from the config).
BackendFactory = Callable[[], Any]


@dataclass(frozen=True, slots=True)
class JobProgress:
    """Where a distributed job stands (for the progress bar).

    Attributes:
        chunks_done: Chunks committed (including those committed by an earlier run).
        chunks_total: Chunks of the job.
        tiles_done: Tiles computed so far in this run.
        tiles_total: Tiles of the chunks this run computes.
        pixels_done: Output pixels committed in this run.
        km2_done: Ground area committed in this run.
        failed: Chunks failed for good.
        retries: Chunk attempts lost to dead workers so far.
    """

    chunks_done: int
    chunks_total: int
    tiles_done: int
    tiles_total: int
    pixels_done: int
    km2_done: float
    failed: int
    retries: int


@dataclass
class WorkerStats:
    """One worker's share of the job.

    Attributes:
        name: Worker name (``worker-0``...).
        chunks: Chunks it committed.
        tiles: Tiles it computed.
        busy_s: Seconds it spent mapping chunks.
        lost: Chunk attempts lost when it died.
    """

    name: str
    chunks: int = 0
    tiles: int = 0
    busy_s: float = 0.0
    lost: int = 0

    def as_dict(self, wall: float) -> dict[str, Any]:
        """JSON form with tiles/s and busy share over *wall* seconds."""
        return {
            "name": self.name,
            "chunks": self.chunks,
            "tiles": self.tiles,
            "tiles_per_s": self.tiles / self.busy_s if self.busy_s > 0 else 0.0,
            "busy_share": self.busy_s / wall if wall > 0 else 0.0,
            "lost_attempts": self.lost,
        }


@dataclass
class JobSummary:
    """What a distributed job did.

    Attributes:
        outputs: Files written (assembled maps).
        chunks: Chunks of the job.
        committed: Chunks committed in this run.
        resumed: Chunks already committed by an earlier run.
        failed: ``(chunk id, raster, reason)`` of chunks that failed for good.
        retries: Attempts lost to dead workers (re-run elsewhere).
        tiles: Tiles computed in this run.
        pixels: Output pixels committed in this run.
        seconds: Stage seconds summed over workers; ``wall`` is the job's.
        workers: Per-worker statistics.
    """

    outputs: list[Path] = field(default_factory=list)
    chunks: int = 0
    committed: int = 0
    resumed: int = 0
    failed: list[tuple[str, str, str]] = field(default_factory=list)
    retries: int = 0
    tiles: int = 0
    pixels: int = 0
    seconds: StageSeconds = field(default_factory=StageSeconds)
    workers: list[WorkerStats] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every chunk is committed."""
        return not self.failed

    def as_dict(self) -> dict[str, Any]:
        """JSON form (the job's summary file)."""
        wall = self.seconds.wall
        return {
            "ok": self.ok,
            "outputs": [str(p) for p in self.outputs],
            "chunks": self.chunks,
            "committed": self.committed,
            "resumed": self.resumed,
            "failed": [{"chunk": c, "raster": r, "reason": why} for c, r, why in self.failed],
            "retries": self.retries,
            "tiles": self.tiles,
            "tiles_per_s": self.tiles / wall if wall > 0 else 0.0,
            "pixels": self.pixels,
            "seconds": dataclasses.asdict(self.seconds),
            "workers": [w.as_dict(wall) for w in self.workers],
        }


@dataclass(frozen=True, slots=True)
class _Raster:
    info: RasterInfo
    final: OutputPaths
    folder: Path  # the chunk files' folder
    chunks: tuple[Chunk, ...]


@dataclass(frozen=True, slots=True)
class _Task:
    raster: int  # index into the job's rasters
    chunk: Chunk


class _Worker:
    """A Ray actor's state: one backend session for the whole job (see :func:`run_distributed`)."""

    def __init__(
        self, name: str, cfg_json: str, factory: BackendFactory | None, batch_size: int, threads: int | None
    ) -> None:
        self.name = name
        self.cfg = DetectConfig.model_validate_json(cfg_json)
        self.batch_size = batch_size
        if factory is not None:
            self.backend = factory()
        else:
            from flair_deploy.inference.backends import create_backend

            cfg = self.cfg
            assert cfg.model is not None
            options = dict(cfg.backend_options)
            if threads is not None and cfg.backend in (None, "onnxruntime", "torch"):
                # The actor's share of the cores: runtimes default to every core, and N of them would
                # fight over the same cores.
                options.setdefault("threads", threads)
            self.backend = create_backend(
                cfg.backend,
                cfg.model,
                device=cfg.device,
                precision=cfg.precision,
                options=options or None,
                preset=cfg.describer(),
            )
        self.backend.__enter__()
        if self.cfg.batch_size is None and getattr(self.backend, "preferred_batch", None):
            self.batch_size = int(self.backend.preferred_batch)  # a TensorRT profile's opt batch

    def ping(self) -> str:
        """Answer once the actor is up (again): the driver's probe after a restart."""
        return self.name

    def map(
        self,
        info: RasterInfo,
        plan: TilingPlan,
        chunk: dict[str, Any],
        paths: OutputPaths,
        tags: dict[str, str],
    ) -> tuple[str, ChunkResult, float]:
        start = time.perf_counter()
        result = map_chunk(
            self.backend,
            info,
            plan,
            Chunk.from_dict(chunk),
            paths,
            self.cfg,
            batch_size=self.batch_size,
            tags=tags,
        )
        return self.name, result, time.perf_counter() - start


def _ray() -> Any:
    return require("ray", purpose="detect --workers (chunks on Ray)", extra="distributed")


def _start_ray(ray: Any, address: str | None, workers: int, cuda: bool) -> bool:
    """Connect to a cluster or start a local instance; True when this call started it."""
    if ray.is_initialized():
        return False
    # Workers import flair_deploy (and tests' fakes) from the driver's path.
    env = {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "runtime_env": {"env_vars": env},
        "logging_level": "ERROR",
    }
    if address is None:
        kwargs["num_cpus"] = max(workers, os.cpu_count() or 1)
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise ConfigError(
            f"cannot start or join {where}: {str(exc).splitlines()[0]}; check --ray-address / RAY_ADDRESS "
            "(`ray status` on the head node) or drop it to run locally"
        ) from None
    return True


def run_distributed(
    cfg: DetectConfig,
    *,
    workers: int,
    ray_address: str | None = None,
    in_flight: int = 2,
    max_attempts: int = 3,
    backend_factory: BackendFactory | None = None,
    description: ModelDescription | None = None,
    progress: Callable[[JobProgress], None] | None = None,
    tags: dict[str, str] | None = None,
    precision: str | None = None,
    model_sha256: str | None = None,
) -> JobSummary:
    """Map every input of *cfg* with *workers* Ray actors (see the module docstring).

    Args:
        cfg: The run configuration (as for ``detect``).
        workers: Number of actors: one backend session each.
        ray_address: A running cluster (``ray://host:10001`` or ``host:6379``); None = ``RAY_ADDRESS`` or a
            local instance.
        in_flight: Chunks queued per actor at most.
        max_attempts: Attempts per chunk before it fails for good (lost workers only).
        backend_factory: Builds each worker's backend (default: from ``cfg.model``).
        description: The model's description (default: read from ``cfg.model``).
        progress: Called after every committed or failed chunk.
        tags: Extra output tags (backend...); the job's settings are tagged too.
        precision: Precision the workers run at (default: the model's).
        model_sha256: SHA-256 of the model file (default: the description's, else unknown).

    Returns:
        The job summary (check :attr:`JobSummary.ok`).

    Raises:
        FlairDeployError: For bad input found before any chunk runs (one line).
    """
    if workers < 1:
        raise ConfigError(f"--workers {workers} must be at least 1")
    ray = _ray()
    start = time.perf_counter()
    if description is None:
        if cfg.model is None:
            raise ConfigError("no model given; pass --model MODEL.onnx (or .ckpt, .pth, .engine)")
        from flair_deploy.artifacts import read_description

        description = read_description(cfg.model, preset=cfg.describer())
    if description.metadata is not None:
        raise ConfigError(
            f"model {description.name!r} takes a metadata input, which --workers does not feed yet; "
            "run detect without --workers"
        )
    from flair_deploy.inference.detect import job_settings, outputs_to_make
    from flair_deploy.ledger import Ledger, ledger_path

    plan = cfg.resolve_tiling(description)
    settings = job_settings(
        cfg,
        description,
        plan,
        precision=precision or description.provenance.precision.value,
        model_sha256=model_sha256,
    )
    # detect's own up-front checks: outputs locked by another job, existing, or (resume) made otherwise.
    finals, _resumed = outputs_to_make(cfg, settings)
    rasters: list[_Raster] = []
    for final in finals:
        info = inspect_raster(
            final.source,
            description,
            bands=cfg.bands,
            allow_gsd_mismatch=cfg.allow_gsd_mismatch,
            assume_crs=cfg.assume_crs,
        )
        grid = make_grid(info.width, info.height, plan)
        chunks = default_chunk_plan(
            grid,
            block=cfg.block_size,
            active_classes=sum(description.active_mask),
            num_classes=description.num_classes,
            budget_mb=cfg.chunk_mb,
            confidence=cfg.confidence,
            probabilities=cfg.probabilities,
        ).chunks
        folder = final.classes.parent / f".{final.classes.stem}.chunks"
        rasters.append(_Raster(info, final, folder, chunks))
    job = _Job(cfg, plan, description, rasters, {**(tags or {}), **settings.to_tags()})
    with _open_ledger(Ledger, ledger_path(cfg.output), settings, overwrite=cfg.overwrite) as ledger:
        summary = job.schedule(ledger)
        if summary.chunks - summary.resumed:
            started = _start_ray(ray, ray_address, workers, cfg.device.startswith("cuda"))
            try:
                job.run(
                    ray,
                    ledger,
                    summary,
                    workers=workers,
                    batch=cfg.batch_size or default_batch_size(cfg.device),
                    in_flight=in_flight,
                    max_attempts=max_attempts,
                    backend_factory=backend_factory,
                    progress=progress,
                )
            finally:
                if started:
                    ray.shutdown()
        job.assemble(summary)
    summary.seconds = dataclasses.replace(summary.seconds, wall=time.perf_counter() - start)
    return summary


def _open_ledger(ledger_cls: Any, path: Path, settings: Any, *, overwrite: bool) -> Any:
    """The job's ledger, resumed when the settings match.

    Even with ``--overwrite`` (which replaces maps, not the committed chunks of this very job) a ledger
    of the same settings is resumed; with other settings ``--overwrite`` resets it.
    """
    try:
        return ledger_cls.open(path, settings, overwrite=False)
    except FlairDeployError:
        if not overwrite:
            raise
        return ledger_cls.open(path, settings, overwrite=True)


class _Job:
    """The driver's side of one job: what is left to do, who does it, and the assembly."""

    def __init__(
        self,
        cfg: DetectConfig,
        plan: TilingPlan,
        description: ModelDescription,
        rasters: list[_Raster],
        tags: dict[str, str],
    ) -> None:
        self.cfg, self.plan, self.description, self.rasters, self.tags = cfg, plan, description, rasters, tags
        self.done: dict[tuple[int, str], str] = {}  # committed (raster, chunk id) -> checksum
        self.queue: deque[_Task] = deque()

    def schedule(self, ledger: Any) -> JobSummary:
        """Record the chunks; queue those not committed (by an earlier run) with their file intact."""
        for i, r in enumerate(self.rasters):
            ledger.add_chunks(r.info.path, r.chunks)
            r.folder.mkdir(parents=True, exist_ok=True)
            for c in r.chunks:
                entry = ledger.chunk(r.info.path, c.id)
                files = chunk_paths(r.folder, c, r.final)
                if (
                    entry.state == "done"
                    and files.classes.exists()
                    and file_sha256(files.classes) == entry.checksum
                ):
                    self.done[(i, c.id)] = entry.checksum
                    continue
                if entry.state == "done":  # committed, but its file is gone or changed: compute it again
                    ledger.reopen(r.info.path, c.id, "its committed file is missing or changed")
                self.queue.append(_Task(i, c))
        return JobSummary(chunks=sum(len(r.chunks) for r in self.rasters), resumed=len(self.done))

    def run(
        self,
        ray: Any,
        ledger: Any,
        summary: JobSummary,
        *,
        workers: int,
        batch: int,
        in_flight: int,
        max_attempts: int,
        backend_factory: BackendFactory | None,
        progress: Callable[[JobProgress], None] | None,
    ) -> None:
        """Map the queued chunks on Ray actors, committing each once in the ledger."""
        cuda = self.cfg.device.startswith("cuda")
        actor_cls = ray.remote(_Worker)
        cores = max(1, int(ray.cluster_resources().get("CPU", os.cpu_count() or 1)) // workers)
        resources = {"num_gpus": 1} if cuda else {"num_cpus": cores}
        cfg_json = self.cfg.model_dump_json()
        actors = [
            actor_cls.options(max_restarts=max_attempts, max_task_retries=0, **resources).remote(
                f"worker-{i}", cfg_json, backend_factory, batch, None if cuda else cores
            )
            for i in range(workers)
        ]
        stats = summary.workers = [WorkerStats(f"worker-{i}") for i in range(workers)]
        attempts: dict[tuple[int, str], int] = {}
        running: dict[Any, tuple[_Task, int]] = {}
        load = [0] * workers
        tiles_total = sum(t.chunk.tiles for t in self.queue)
        km2 = 0.0  # ground area committed, each chunk at its own raster's pixel size

        down: set[int] = set()  # actors that died and have not answered a probe since
        probes: dict[Any, int] = {}

        def submit() -> None:
            while self.queue:
                up = [i for i in range(workers) if i not in down]
                if not up:
                    return
                a = min(up, key=lambda i: load[i])
                if load[a] >= in_flight:
                    return
                task = self.queue.popleft()
                r = self.rasters[task.raster]
                ledger.start(r.info.path, task.chunk.id, stats[a].name)
                files = chunk_paths(r.folder, task.chunk, r.final)
                ref = actors[a].map.remote(r.info, self.plan, task.chunk.to_dict(), files, self.tags)
                running[ref] = (task, a)
                load[a] += 1

        def failed(task: _Task, reason: str, worker: str) -> None:
            r = self.rasters[task.raster]
            ledger.fail(r.info.path, task.chunk.id, reason, worker)
            summary.failed.append((task.chunk.id, str(r.info.path), reason))

        submit()
        while running or (self.queue and probes):
            ready, _ = ray.wait([*running, *probes], num_returns=1)
            ref = ready[0]
            if ref in probes:
                a = probes.pop(ref)
                try:
                    ray.get(ref)
                    down.discard(a)  # restarted: it takes chunks again
                except ray.exceptions.RayActorError:
                    if stats[a].lost < max_attempts * max(1, summary.chunks):
                        probes[actors[a].ping.remote()] = a
                submit()
                continue
            task, a = running.pop(ref)
            load[a] -= 1
            key = (task.raster, task.chunk.id)
            r = self.rasters[task.raster]
            worker = stats[a].name
            try:
                _name, result, busy = ray.get(ref)
            except ray.exceptions.RayActorError:
                # The worker died with the chunk (killed, out of memory, node lost): run it on another
                # actor; this one takes chunks again once it answers a probe (Ray restarts it).
                attempts[key] = attempts.get(key, 0) + 1
                stats[a].lost += 1
                summary.retries += 1
                if a not in down:
                    down.add(a)
                    probes[actors[a].ping.remote()] = a
                if attempts[key] >= max_attempts:
                    failed(task, f"its worker died {attempts[key]} times", worker)
                else:
                    self.queue.appendleft(task)
            except ray.exceptions.RayTaskError as exc:
                cause = exc.cause if isinstance(exc.cause, BaseException) else exc
                reason = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
                if not isinstance(cause, FlairDeployError):
                    reason = f"{type(cause).__name__}: {reason}"
                failed(task, reason, worker)  # bad input: no retry, the others go on
            else:
                files = chunk_paths(r.folder, task.chunk, r.final)
                if file_sha256(files.classes) != result.checksum:
                    failed(task, "its file does not match the worker's checksum", worker)
                elif ledger.commit(r.info.path, task.chunk.id, result.checksum, worker):  # committed once
                    self.done[key] = result.checksum
                    summary.committed += 1
                    summary.tiles += result.tiles
                    summary.pixels += task.chunk.output.pixels
                    km2 += r.info.area_km2 * task.chunk.output.pixels / (r.info.width * r.info.height)
                    summary.seconds = summary.seconds + dataclasses.replace(result.seconds, wall=0.0)
                    s = stats[a]
                    s.chunks, s.tiles, s.busy_s = s.chunks + 1, s.tiles + result.tiles, s.busy_s + busy
            if progress is not None:
                progress(
                    JobProgress(
                        len(self.done),
                        summary.chunks,
                        summary.tiles,
                        tiles_total,
                        summary.pixels,
                        km2,
                        len(summary.failed),
                        summary.retries,
                    )
                )
            submit()

    def assemble(self, summary: JobSummary) -> None:
        """Write the maps of every raster whose chunks are all committed, then drop its chunk files."""
        from flair_deploy.atomic import OutputLock

        for i, r in enumerate(self.rasters):
            if not all((i, c.id) in self.done for c in r.chunks):
                continue
            parts = [(c, chunk_paths(r.folder, c, r.final)) for c in r.chunks]
            with contextlib.ExitStack() as locks:
                for p in r.final.all():
                    locks.enter_context(OutputLock(p))
                assemble(r.info, self.description, r.final, parts, self.cfg, tags=self.tags)
            summary.outputs.extend(r.final.all())
            # The chunk folder is the job's own (chunk maps, their sidecars, dead workers' temporaries).
            shutil.rmtree(r.folder, ignore_errors=True)
        self._mosaic(summary)

    def _mosaic(self, summary: JobSummary) -> None:
        """Several inputs, all mapped: ``mosaic.vrt`` over their class maps, and with ``merge`` one COG."""
        out = self.cfg.output
        if out.suffix or summary.failed:
            return
        from flair_deploy.distributed.mosaic import merge_to_cog, write_mosaic_vrt
        from flair_deploy.inference.detect import expand_inputs
        from flair_deploy.inference.raster import plan_outputs

        finals = plan_outputs(expand_inputs(self.cfg.inputs), out)  # every input's map, resumed ones too
        maps = [f.classes for f in finals if f.classes.exists()]
        if len(maps) < 2 or len(maps) < len(finals):
            return
        indices = self.cfg.indices
        vrt = write_mosaic_vrt(maps, out / "mosaic.vrt", self.description, indices=indices)
        summary.outputs.append(vrt)
        if self.cfg.merge:
            summary.outputs.append(
                merge_to_cog(
                    vrt, out / "mosaic.tif", self.description, indices=indices, block=self.cfg.block_size
                )
            )


def detect_on_ray(cfg: DetectConfig, *, progress: Callable[[JobProgress], None] | None = None) -> JobSummary:
    """``detect --workers N``: the model's description and the output tags, then :func:`run_distributed`.

    Raises:
        FlairDeployError: For bad input found before any chunk runs (one line).
    """
    if cfg.model is None:
        raise ConfigError("no model given; pass --model MODEL.onnx (or .ckpt, .pth, .engine)")
    if cfg.workers is None:
        raise ConfigError("detect_on_ray needs workers; set --workers N")
    _ray()  # the extra first: a missing Ray must not wait for a model to be read
    from flair_deploy import __version__
    from flair_deploy.artifacts import read_description
    from flair_deploy.inference.backends import backend_for_artifact

    description = read_description(cfg.model, preset=cfg.describer())
    backend = cfg.backend or backend_for_artifact(cfg.model).value
    precision = (cfg.precision or description.provenance.precision).value
    return run_distributed(
        cfg,
        workers=cfg.workers,
        ray_address=cfg.ray_address,
        description=description,
        progress=progress,
        tags={
            "FLAIR_DEPLOY_VERSION": __version__,
            "BACKEND": f"{backend} {precision} {cfg.device} (Ray, {cfg.workers} workers)",
        },
        precision=precision,
        model_sha256=description.provenance.source_sha256 or file_sha256(cfg.model),
    )


def summary_path(cfg: DetectConfig) -> Path:
    """Where a job's summary JSON goes: ``MAP.job.json`` beside a single map, ``job.json`` in a folder."""
    out = cfg.output
    return out.with_name(f"{out.stem}.job.json") if out.suffix else out / "job.json"


def failed_lines(summary: JobSummary, limit: int = 10) -> Sequence[str]:
    """Lines naming the failed chunks (for the closing message)."""
    lines = [f"chunk {c} of {Path(r).name}: {why}" for c, r, why in summary.failed[:limit]]
    if len(summary.failed) > limit:
        lines.append(f"... and {len(summary.failed) - limit} more (see the summary JSON)")
    return lines
