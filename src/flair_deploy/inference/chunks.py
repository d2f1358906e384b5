"""Chunks: rectangular pieces of the output map, each computed independently.

A raster's output is cut into chunks aligned with the output blocks (so every GeoTIFF block is written
by exactly one chunk) and with the global tile grid. A chunk lists the tiles of the *global* grid whose
kept area intersects it, reads them (its read window is the chunk plus a halo that reaches to the far
side of those tiles) and stitches them over its own pixels only.

Why the map does not depend on the chunking: a pixel's value is a function of the tiles that keep it
(blend: the weighted sum over the tiles covering it, accumulated in row-major tile order; crop: the one
tile whose core holds it). A chunk computes exactly those tiles, through the same global grid, in the
same order, so each pixel gets the same bits whatever chunk it falls in. The price is that tiles
straddling a chunk boundary are computed by both chunks; :attr:`ChunkPlan.overhead` says how much.

A :class:`Chunk` is a plain frozen value (integers only) that pickles and round-trips through JSON, so
it can be sent to another process and recorded in a ledger.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self

from flair_deploy.errors import ConfigError
from flair_deploy.inference.tiling import AxisTile, Tile, TileGrid

__all__ = [
    "DEFAULT_CHUNK_BUDGET_MB",
    "Box",
    "Chunk",
    "ChunkPlan",
    "chunk_bytes",
    "chunk_width_for_budget",
    "plan_chunks",
]

#: Default memory budget of one chunk's stitching state (accumulators and pending output rows), MiB.
DEFAULT_CHUNK_BUDGET_MB = 192


@dataclass(frozen=True, slots=True)
class Box:
    """A pixel rectangle ``[row0, row1) × [col0, col1)`` of the raster."""

    row0: int
    col0: int
    row1: int
    col1: int

    def __post_init__(self) -> None:
        if self.row1 < self.row0 or self.col1 < self.col0:
            raise ValueError(f"box {self} has a negative size")

    @property
    def height(self) -> int:
        """Rows in the box."""
        return self.row1 - self.row0

    @property
    def width(self) -> int:
        """Columns in the box."""
        return self.col1 - self.col0

    @property
    def pixels(self) -> int:
        """Pixels in the box."""
        return self.height * self.width


@dataclass(frozen=True, slots=True)
class Chunk:
    """One chunk of the output map.

    Attributes:
        index: Position in row-major chunk order (0-based); stable for a given plan.
        chunk_row: Row of the chunk in the chunk grid.
        chunk_col: Column of the chunk in the chunk grid.
        output: The output pixels this chunk writes (aligned to output blocks).
        read: The input pixels it reads: the union of its tiles' windows, clipped to the raster.
        tile_rows: ``(first, stop)`` global tile-row indices of its tiles.
        tile_cols: ``(first, stop)`` global tile-column indices of its tiles.
    """

    index: int
    chunk_row: int
    chunk_col: int
    output: Box
    read: Box
    tile_rows: tuple[int, int]
    tile_cols: tuple[int, int]

    @property
    def tiles(self) -> int:
        """Number of tiles this chunk computes."""
        return (self.tile_rows[1] - self.tile_rows[0]) * (self.tile_cols[1] - self.tile_cols[0])

    @property
    def id(self) -> str:
        """A stable name, e.g. ``r0003c0012`` (chunk row 3, column 12)."""
        return f"r{self.chunk_row:04d}c{self.chunk_col:04d}"

    def tile_grid_tiles(self, grid: TileGrid) -> Iterator[Tile]:
        """Yield this chunk's tiles of *grid*, in row-major order (global indices and positions)."""
        cols = len(grid.cols)
        for i in range(*self.tile_rows):
            for j in range(*self.tile_cols):
                yield Tile(i * cols + j, i, j, grid.rows[i], grid.cols[j], grid.size)

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible form (for ledgers and other processes)."""
        o, r = self.output, self.read
        return {
            "index": self.index,
            "chunk_row": self.chunk_row,
            "chunk_col": self.chunk_col,
            "output": [o.row0, o.col0, o.row1, o.col1],
            "read": [r.row0, r.col0, r.row1, r.col1],
            "tile_rows": list(self.tile_rows),
            "tile_cols": list(self.tile_cols),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """Rebuild a chunk from :meth:`to_dict`'s output."""
        tr, tc = data["tile_rows"], data["tile_cols"]
        return cls(
            int(data["index"]),
            int(data["chunk_row"]),
            int(data["chunk_col"]),
            Box(*(int(v) for v in data["output"])),
            Box(*(int(v) for v in data["read"])),
            (int(tr[0]), int(tr[1])),
            (int(tc[0]), int(tc[1])),
        )


@dataclass(frozen=True, slots=True)
class ChunkPlan:
    """The chunks of one raster's output.

    Attributes:
        width: Raster width in pixels.
        height: Raster height in pixels.
        chunk_width: Nominal chunk width (a multiple of the output block; edge chunks are smaller).
        chunk_height: Nominal chunk height (likewise).
        grid_tiles: Tiles in the raster's global grid.
        chunks: The chunks, in row-major order.
    """

    width: int
    height: int
    chunk_width: int
    chunk_height: int
    grid_tiles: int
    chunks: tuple[Chunk, ...]

    def __len__(self) -> int:
        return len(self.chunks)

    def __iter__(self) -> Iterator[Chunk]:
        return iter(self.chunks)

    @property
    def tiles(self) -> int:
        """Tiles computed over all chunks (tiles on chunk boundaries count once per chunk)."""
        return sum(c.tiles for c in self.chunks)

    @property
    def overhead(self) -> float:
        """Share of extra tile computations caused by chunking (0.0 for a single chunk)."""
        return self.tiles / self.grid_tiles - 1.0 if self.grid_tiles else 0.0


