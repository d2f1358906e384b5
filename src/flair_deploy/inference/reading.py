"""Block-aligned strip reads: each input block is decoded once per chunk, not once per tile.

:class:`~flair_deploy.inference.raster.TileReader` reads every tile's window on its own; neighbouring
tiles overlap, so the input blocks under an overlap are decoded by every tile that covers them.
:func:`read_chunk_tiles` reads a chunk's read window instead, as horizontal strips whose row boundaries
fall on the input's block rows (for striped files, groups of rows), so every block of the window is
decoded exactly once per chunk; tiles are then sliced out of the decoded rows.

::

    strip threads (own handles) ──at most prefetch_rows strips ahead──► consumer: rolling band of
        the current tile row (T rows × chunk read width) ──slices, padded at the raster edge──► tiles

* Strips are read in parallel, one rasterio handle per thread (GDAL releases the GIL while decoding),
  and consumed in order. Memory is a few strips and a band, all as wide as the chunk's read window,
  whatever the raster's height (:func:`reader_bytes`).
* Values stay in the raster's own type for ``uint8``, ``uint16`` and ``int16`` (the backend casts on
  its device, so the host neither converts nor moves four bytes per value); anything else is read as
  float32, where NaN and ±inf are invalid and set to 0.
* The results equal :meth:`TileReader.read`'s: the same values (after a cast to float32), the same
  validity and the same skipped tiles, with the same padding past the raster's edges.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Generator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import groupby
from typing import Any

import numpy as np
import numpy.typing as npt
import rasterio
from rasterio._err import CPLE_BaseError  # GDAL errors rasterio does not wrap (not in rasterio.errors)
from rasterio.errors import RasterioError
from rasterio.windows import Window

from flair_deploy.errors import ConfigError, InputDataError
from flair_deploy.inference.chunks import Box, Chunk
from flair_deploy.inference.raster import PadMode, RasterInfo
from flair_deploy.inference.tiling import Tile, TileGrid

__all__ = [
    "MIN_STRIP_ROWS",
    "NATIVE_DTYPES",
    "TileRead",
    "input_strip_rows",
    "read_chunk_tiles",
    "read_dtype",
    "reader_bytes",
    "strip_rows_for_blocks",
]

#: Raster data types handed over as they are; any other type is read as float32.
NATIVE_DTYPES = ("uint8", "uint16", "int16")
#: Fewest rows in a strip: striped files (blocks of one or a few rows) are read in groups of block rows,
#: so that each read is large enough to be worth a thread hand-off.
MIN_STRIP_ROWS = 256
#: Blocks taller than this (a whole file compressed as one strip) cannot be aligned to without holding
#: the whole block: such files are read in groups of :data:`MIN_STRIP_ROWS` rows, and GDAL decodes what
#: it must.
_MAX_ALIGNED_ROWS = 2048


@dataclass(frozen=True, slots=True)
class TileRead:
    """One tile read by :func:`read_chunk_tiles`.

    Attributes:
        tile: The tile (global grid indices and position).
        data: ``(C, T, T)`` raw band values, in the raster's own type when it is one of
            :data:`NATIVE_DTYPES`, else float32; None when every pixel is invalid (the tile is skipped).
            Read-only: unpadded tiles are views of a band their neighbours share.
        valid: ``(T, T)`` validity mask, or None when every pixel is valid (callers can skip mask work).
            Pixels outside the raster are invalid, so a padded tile always has a mask.
        read_s: Seconds of GDAL decoding attributed to this tile: each strip's decoding time is shared
            evenly by the tiles of the tile row that first uses it, so the sum over tiles is the
            decoding time of the chunk.
        prep_s: Seconds this tile cost the consumer outside GDAL (its share of assembling the band,
            slicing, padding, mask checks).
        cpu_s: CPU seconds of the reader threads attributed to this tile, shared as *read_s* is.
    """

    tile: Tile
    data: npt.NDArray[Any] | None
    valid: npt.NDArray[np.bool_] | None
    read_s: float
    prep_s: float
    cpu_s: float = 0.0

    @property
    def skipped(self) -> bool:
        """True when every pixel of the tile is invalid (no data to infer)."""
        return self.data is None


@dataclass(frozen=True, slots=True)
class _Strip:
    row0: int
    row1: int
    data: npt.NDArray[Any]
    valid: npt.NDArray[np.bool_] | None  # None: every pixel valid
    seconds: float
    cpu: float = 0.0  # CPU seconds of the reading thread


def read_dtype(info: RasterInfo) -> str:
    """The type :func:`read_chunk_tiles` hands *info*'s values over in."""
    return info.dtype if info.dtype in NATIVE_DTYPES else "float32"


