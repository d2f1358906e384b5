"""The streaming detection pipeline for one raster: read → batch → infer → stitch → write, overlapped.

The raster's output is cut into chunks (:mod:`~flair_deploy.inference.chunks`), processed one after the
other through the same threads; each chunk is stitched on its own, so memory is bounded by the chunk's
width, not the raster's, and the map does not depend on the chunking.

::

    reader threads (own handles) ──ordered, bounded──► main thread: batch into a staging buffer,
        backend.run (logits stay on the device) ──bounded queue──► stitch thread: softmax, blend,
        argmax on the device; uint8 rows start back ──bounded queue──► writer thread: waits for
        those rows, assembles output blocks, compresses (GDAL threads)

* Readers run in a thread pool; each thread opens its own rasterio handle (GDAL releases the GIL
  while reading). Each chunk's input is decoded once, in strips aligned with its blocks
  (:mod:`~flair_deploy.inference.reading`), at most ``prefetch`` strips ahead; tiles are cut from them
  and consumed in row-major order.
  Tiles stay in the raster's dtype (uint8 for 8-bit orthophotos) until the device casts them.
* The main thread only fills staging buffers (pinned on CUDA) and queues work: on a GPU nothing on the
  host waits for the device except the writer, for finished rows, and the staging ring's back-pressure.
* Queues are bounded: a slow writer stalls the stitcher, which stalls inference, which stops reads;
  memory stays flat.

Per-stage seconds are summed per stage (readers work in parallel, so ``read`` can exceed the wall
time); the CPU seconds of each thread are measured too (``*_cpu``), and ``process_cpu`` is the whole
process's, GDAL's and the runtimes' own threads included: the null backend's host-ceiling figures.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from flair_deploy.errors import ConfigError
from flair_deploy.inference.chunks import (
    DEFAULT_CHUNK_BUDGET_MB,
    Chunk,
    ChunkPlan,
    chunk_width_for_budget,
    plan_chunks,
)
from flair_deploy.inference.device import ArrayDevice
from flair_deploy.inference.raster import OutputWriter, PadMode, RasterInfo
from flair_deploy.inference.reading import read_chunk_tiles
from flair_deploy.inference.stitching import FinishedRows, OutputBand, RowBandStitcher
from flair_deploy.inference.tiling import Tile, TileGrid, TilingPlan, make_grid

__all__ = ["MetadataFn", "ProgressFn", "RasterRun", "StageSeconds", "default_chunk_plan", "run_raster"]

#: Per-tile metadata vector from the tile (metadata models only).
MetadataFn = Callable[[Tile], npt.NDArray[np.float32]]
#: Progress callback: (tiles done, tiles total, raster pixels done).
ProgressFn = Callable[[int, int, int], None]

_STOP = object()
_POLL_S = 0.1


class _BackendLike(Protocol):
    """What the pipeline uses of a :class:`~flair_deploy.inference.backends.Backend`."""

    last_times: Any
    supports_dynamic_hw: bool
    fixed_hw: tuple[int, int] | None
    max_batch: int | None
    hw_multiple: int
    description: Any
    arrays: ArrayDevice

    def run(self, images: Any, metadata: Any = None) -> Any: ...


@dataclass(frozen=True, slots=True)
class StageSeconds:
    """Seconds spent per stage (summed over threads for parallel stages).

    Attributes:
        read: GDAL reads (pixels and masks).
        preprocess: Padding, casting and batch assembly.
        h2d: Host-to-device copies (backend's ``last_times``).
        compute: Network compute (backend's ``last_times``).
        d2h: Device-to-host copies (backend's ``last_times``).
        infer: Wall time inside backend calls (h2d + compute + d2h + backend overheads).
        stitch: Accumulating tiles and reducing final rows (queueing it, on a GPU).
        write: Encoding and writing output blocks, overviews and renames.
        wall: Wall-clock time of the run.
        read_cpu: CPU seconds of the reader threads.
        main_cpu: CPU seconds of the main thread (batching and backend calls).
        stitch_cpu: CPU seconds of the stitch thread.
        write_cpu: CPU seconds of the writer thread (waiting for rows and writing them).
        process_cpu: CPU seconds of the whole process during the run (every thread).
    """

    read: float = 0.0
    preprocess: float = 0.0
    h2d: float = 0.0
    compute: float = 0.0
    d2h: float = 0.0
    infer: float = 0.0
    stitch: float = 0.0
    write: float = 0.0
    wall: float = 0.0
    read_cpu: float = 0.0
    main_cpu: float = 0.0
    stitch_cpu: float = 0.0
    write_cpu: float = 0.0
    process_cpu: float = 0.0

    def __add__(self, other: StageSeconds) -> StageSeconds:
        return StageSeconds(
            *(a + b for a, b in zip(_astuple(self), _astuple(other), strict=True)),
        )

    @property
    def busy(self) -> float:
        """Share of the wall time spent inside the backend (1.0 = inference never waited for I/O)."""
        return self.infer / self.wall if self.wall > 0 else 0.0


def _astuple(s: StageSeconds) -> tuple[float, ...]:
    return tuple(getattr(s, f) for f in StageSeconds.__slots__)


@dataclass(frozen=True, slots=True)
class RasterRun:
    """What one raster's run did.

    Attributes:
        tiles: Tiles in the grid.
        skipped: Tile computations skipped because every pixel was nodata.
        inferred: Tiles run through the network (tiles on chunk boundaries count once per chunk).
        pixels: Raster pixels covered (width × height).
        seconds: Per-stage seconds.
        chunks: Chunks the raster was cut into.
    """

    tiles: int
    skipped: int
    inferred: int
    pixels: int
    seconds: StageSeconds
    chunks: int = 1


@dataclass
class _Read:
    chunk: Chunk
    tile: Tile
    image: npt.NDArray[Any] | None  # raw band values, None when the tile holds no valid pixel
    valid: npt.NDArray[np.bool_] | None  # None: every pixel is valid
    metadata: npt.NDArray[np.float32] | None
    read_s: float
    prep_s: float
    cpu_s: float


@dataclass(frozen=True, slots=True)
class _ChunkEnd:
    """Marker on the write queue: the chunk's last rows have been queued."""

    chunk: Chunk


class _Aborted(Exception):
    """Raised inside a stage when another stage failed."""


class _Stage(threading.Thread):
    """A consumer thread: applies *fn* to queue items until the stop marker; errors abort the run."""

    def __init__(
        self, name: str, fn: Callable[[Any], None], inbox: queue.Queue[Any], abort: threading.Event
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.fn, self.inbox, self.abort = fn, inbox, abort
        self.error: BaseException | None = None
        self.busy = 0.0
        self.cpu = 0.0

    def run(self) -> None:
        try:
            while True:
                item = _get(self.inbox, self.abort)
                if item is _STOP:
                    return
                start, cpu = time.perf_counter(), time.thread_time()
                self.fn(item)
                self.busy += time.perf_counter() - start
                self.cpu += time.thread_time() - cpu
        except _Aborted:
            return
        except BaseException as exc:  # noqa: BLE001  (handed to the main thread, which re-raises it)
            self.error = exc
            self.abort.set()


def _get(q: queue.Queue[Any], abort: threading.Event) -> Any:
    while True:
        try:
            return q.get(timeout=_POLL_S)
        except queue.Empty:
            if abort.is_set():
                raise _Aborted from None


def _put(q: queue.Queue[Any], item: Any, abort: threading.Event) -> None:
    while True:
        if abort.is_set():
            raise _Aborted
        try:
            q.put(item, timeout=_POLL_S)
            return
        except queue.Full:
            continue


def check_backend_fits(backend: _BackendLike, tile: int, batch_size: int) -> None:
    """Refuse a tile size or batch the backend cannot run, before any output is created.

    Raises:
        ConfigError: With the option to change.
    """
    if not backend.supports_dynamic_hw and backend.fixed_hw is not None and backend.fixed_hw != (tile, tile):
        h, w = backend.fixed_hw
        raise ConfigError(
            f"the model accepts only {h}x{w}-px tiles but the tile size is {tile}; use --tile {h}"
        )
    if backend.max_batch is not None and batch_size > backend.max_batch:
        raise ConfigError(
            f"batch size {batch_size} exceeds the model's maximum batch {backend.max_batch}; "
            f"use --batch-size {backend.max_batch}"
        )
    if tile % max(1, backend.hw_multiple):
        raise ConfigError(
            f"tile size {tile} is not a multiple of the network's output stride {backend.hw_multiple}"
        )
    d = backend.description
    # One batch in flight: float32 input, logits and probabilities (the network's own activations
    # come on top): a tile size whose batch alone cannot fit is refused before anything is written.
    need = batch_size * tile * tile * 4 * (d.in_channels + 2 * d.num_classes)
    available = _available_memory()
    if available is not None and need > available:
        raise ConfigError(
            f"--tile {tile} with --batch-size {batch_size} needs about {need / 2**30:.1f} GiB for one batch's "
            f"inputs and outputs alone, more than the {available / 2**30:.1f} GiB of memory available; use "
            f"a smaller --tile (the model's is {d.tile_size}) or --batch-size"
        )


def _available_memory() -> int | None:
    """Bytes of memory available to new allocations, or None if unknown."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover - psutil is a dependency
        return None


def default_chunk_plan(
    grid: TileGrid,
    *,
    block: int,
    active_classes: int,
    num_classes: int,
    budget_mb: int = DEFAULT_CHUNK_BUDGET_MB,
    confidence: bool = False,
    probabilities: bool = False,
) -> ChunkPlan:
    """Cut a raster into full-height strips as wide as the stitching memory budget allows.

    Strips cost duplicated tiles only on their vertical boundaries (none for a raster that fits one
    strip); memory is the strip's row band, whatever the raster's height. A strip is at least four
    tiles wide (or the raster's width), even if that exceeds the budget.

    Raises:
        ConfigError: If the budget cannot hold one block-wide strip.
    """
    width = chunk_width_for_budget(
        budget_mb * 2**20,
        width=grid.width,
        tile=grid.size,
        active_classes=active_classes,
        num_classes=num_classes,
        mode=grid.mode,
        block=block,
        confidence=confidence,
        probabilities=probabilities,
    )
    # A strip narrower than a few tiles would recompute most of its tiles for its neighbour: the
    # budget gives way to at least four tiles' width.
    width = max(width, min(-(-4 * grid.size // block) * block, -(-grid.width // block) * block))
    height = -(-grid.height // block) * block
    return plan_chunks(grid, chunk_width=width, chunk_height=height, block=block)


def run_raster(
    backend: _BackendLike,
    info: RasterInfo,
    writer: OutputWriter,
    plan: TilingPlan,
    *,
    chunks: Sequence[Chunk] | None = None,
    chunk_budget_mb: int = DEFAULT_CHUNK_BUDGET_MB,
    batch_size: int = 4,
    readers: int = 2,
    prefetch: int = 2,
    pad_mode: PadMode = "reflect",
    metadata_fn: MetadataFn | None = None,
    probabilities: bool = False,
    confidence: bool = False,
    progress: ProgressFn | None = None,
) -> RasterRun:
    """Run detection over one raster with an active backend, writing through *writer*.

    Args:
        backend: An active backend (inside ``with backend:``).
        info: The checked input raster.
        writer: The open output writer (inside ``with writer:``).
        plan: Resolved tiling.
        chunks: The chunks to compute (of the plan made from the same grid and the writer's block
            size); None cuts the whole raster by *chunk_budget_mb* (:func:`default_chunk_plan`).
        chunk_budget_mb: Stitching memory budget per chunk, MiB, when *chunks* is None.
        batch_size: Tiles per backend call.
        readers: Reader threads.
        prefetch: Input strips read ahead of inference.
        pad_mode: Fill of pixels outside the raster.
        metadata_fn: Per-tile metadata vector for metadata models.
        probabilities: Produce per-class probabilities.
        confidence: Produce the confidence plane.
        progress: Called after each batch.

    Returns:
        Counts and per-stage seconds.
    """
    check_backend_fits(backend, plan.tile, batch_size)
    start, process_cpu0 = time.perf_counter(), time.process_time()
    grid = make_grid(info.width, info.height, plan)
    active = backend.description.active_mask
    if chunks is None:
        chunks = default_chunk_plan(
            grid,
            block=writer.block,
            active_classes=sum(active),
            num_classes=len(active),
            budget_mb=chunk_budget_mb,
            confidence=confidence,
            probabilities=probabilities,
        ).chunks
    device: ArrayDevice = backend.arrays

    def new_stitcher(chunk: Chunk) -> RowBandStitcher:
        return RowBandStitcher(
            grid,
            active=active,
            confidence=confidence,
            probabilities=probabilities,
            chunk=chunk,
            device=device,
        )

    # The chunk being stitched and its stitcher (the stitch thread's; read here once it has ended).
    chunk_now: Chunk | None = None
    stitcher: RowBandStitcher | None = None
    # Output blocks being assembled, per chunk (the writer thread's).
    bands: dict[int, OutputBand] = {}

    abort = threading.Event()
    write_q: queue.Queue[Any] = queue.Queue(maxsize=8)
    stitch_q: queue.Queue[Any] = queue.Queue(maxsize=2)

    def do_write(item: _Finished | _ChunkEnd) -> None:
        if isinstance(item, _ChunkEnd):
            done = bands.pop(item.chunk.index, None)
            for c in done.finish() if done is not None else []:
                writer.write(c)
            return
        band = bands.get(item.chunk.index)
        if band is None:
            band = bands[item.chunk.index] = OutputBand(item.chunk.output.row1, writer.block)
        for c in band.push(item.rows.result()):  # waits for this copy only
            writer.write(c)

    def queue_rows(chunk: Chunk, rows: list[FinishedRows]) -> None:
        for r in rows:
            _put(write_q, _Finished(chunk, r), abort)

    def end_chunk() -> None:
        if stitcher is not None and chunk_now is not None:
            queue_rows(chunk_now, stitcher.finish())
            _put(write_q, _ChunkEnd(chunk_now), abort)

    def do_stitch(item: tuple[list[_Read], Any]) -> None:
        nonlocal chunk_now, stitcher
        reads, logits = item
        k = 0  # next row of the batch's logits (skipped tiles have none)
        i = 0
        with device.stream():
            while i < len(reads):
                r = reads[i]
                if r.chunk is not chunk_now:
                    end_chunk()
                    stitcher = None  # free the last chunk's band before the next one is allocated
                    chunk_now, stitcher = r.chunk, new_stitcher(r.chunk)
                assert stitcher is not None
                if r.image is None:
                    queue_rows(r.chunk, stitcher.advance(r.tile))
                    i += 1
                    continue
                # The longest run of tiles with data, of one chunk: one call, one slice of the logits.
                j = i + 1
                while j < len(reads) and reads[j].chunk is r.chunk and reads[j].image is not None:
                    j += 1
                run = reads[i:j]
                rows = stitcher.add([t.tile for t in run], logits[k : k + len(run)], [t.valid for t in run])
                queue_rows(r.chunk, rows)
                k += len(run)
                i = j

    inline_stitch = device.is_host
    inline = [0.0, 0.0]  # wall and CPU seconds of stitching done in the main thread
    writer_t = _Stage("detect-writer", do_write, write_q, abort)
    stitch_t = _Stage("detect-stitch", do_stitch, stitch_q, abort)
    writer_t.start()
    stitch_t.start()

    read_s = prep_s = infer_s = h2d = compute = d2h = read_cpu = 0.0
    main_cpu0 = time.thread_time()
    skipped = inferred = done = 0
    total = sum(c.tiles for c in chunks)
    pixels_per_tile = info.width * info.height / max(total, 1)
    try:
        pending: list[_Read] = []
        n_images = 0

        def flush() -> None:
            nonlocal pending, n_images, infer_s, h2d, compute, d2h, prep_s, done, inferred
            logits: Any = None
            if n_images:
                t0 = time.perf_counter()
                with_data = [r for r in pending if r.image is not None]
                first = with_data[0].image
                assert first is not None
                # Filled in place: on CUDA a pinned buffer of the staging ring, uploaded asynchronously.
                batch = device.staging((len(with_data), *first.shape), first.dtype)
                for b, r in enumerate(with_data):
                    batch[b] = r.image
                meta = None
                if metadata_fn is not None:
                    meta = np.stack([r.metadata for r in with_data if r.metadata is not None])
                t1 = time.perf_counter()
                logits = backend.run(batch, meta)
                t2 = time.perf_counter()
                prep_s += t1 - t0
                infer_s += t2 - t1
                lt = backend.last_times
                h2d += float(getattr(lt, "h2d", 0.0))
                compute += float(getattr(lt, "compute", 0.0))
                d2h += float(getattr(lt, "d2h", 0.0))
                inferred += n_images
            # Within a batch, skipped tiles must still advance the stitcher in order: the pairs go
            # together, with logits for the tiles that have data.
            if inline_stitch:
                # A host "device": the runtime's threads already use every core, and a stitch thread
                # preempting one of them stalls the others at the runtime's barriers; stitching between
                # backend calls costs less than stitching beside them.
                t3, c3 = time.perf_counter(), time.thread_time()
                do_stitch((pending, logits))
                inline[0] += time.perf_counter() - t3
                inline[1] += time.thread_time() - c3
            else:
                _put(stitch_q, (pending, logits), abort)
            done += len(pending)
            if progress is not None:
                progress(done, total, int(done * pixels_per_tile))
            pending, n_images = [], 0

        reads = _chunk_reads(chunks, grid, info, readers, prefetch, pad_mode, metadata_fn, abort)
        with contextlib.closing(reads):
            for r in reads:
                read_s += r.read_s
                prep_s += r.prep_s
                read_cpu += r.cpu_s
                pending.append(r)
                if r.image is None:
                    skipped += 1
                else:
                    n_images += 1
                if n_images >= batch_size:
                    flush()
                if stitch_t.error or writer_t.error:
                    raise _Aborted
        if abort.is_set():
            raise _Aborted
        if pending:
            flush()
        _put(stitch_q, _STOP, abort)
        stitch_t.join()
        if stitch_t.error is None:
            with device.stream():
                end_chunk()
        _put(write_q, _STOP, abort)
        writer_t.join()
    except _Aborted:
        pass
    except BaseException:
        abort.set()
        raise
    finally:
        if abort.is_set() or stitch_t.error or writer_t.error:
            abort.set()
        stitch_t.join()
        writer_t.join()
    for t in (stitch_t, writer_t):
        if t.error is not None:
            raise t.error
    seconds = StageSeconds(
        read=read_s,
        preprocess=prep_s,
        h2d=h2d,
        compute=compute,
        d2h=d2h,
        infer=infer_s,
        stitch=stitch_t.busy + inline[0],
        write=writer_t.busy,
        wall=time.perf_counter() - start,
        read_cpu=read_cpu,
        main_cpu=time.thread_time() - main_cpu0 - inline[1],
        stitch_cpu=stitch_t.cpu + inline[1],
        write_cpu=writer_t.cpu,
        process_cpu=time.process_time() - process_cpu0,
    )
    return RasterRun(len(grid), skipped, inferred, info.width * info.height, seconds, len(chunks))


@dataclass(frozen=True, slots=True)
class _Finished:
    """Rows of a chunk on the write queue."""

    chunk: Chunk
    rows: FinishedRows


def _chunk_reads(
    chunks: Sequence[Chunk],
    grid: TileGrid,
    info: RasterInfo,
    readers: int,
    prefetch: int,
    pad_mode: PadMode,
    metadata_fn: MetadataFn | None,
    abort: threading.Event,
) -> Generator[_Read, None, None]:
    """Every chunk's tiles in order, each chunk's input decoded once in block-aligned strips."""
    for chunk in chunks:
        tiles = read_chunk_tiles(
            info, grid, chunk, pad_mode=pad_mode, threads=readers, prefetch_rows=prefetch, abort=abort
        )
        with contextlib.closing(tiles):
            for t in tiles:
                meta = metadata_fn(t.tile) if metadata_fn is not None and t.data is not None else None
                yield _Read(chunk, t.tile, t.data, t.valid, meta, t.read_s, t.prep_s, t.cpu_s)