def _spans(length: int, step: int) -> list[tuple[int, int]]:
    return [(a, min(a + step, length)) for a in range(0, length, step)]


def _keeping(axis: Sequence[AxisTile], lo: int, hi: int) -> tuple[int, int]:
    """``(first, stop)`` indices of the axis tiles whose kept interval meets ``[lo, hi)``.

    Kept intervals are sorted by start and by stop along an axis (blend: whole tiles at increasing
    starts; crop: a partition), so the tiles that meet an interval are contiguous.
    """
    idx = [i for i, t in enumerate(axis) if t.keep_start < hi and t.keep_stop > lo]
    if not idx:
        raise AssertionError(f"no tile keeps pixels [{lo}, {hi}): the grid does not cover the axis")
    return idx[0], idx[-1] + 1


def _reach(axis: Sequence[AxisTile], first: int, stop: int, size: int, length: int) -> tuple[int, int]:
    lo = min(axis[i].start for i in range(first, stop))
    hi = max(axis[i].start + size for i in range(first, stop))
    return max(lo, 0), min(hi, length)


def plan_chunks(grid: TileGrid, *, chunk_width: int, chunk_height: int, block: int) -> ChunkPlan:
    """Cut *grid*'s raster into chunks of at most ``chunk_height × chunk_width`` output pixels.

    Args:
        grid: The raster's global tile grid.
        chunk_width: Chunk width in pixels: a positive multiple of *block*.
        chunk_height: Chunk height in pixels: a positive multiple of *block*.
        block: Output block size; chunk edges fall on block edges.

    Returns:
        The plan; one chunk when the chunk size covers the raster.

    Raises:
        ConfigError: If a chunk size is not a positive multiple of the block size.
    """
    for name, value in (("chunk width", chunk_width), ("chunk height", chunk_height)):
        if value <= 0 or value % block:
            raise ConfigError(
                f"{name} {value} px is not a positive multiple of the output block size {block} px; "
                f"use e.g. {max(block, value // block * block)}"
            )
    row_spans, col_spans = _spans(grid.height, chunk_height), _spans(grid.width, chunk_width)
    row_tiles = [_keeping(grid.rows, a, b) for a, b in row_spans]
    col_tiles = [_keeping(grid.cols, a, b) for a, b in col_spans]
    chunks: list[Chunk] = []
    for i, ((r0, r1), tr) in enumerate(zip(row_spans, row_tiles, strict=True)):
        rr = _reach(grid.rows, *tr, grid.size, grid.height)
        for j, ((c0, c1), tc) in enumerate(zip(col_spans, col_tiles, strict=True)):
            cr = _reach(grid.cols, *tc, grid.size, grid.width)
            chunks.append(
                Chunk(len(chunks), i, j, Box(r0, c0, r1, c1), Box(rr[0], cr[0], rr[1], cr[1]), tr, tc)
            )
    return ChunkPlan(grid.width, grid.height, chunk_width, chunk_height, len(grid), tuple(chunks))


def chunk_bytes(
    chunk_width: int,
    *,
    tile: int,
    active_classes: int,
    num_classes: int,
    mode: str,
    block: int,
    confidence: bool = False,
    probabilities: bool = False,
) -> int:
    """Bytes of stitching state one chunk of *chunk_width* columns holds at once.

    Blend keeps a float32 accumulator per active class plus the summed weights over one band of
    *tile* rows; crop keeps uint8 planes. Both hold up to one block of finished uint8 rows per output
    plane until it is written.
    """
    planes = 1 + int(confidence) + (num_classes if probabilities else 0)
    pending = 2 * block * chunk_width * planes
    # blend: float32 accumulator per active class + summed weights; crop: uint8 planes.
    band = (active_classes + 1) * tile * chunk_width * 4 if mode == "blend" else planes * tile * chunk_width
    return band + pending


def chunk_width_for_budget(
    budget_bytes: int,
    *,
    width: int,
    tile: int,
    active_classes: int,
    num_classes: int,
    mode: str,
    block: int,
    confidence: bool = False,
    probabilities: bool = False,
) -> int:
    """Widest chunk (a multiple of *block*, at most the raster's width rounded up) within *budget_bytes*.

    Raises:
        ConfigError: If not even one block-wide chunk fits the budget.
    """
    per_block = chunk_bytes(
        block,
        tile=tile,
        active_classes=active_classes,
        num_classes=num_classes,
        mode=mode,
        block=block,
        confidence=confidence,
        probabilities=probabilities,
    )
    blocks = budget_bytes // per_block
    if blocks < 1:
        raise ConfigError(
            f"a chunk memory budget of {budget_bytes / 2**20:.0f} MiB cannot hold one {block}-px-wide chunk "
            f"of {tile}-px tiles ({per_block / 2**20:.0f} MiB needed); raise the budget or use smaller tiles"
        )
    return int(min(blocks, math.ceil(width / block)) * block)