def strip_rows_for_blocks(block_rows: int) -> int:
    """Rows per strip for an input whose blocks are *block_rows* rows tall.

    Strips are whole block rows (so no block is decoded by two strips), at least
    :data:`MIN_STRIP_ROWS` rows; blocks too tall to align to give plain groups of that many rows.
    """
    if block_rows <= 0:
        raise ValueError(f"block height {block_rows} must be positive")
    if block_rows > _MAX_ALIGNED_ROWS:
        return MIN_STRIP_ROWS
    return math.ceil(MIN_STRIP_ROWS / block_rows) * block_rows


def input_strip_rows(info: RasterInfo) -> int:
    """Rows per strip for *info*'s raster, from the block shape of its first selected band.

    Raises:
        InputDataError: If the raster can no longer be opened.
    """
    try:
        with rasterio.open(info.path) as src:
            block_rows = int(src.block_shapes[info.bands[0] - 1][0])
    except (RasterioError, CPLE_BaseError) as exc:
        raise InputDataError(
            f"cannot open {info.path} to read it: {_first_line(exc)}; check that the file still exists "
            "and is complete (gdalinfo)"
        ) from None
    return strip_rows_for_blocks(block_rows)


def _strip_bounds(box: Box, strip_rows: int) -> list[tuple[int, int]]:
    """Row spans covering ``[box.row0, box.row1)``, cut on absolute multiples of *strip_rows*."""
    bounds, r = [], box.row0
    while r < box.row1:
        stop = min((r // strip_rows + 1) * strip_rows, box.row1)
        bounds.append((r, stop))
        r = stop
    return bounds


def reader_bytes(
    info: RasterInfo, chunk: Chunk, tile: int, *, prefetch_rows: int = 2, strip_rows: int | None = None
) -> int:
    """Most bytes :func:`read_chunk_tiles` holds for *chunk* at once (the planner's figure).

    Counts the strips in flight, the strips the current band is cut from, the band, and one more band
    kept alive by the previous tile row's tiles (views) while the caller still holds them. Padded tiles
    are copies the caller owns and are not counted. Independent of the raster's height.

    Args:
        info: The raster.
        chunk: The chunk (its read window's width is what matters).
        tile: Tile edge in pixels.
        prefetch_rows: Strips read ahead of the consumer.
        strip_rows: Rows per strip; None to look them up in the raster (:func:`input_strip_rows`).
    """
    rows = strip_rows if strip_rows is not None else input_strip_rows(info)
    height = chunk.read.height
    strip = min(rows, height)
    # A band of `tile` rows can straddle this many strips.
    held = min(math.ceil(max(tile - 1, 0) / rows) + 1, math.ceil(height / rows) + 1)
    band = min(tile, height)
    itemsize = np.dtype(read_dtype(info)).itemsize
    masked = not info.all_valid or read_dtype(info) == "float32"
    per_row = chunk.read.width * (len(info.bands) * itemsize + (1 if masked else 0))
    return per_row * ((held + prefetch_rows) * strip + 2 * band)


def read_chunk_tiles(
    info: RasterInfo,
    grid: TileGrid,
    chunk: Chunk,
    *,
    pad_mode: PadMode = "reflect",
    threads: int = 2,
    prefetch_rows: int = 2,
    abort: threading.Event | None = None,
    strip_rows: int | None = None,
) -> Generator[TileRead, None, None]:
    """Read every tile of *chunk*, decoding each input block of its read window once.

    Use it under :func:`contextlib.closing`: closing the generator early (or an exception in the
    caller's loop) cancels the strips not yet started, waits for those being decoded, shuts the thread
    pool and closes every dataset handle.

    Pixels that are nodata (GDAL's dataset mask: nodata, alpha or a mask band) or, in floating-point
    rasters, NaN or ±inf in any selected band are invalid; non-finite values are set to 0, so one bad
    pixel cannot spoil its tile. Dataset masks are read only when the raster has any (``info.all_valid``
    is False).

    Args:
        info: The checked raster.
        grid: The raster's global tile grid.
        chunk: The chunk whose tiles (:meth:`Chunk.tile_grid_tiles`) are read.
        pad_mode: How pixels outside the raster are filled: ``reflect`` or ``constant`` (0), as
            :class:`~flair_deploy.inference.raster.TileReader`.
        threads: Strip-reading threads, each with its own dataset handle.
        prefetch_rows: Strips read ahead of the consumer (at most; fewer than *threads* leaves
            threads idle). Bounds memory (:func:`reader_bytes`).
        abort: When set, strips not yet started are skipped and the generator stops yielding; whoever
            set it knows why the tiles stopped.
        strip_rows: Rows per strip; None to align them to the raster's blocks (:func:`input_strip_rows`).

    Yields:
        One :class:`TileRead` per tile, in row-major order.

    Raises:
        ConfigError: If *threads*, *prefetch_rows* or *strip_rows* is not positive.
        InputDataError: If GDAL cannot read a strip (truncated file, missing VRT source), naming the
            file and the window.
    """
    for name, value in (("threads", threads), ("prefetch_rows", prefetch_rows), ("strip_rows", strip_rows)):
        if value is not None and value < 1:
            raise ConfigError(f"reader {name} is {value}; give a positive number (e.g. 2)")
    # Arguments are checked (and the strip height looked up) on the call, not on the first next().
    rows = strip_rows if strip_rows is not None else input_strip_rows(info)
    return _generate(info, grid, chunk, pad_mode, threads, prefetch_rows, abort or threading.Event(), rows)


def _generate(
    info: RasterInfo,
    grid: TileGrid,
    chunk: Chunk,
    pad_mode: PadMode,
    threads: int,
    prefetch_rows: int,
    abort: threading.Event,
    strip_rows: int,
) -> Generator[TileRead, None, None]:
    box = chunk.read
    bounds = _strip_bounds(box, strip_rows)
    if not bounds:
        return
    dtype = read_dtype(info)
    local = threading.local()
    opened: list[Any] = []
    lock = threading.Lock()

    def task(r0: int, r1: int) -> _Strip | None:
        if abort.is_set():
            return None
        src = getattr(local, "src", None)
        if src is None:
            src = rasterio.open(info.path)
            local.src = src
            with lock:
                opened.append(src)
        return _read_strip(src, info, box, r0, r1, dtype)

    pool = ThreadPoolExecutor(
        max_workers=min(threads, prefetch_rows, len(bounds)), thread_name_prefix="flair-strip-reader"
    )
    futures: deque[Future[_Strip | None]] = deque()
    queued = 0

    def submit() -> None:
        nonlocal queued
        while queued < len(bounds) and len(futures) < prefetch_rows:
            futures.append(pool.submit(task, *bounds[queued]))
            queued += 1

    held: deque[_Strip] = deque()
    try:
        submit()
        for _, row_tiles in groupby(chunk.tile_grid_tiles(grid), key=lambda t: t.row_index):
            tiles = list(row_tiles)
            if abort.is_set():
                return
            axis = tiles[0].row
            a, b = max(axis.start, 0), min(axis.start + grid.size, info.height)
            while held and held[0].row1 <= a:
                held.popleft()
            fresh = fresh_cpu = 0.0
            while not held or held[-1].row1 < b:
                strip = futures.popleft().result()
                submit()
                if strip is None:  # aborted
                    return
                held.append(strip)
                fresh += strip.seconds
                fresh_cpu += strip.cpu
            t0 = time.perf_counter()
            band, band_valid = _band(held, a, b)
            share_read, share_cpu = fresh / len(tiles), fresh_cpu / len(tiles)
            share_prep = (time.perf_counter() - t0) / len(tiles)
            for tile in tiles:
                t1 = time.perf_counter()
                out = _cut(tile, info, box, band, band_valid, pad_mode)
                prep = share_prep + time.perf_counter() - t1
                if out is None:
                    yield TileRead(tile, None, None, share_read, prep, share_cpu)
                else:
                    yield TileRead(tile, out[0], out[1], share_read, prep, share_cpu)
                if abort.is_set():
                    return
            # Drop this row's band before the next one is assembled: only the caller's tiles (views)
            # may keep it alive, as reader_bytes counts.
            del band, band_valid, out
    finally:
        for f in futures:
            f.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
        for src in opened:
            src.close()


def _read_strip(src: Any, info: RasterInfo, box: Box, r0: int, r1: int, dtype: str) -> _Strip:
    """Decode rows ``[r0, r1)`` of *box*'s columns: values, validity, and the seconds it took."""
    start, cpu = time.perf_counter(), time.thread_time()
    window = Window(box.col0, r0, box.width, r1 - r0)
    try:
        if dtype == info.dtype:
            data = src.read(indexes=list(info.bands), window=window)
        else:
            data = src.read(indexes=list(info.bands), window=window, out_dtype=dtype)
        valid: npt.NDArray[np.bool_] | None = None
        if not info.all_valid:
            # GDAL's per-pixel validity: nodata in every band, alpha or a mask band.
            mask = src.dataset_mask(window=window) > 0
            valid = None if mask.all() else mask
    except (RasterioError, CPLE_BaseError) as exc:
        raise InputDataError(
            f"cannot read {info.path} at window col {box.col0}, row {r0}, {box.width} x {r1 - r0} px: "
            f"{_first_line(exc)}; check that the file is complete (gdalinfo -checksum) and that a VRT's "
            "sources exist"
        ) from None
    if dtype == "float32":
        finite = np.isfinite(data).all(axis=0)
        if not finite.all():
            data[:, ~finite] = 0.0
            valid = finite if valid is None else valid & finite
    # Tiles are views of these rows: a write through one would change its neighbours.
    data.flags.writeable = False
    if valid is not None:
        valid.flags.writeable = False
    return _Strip(r0, r1, data, valid, time.perf_counter() - start, time.thread_time() - cpu)


def _band(held: deque[_Strip], a: int, b: int) -> tuple[npt.NDArray[Any], npt.NDArray[np.bool_] | None]:
    """Rows ``[a, b)`` from the held strips: a view when one strip holds them all, else a copy."""
    parts = [s for s in held if s.row0 < b and s.row1 > a]
    if len(parts) == 1:
        s = parts[0]
        valid = None if s.valid is None else s.valid[a - s.row0 : b - s.row0]
        return s.data[:, a - s.row0 : b - s.row0], valid
    data = np.concatenate(
        [s.data[:, max(a, s.row0) - s.row0 : min(b, s.row1) - s.row0] for s in parts], axis=1
    )
    data.flags.writeable = False
    if all(s.valid is None for s in parts):
        return data, None
    valid = np.concatenate(
        [
            (s.valid if s.valid is not None else np.ones(s.data.shape[1:], bool))[
                max(a, s.row0) - s.row0 : min(b, s.row1) - s.row0
            ]
            for s in parts
        ],
        axis=0,
    )
    valid.flags.writeable = False
    return data, valid


def _cut(
    tile: Tile,
    info: RasterInfo,
    box: Box,
    band: npt.NDArray[Any],
    band_valid: npt.NDArray[np.bool_] | None,
    pad_mode: PadMode,
) -> tuple[npt.NDArray[Any], npt.NDArray[np.bool_] | None] | None:
    """Slice *tile* out of its row's band and pad it as ``TileReader`` does; None when all invalid."""
    c0, _, w, h = tile.read_window(info.width, info.height)
    if h != band.shape[1]:
        raise AssertionError(f"tile {tile.index} spans {h} rows, its band {band.shape[1]}")
    x = c0 - box.col0
    data = band[:, :, x : x + w]
    valid = None if band_valid is None else band_valid[:, x : x + w]
    if valid is not None and not valid.any():
        return None
    pad = tile.padding(info.width, info.height)
    if any(p for side in pad for p in side):
        # Same np.pad calls as TileReader (on the raw values: padding copies values, so it commutes
        # with the later cast), hence the same pixels even where the pad exceeds the read.
        data = np.pad(data, ((0, 0), *pad), mode=pad_mode)
        base = valid if valid is not None else np.ones((h, w), dtype=bool)
        valid = np.pad(base, pad, mode="constant")
        data.flags.writeable = False
        valid.flags.writeable = False
        return data, valid
    if valid is not None and valid.all():
        valid = None
    return data, valid


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
