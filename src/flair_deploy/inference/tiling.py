"""Tile grids in pixel space: integer windows, full coverage, no resampling.

Two grids are built here, one per stitching mode, both as the product of two 1-D axis layouts:

* **blend** (:func:`blend_axis`): tiles of ``tile`` px every ``tile - overlap`` px from the first pixel;
  the last tile is *shifted back* to end exactly at the raster edge, so no tile reads outside the raster
  and no zero padding ever reaches the network. A raster smaller than one tile gets one tile, padded
  by reflection (the only padding this grid uses).
* **crop** (:func:`crop_axis`): IGN ``flair-detect``'s grid, integer version. Patches of ``P`` px
  every ``P - 2m`` px starting at ``-m``, so the first *core* (the patch minus its margin ``m``) is flush
  with the image edge; a patch that would end past ``length + m`` is shifted to end there, duplicates
  are dropped, and where cores overlap the patch IGN writes *last* wins. IGN loops over x from the
  west and over y from the **south**, so along rows the grid is anchored at the bottom edge and the
  north-most (shifted) patch wins: ``anchor="end"`` reproduces that.

Each :class:`AxisTile` says which pixels the tile *keeps* (writes or weights); the keep intervals of a
crop axis partition ``[0, length)`` exactly, those of a blend axis cover it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from flair_deploy.errors import ConfigError

__all__ = [
    "AxisTile",
    "StitchMode",
    "Tile",
    "TileGrid",
    "blend_axis",
    "crop_axis",
    "make_grid",
]

StitchMode = Literal["blend", "crop"]


@dataclass(frozen=True, slots=True)
class AxisTile:
    """One tile along one axis.

    Attributes:
        start: First pixel the tile covers; negative, or ending past the raster, when padded.
        keep_start: First pixel (absolute) this tile contributes to the output.
        keep_stop: One past the last pixel it contributes.
        inner_start: The tile's low side lies inside the raster (a blend window tapers there).
        inner_stop: The tile's high side lies inside the raster.
    """

    start: int
    keep_start: int
    keep_stop: int
    inner_start: bool
    inner_stop: bool


@dataclass(frozen=True, slots=True)
class Tile:
    """One tile of a grid, with its position in row-major order.

    Attributes:
        index: Position in row-major order (0-based).
        row_index: Index of the tile row.
        col_index: Index of the tile column.
        row: Row-axis layout.
        col: Column-axis layout.
        size: Edge of the (square) tile in pixels.
    """

    index: int
    row_index: int
    col_index: int
    row: AxisTile
    col: AxisTile
    size: int

    def read_window(self, width: int, height: int) -> tuple[int, int, int, int]:
        """Return ``(col_off, row_off, cols, rows)`` of the tile clipped to the raster."""
        c0, r0 = max(self.col.start, 0), max(self.row.start, 0)
        c1, r1 = min(self.col.start + self.size, width), min(self.row.start + self.size, height)
        return c0, r0, c1 - c0, r1 - r0

    def padding(self, width: int, height: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """Return ``((top, bottom), (left, right))`` padding that brings the clipped read to full size."""
        c0, r0, w, h = self.read_window(width, height)
        top, left = r0 - self.row.start, c0 - self.col.start
        return (top, self.size - h - top), (left, self.size - w - left)

    def centre(self) -> tuple[float, float]:
        """Return the ``(col, row)`` pixel coordinates of the tile centre (edges at integers)."""
        return self.col.start + self.size / 2.0, self.row.start + self.size / 2.0


@dataclass(frozen=True, slots=True)
class TileGrid:
    """A grid of square tiles over a ``width`` × ``height`` raster, iterated in row-major order.

    Attributes:
        width: Raster width in pixels.
        height: Raster height in pixels.
        size: Tile edge in pixels.
        mode: Stitching mode the grid was built for.
        rows: Row-axis layouts, sorted by start (top to bottom).
        cols: Column-axis layouts, sorted by start (left to right).
    """

    width: int
    height: int
    size: int
    mode: StitchMode
    rows: tuple[AxisTile, ...]
    cols: tuple[AxisTile, ...]

    def __len__(self) -> int:
        return len(self.rows) * len(self.cols)

    def __iter__(self) -> Iterator[Tile]:
        n = 0
        for i, r in enumerate(self.rows):
            for j, c in enumerate(self.cols):
                yield Tile(n, i, j, r, c, self.size)
                n += 1

    def tile(self, index: int) -> Tile:
        """Return the tile at row-major position *index*."""
        i, j = divmod(index, len(self.cols))
        return Tile(index, i, j, self.rows[i], self.cols[j], self.size)


def blend_axis(length: int, tile: int, overlap: int) -> tuple[AxisTile, ...]:
    """Lay tiles along one axis for blending: stride ``tile - overlap``, last tile flush with the edge.

    Args:
        length: Raster length along the axis (pixels, > 0).
        tile: Tile length (pixels, > 0).
        overlap: Pixels shared by neighbouring tiles (``0 <= overlap < tile``).

    Returns:
        Tiles sorted by start; every pixel of ``[0, length)`` is kept by at least one tile.

    Raises:
        ConfigError: If the arguments are inconsistent.
    """
    _check(length, tile)
    if not 0 <= overlap < tile:
        raise ConfigError(f"overlap {overlap} must be >= 0 and smaller than the tile size {tile}")
    if length <= tile:
        # One tile, reflect-padded past the far edge: the only padding a blend grid uses.
        return (AxisTile(0, 0, length, False, False),)
    starts = list(range(0, length - tile, tile - overlap))
    starts.append(length - tile)  # the shifted last tile: full coverage, nothing read outside
    return tuple(AxisTile(s, s, s + tile, s > 0, s + tile < length) for s in starts)


def crop_axis(
    length: int, tile: int, margin: int, *, anchor: Literal["start", "end"] = "start"
) -> tuple[AxisTile, ...]:
    """Lay patches along one axis exactly as IGN's ``flair-detect`` does, in integer pixels.

    Args:
        length: Raster length along the axis (pixels, > 0).
        tile: Patch length ``P`` (pixels).
        margin: Pixels ``m`` cropped from each side of a patch (``2m < P``).
        anchor: ``"start"`` lays the grid from pixel 0 (IGN's x); ``"end"`` from the far edge (IGN's
            y, which runs from the south: along rows the grid is anchored at the bottom).

    Returns:
        Patches sorted by start; their keep intervals partition ``[0, length)``.

    Raises:
        ConfigError: If the arguments are inconsistent.
    """
    _check(length, tile)
    if not 0 <= 2 * margin < tile:
        raise ConfigError(
            f"margin {margin} leaves no core in a {tile}-px patch; use 0 <= margin < {tile // 2}"
        )
    stride = tile - 2 * margin
    # IGN's loop, in IGN's order, along the axis as IGN walks it.
    origins: list[int] = []
    for x in range(-margin, length + margin, stride):
        if x + tile > length + margin:
            x = length + margin - tile
        if x not in origins:
            origins.append(x)
    cores = [(max(x + margin, 0), min(x + tile - margin, length)) for x in origins]
    # IGN writes in loop order and the last write wins: each core loses what a later core covers.
    kept: list[tuple[int, int, int]] = []
    for i, (x, (lo, hi)) in enumerate(zip(origins, cores, strict=True)):
        for later_lo, later_hi in cores[i + 1 :]:
            if later_lo <= lo < later_hi:
                lo = later_hi
            if later_lo < hi <= later_hi:
                hi = later_lo
        kept.append((x, lo, max(lo, hi)))
    if anchor == "end":
        kept = [(length - x - tile, length - hi, length - lo) for x, lo, hi in kept]
    kept.sort()
    return tuple(AxisTile(x, lo, hi, x > 0, x + tile < length) for x, lo, hi in kept if hi > lo)


def make_grid(
    width: int,
    height: int,
    tile: int,
    *,
    mode: StitchMode = "blend",
    overlap: int = 0,
    margin: int = 0,
) -> TileGrid:
    """Build the tile grid of a raster for a stitching mode.

    Args:
        width: Raster width in pixels.
        height: Raster height in pixels.
        tile: Tile edge in pixels.
        mode: ``"blend"`` (uses *overlap*) or ``"crop"`` (IGN's grid, uses *margin*).
        overlap: Blend overlap in pixels.
        margin: Crop margin in pixels.

    Returns:
        The grid, iterated in row-major order.

    Raises:
        ConfigError: If tile, overlap or margin are inconsistent.
    """
    if mode == "blend":
        rows, cols = blend_axis(height, tile, overlap), blend_axis(width, tile, overlap)
    else:
        rows = crop_axis(height, tile, margin, anchor="end")
        cols = crop_axis(width, tile, margin, anchor="start")
    return TileGrid(width, height, tile, mode, rows, cols)


def _check(length: int, tile: int) -> None:
    if length <= 0:
        raise ConfigError(f"raster length {length} px must be positive")
    if tile <= 0:
        raise ConfigError(f"tile size {tile} px must be positive")
