"""Tile reads: per-tile ``TileReader`` windows vs block-aligned strips (:func:`read_chunk_tiles`).

Reads every tile of a blend grid over a synthetic orthophoto (the sample generator's: 5-band uint8,
deflate, pixel-interleaved, *block*-px internal tiles) both ways and reports, per tile, the CPU time of
the whole process (all threads) and the wall time, plus how many pixels each way asks GDAL for and how
many block pixels it makes GDAL decode (without GDAL's block cache; with it, a handle that happens to
re-read a block it still holds does not decode it again, which the CPU time shows).

Ways, each on ``--threads`` threads:

* ``tile_reader``: the pipeline's way until now: a pool of threads, each with its own ``TileReader``,
  reading the tiles in row-major order (float32 out);
* ``strips``: :func:`read_chunk_tiles`, values in the raster's type (uint8; the backend casts on its
  device);
* ``strips_cast``: the same plus a float32 host copy of each tile, to tell the gain of decoding once
  from that of not casting on the host.

The raster is measured twice: as generated (``nodata=0`` declared: dataset masks are read too) and with
the nodata declaration removed (no masks). Run on a quiet machine::

    python benchmarks/bench_reading.py                          # 4096², 512-px tiles, overlap 128
    python benchmarks/bench_reading.py --size 8192 --threads 1 2 4 --rounds 5 --json reading.json
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import rasterio

from flair_deploy.inference.chunks import Chunk, plan_chunks
from flair_deploy.inference.raster import RasterInfo, TileReader, inspect_raster
from flair_deploy.inference.reading import input_strip_rows, read_chunk_tiles
from flair_deploy.inference.tiling import Tile, TileGrid, TilingPlan, make_grid
from flair_deploy.sample import make_sample_ortho, sample_description


def tile_reader_tiles(info: RasterInfo, tiles: list[Tile], threads: int, prefetch: int) -> Iterator[Any]:
    """Per-tile reads on a thread pool, one TileReader per thread, in order (as the pipeline did)."""
    local = threading.local()
    opened: list[TileReader] = []
    lock = threading.Lock()

    def task(tile: Tile) -> Any:
        reader = getattr(local, "reader", None)
        if reader is None:
            reader = local.reader = TileReader(info)
            with lock:
                opened.append(reader)
        return reader.read(tile)

    pool = ThreadPoolExecutor(max_workers=threads)
    futures: deque[Future[Any]] = deque()
    work = iter(tiles)
    try:
        for tile in work:
            futures.append(pool.submit(task, tile))
            if len(futures) >= prefetch:
                break
        while futures:
            fut = futures.popleft()
            nxt = next(work, None)
            if nxt is not None:
                futures.append(pool.submit(task, nxt))
            yield fut.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        for r in opened:
            r.close()


def strip_tiles(
    info: RasterInfo, grid: TileGrid, chunks: list[Chunk], threads: int, prefetch_rows: int, cast: bool
) -> Iterator[Any]:
    for c in chunks:
        with closing(read_chunk_tiles(info, grid, c, threads=threads, prefetch_rows=prefetch_rows)) as reads:
            for r in reads:
                yield np.ascontiguousarray(r.data, dtype=np.float32) if cast and r.data is not None else r


def measure(make: Callable[[], Iterator[Any]], rounds: int) -> tuple[float, float, int]:
    """Best-of-*rounds* ``(cpu_s, wall_s, tiles)`` to exhaust a fresh iterator from *make*."""
    best_cpu = best_wall = math.inf
    n = 0
    for _ in range(rounds):
        c0, w0 = time.process_time(), time.perf_counter()
        n = sum(1 for _ in make())
        best_cpu = min(best_cpu, time.process_time() - c0)
        best_wall = min(best_wall, time.perf_counter() - w0)
    return best_cpu, best_wall, n


def _blocks_touched(c0: int, r0: int, w: int, h: int, block: int) -> int:
    cols = (c0 + w - 1) // block - c0 // block + 1
    rows = (r0 + h - 1) // block - r0 // block + 1
    return cols * rows


def pixel_ratios(
    info: RasterInfo, grid: TileGrid, chunks: list[Chunk], block: int, strip_rows: int
) -> dict[str, float]:
    """Requested and block-decoded pixels over raster pixels, per way (GDAL block cache ignored)."""
    area = info.width * info.height
    req_t = dec_t = req_s = dec_s = 0
    for c in chunks:
        for t in c.tile_grid_tiles(grid):
            c0, r0, w, h = t.read_window(info.width, info.height)
            req_t += w * h
            dec_t += _blocks_touched(c0, r0, w, h, block) * block * block
        box = c.read
        r = box.row0
        while r < box.row1:
            stop = min((r // strip_rows + 1) * strip_rows, box.row1)
            req_s += box.width * (stop - r)
            dec_s += _blocks_touched(box.col0, r, box.width, stop - r, block) * block * block
            r = stop
    return {
        "tile_reader_requested": req_t / area,
        "tile_reader_decoded": dec_t / area,
        "strips_requested": req_s / area,
        "strips_decoded": dec_s / area,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=4096, help="raster edge, px (default 4096)")
    parser.add_argument("--block", type=int, default=512, help="raster internal tile, px (default 512)")
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=128)
    parser.add_argument("--chunk-width", type=int, default=0, help="chunk width, px (default: one chunk)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--prefetch", type=int, default=16, help="TileReader tiles in flight (default 16)")
    parser.add_argument("--prefetch-rows", type=int, default=2, help="strips read ahead (default 2)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    results: dict[str, Any] = {
        "size": args.size,
        "block": args.block,
        "tile": args.tile,
        "overlap": args.overlap,
    }
    description = sample_description(args.tile)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        masked = make_sample_ortho(
            Path(tmp) / "ortho.tif", width=args.size, height=args.size, block=args.block, compress="deflate"
        )
        results["generate_s"] = round(time.perf_counter() - t0, 2)
        plain = Path(tmp) / "ortho_no_nodata.tif"
        plain.write_bytes(masked.read_bytes())
        with rasterio.open(plain, "r+") as ds:
            ds.nodata = None
        for label, path in (("nodata", masked), ("no_nodata", plain)):
            info = inspect_raster(path, description, allow_gsd_mismatch=True)
            grid = make_grid(info.width, info.height, TilingPlan.blend(args.tile, args.overlap))
            width = args.chunk_width or math.ceil(info.width / args.block) * args.block
            chunks = list(plan_chunks(grid, chunk_width=width, chunk_height=width, block=args.block))
            tiles = [t for c in chunks for t in c.tile_grid_tiles(grid)]
            strip_rows = input_strip_rows(info)
            section: dict[str, Any] = {
                "masks_read": not info.all_valid,
                "tiles": len(tiles),
                "chunks": len(chunks),
                "strip_rows": strip_rows,
                **{
                    k: round(v, 3)
                    for k, v in pixel_ratios(info, grid, chunks, args.block, strip_rows).items()
                },
            }
            for threads in args.threads:
                ways: dict[str, Callable[[], Iterator[Any]]] = {
                    "tile_reader": partial(tile_reader_tiles, info, tiles, threads, args.prefetch),
                    "strips": partial(strip_tiles, info, grid, chunks, threads, args.prefetch_rows, False),
                    "strips_cast": partial(
                        strip_tiles, info, grid, chunks, threads, args.prefetch_rows, True
                    ),
                }
                for name, make in ways.items():
                    cpu, wall, n = measure(make, args.rounds)
                    assert n == len(tiles), (name, n, len(tiles))
                    section[f"{name}_threads{threads}_cpu_ms_per_tile"] = round(1e3 * cpu / n, 2)
                    section[f"{name}_threads{threads}_wall_ms_per_tile"] = round(1e3 * wall / n, 2)
            results[label] = section
    print(json.dumps(results, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
