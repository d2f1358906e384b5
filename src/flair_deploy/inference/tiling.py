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

The tiling is one frozen value, :class:`TilingPlan` (tile, mode, overlap, margin, border), validated in
one place (:func:`check_tiling`, with one message per rule) and made from a model's description by one
function (:func:`plan_tiling`); the grid carries it (:attr:`TileGrid.plan`), so the stitcher and the
chunk planner read it from there instead of checking their own copies.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from flair_deploy.choices import Stitching
from flair_deploy.errors import ConfigError

if TYPE_CHECKING:
    from flair_deploy.description import ModelDescription

__all__ = [
    "AxisTile",
    "StitchMode",
    "Tile",
    "TileGrid",
    "TilingPlan",
    "blend_axis",
    "check_tiling",
    "crop_axis",
    "make_grid",
    "plan_tiling",
]

StitchMode = Stitching


def check_tiling(
    mode: Stitching | str,
    *,
    tile: int | None = None,
    overlap: int | None = None,
    margin: int | None = None,
    border: int | None = None,
) -> None:
    """Check tiling values against the rules, skipping those whose values are not known yet (None).

    This is the one home of the tiling rules: :class:`TilingPlan` applies them to complete values and
    ``detect``'s config to what the user gave, before a model is loaded.

    Raises:
        ConfigError: One line per broken rule, naming the value and what is allowed.
    """
    mode = Stitching(mode)
    if tile is not None and tile <= 0:
        raise ConfigError(f"tile size {tile} px must be positive")
    for name, value in (("overlap", overlap), ("margin", margin), ("blend border", border)):
        if value is not None and value < 0:
            raise ConfigError(f"{name} {value} px must be >= 0")
    if mode is Stitching.BLEND and margin:
        raise ConfigError("margin applies to stitching='crop' only; use overlap for blend")
    if mode is Stitching.CROP and border:
        raise ConfigError("blend_border applies to stitching='blend' only")
    if mode is Stitching.CROP and overlap:
        raise ConfigError("overlap applies to stitching='blend' only; use margin for crop")
    if tile is not None and overlap is not None and 2 * overlap >= tile:
        raise ConfigError(
            f"overlap {overlap} px leaves no tile centre in {tile}-px tiles; use an overlap < {(tile + 1) // 2}"
        )
    if tile is not None and margin is not None and 2 * margin >= tile:
        raise ConfigError(
            f"margin {margin} px leaves no core in {tile}-px tiles; use a margin < {(tile + 1) // 2}"
        )
    if overlap is not None and border:
        if not overlap:
            raise ConfigError("a blend border needs an overlap; set overlap > 2 x border or border 0")
        if 2 * border >= overlap:
            raise ConfigError(
                f"blend border {border} px leaves no ramp in an overlap of {overlap} px; "
                f"use a border < {(overlap + 1) // 2}"
            )


@dataclass(frozen=True, slots=True)
class TilingPlan:
    """Resolved tiling, validated when made (:func:`check_tiling`).

    Attributes:
        tile: Tile edge in pixels.
        mode: ``blend`` or ``crop``.
        overlap: Blend overlap in pixels (0 for crop).
        margin: Crop margin in pixels (0 for blend).
        border: Blend border of zero weight on inner tile sides (0 for crop).
    """

    tile: int
    mode: Stitching = Stitching.BLEND
    overlap: int = 0
    margin: int = 0
    border: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", Stitching(self.mode))
        check_tiling(self.mode, tile=self.tile, overlap=self.overlap, margin=self.margin, border=self.border)

    @property
    def label(self) -> str:
        """The plan in words, as maps record it (``STITCHING`` tag), e.g. ``blend tile=512 overlap=128 border=16``."""
        if self.mode is Stitching.CROP:
            return f"crop tile={self.tile} margin={self.margin}"
        return f"blend tile={self.tile} overlap={self.overlap} border={self.border}"

    @classmethod
    def blend(cls, tile: int, overlap: int = 0, border: int = 0) -> TilingPlan:
        """A blend plan."""
        return cls(tile, Stitching.BLEND, overlap=overlap, border=border)

    @classmethod
    def crop(cls, tile: int, margin: int = 0) -> TilingPlan:
        """A crop plan (IGN's grid)."""
        return cls(tile, Stitching.CROP, margin=margin)


def plan_tiling(
    description: ModelDescription,
    *,
    stitching: Stitching | str = Stitching.BLEND,
    tile: int | None = None,
    overlap: int | None = None,
    margin: int | None = None,
    border: int | None = None,
) -> TilingPlan:
    """Make the tiling plan of a run: unset values from the model, checked against its output stride.

    Defaults: the model's tile size; its overlap as the blend overlap or the crop margin (at most just
    under half the tile); a blend border of ``overlap // 8``.

    Raises:
        ConfigError: If the tile is not a multiple of the network's output stride, or a rule of
            :func:`check_tiling` is broken.
    """
    mode = Stitching(stitching)
    check_tiling(mode, tile=tile, overlap=overlap, margin=margin, border=border)
    size = tile or description.tile_size
    stride = description.architecture.output_stride
    if size % stride:
        lower = max(stride, size // stride * stride)
        raise ConfigError(
            f"tile size {size} px is not a multiple of the network's output stride {stride}; "
            f"use {lower} or {lower + stride}"
        )
    default = min(description.overlap, (size - 1) // 2)
    if mode is Stitching.CROP:
        return TilingPlan.crop(size, default if margin is None else margin)
    lap = default if overlap is None else overlap
    return TilingPlan.blend(size, lap, lap // 8 if border is None else border)


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
        plan: The tiling the grid was built for.
        rows: Row-axis layouts, sorted by start (top to bottom).
        cols: Column-axis layouts, sorted by start (left to right).
    """

    width: int
    height: int
    plan: TilingPlan
    rows: tuple[AxisTile, ...]
    cols: tuple[AxisTile, ...]

    @property
    def size(self) -> int:
        """Tile edge in pixels."""
        return self.plan.tile

    @property
    def mode(self) -> Stitching:
        """Stitching mode."""
        return self.plan.mode

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
        overlap: Pixels shared by neighbouring tiles (``0 <= 2 * overlap < tile``).

    Returns:
        Tiles sorted by start; every pixel of ``[0, length)`` is kept by at least one tile.

    Raises:
        ConfigError: If the arguments are inconsistent.
    """
    _check(length, tile)
    check_tiling(Stitching.BLEND, tile=tile, overlap=overlap)
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
    check_tiling(Stitching.CROP, tile=tile, margin=margin)
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


def make_grid(width: int, height: int, plan: TilingPlan) -> TileGrid:
    """Build the tile grid of a raster for a tiling plan.

    Args:
        width: Raster width in pixels.
        height: Raster height in pixels.
        plan: The tiling (blend uses its overlap, crop its margin: IGN's grid).

    Returns:
        The grid, iterated in row-major order.

    Raises:
        ConfigError: If the raster is empty.
    """
    if plan.mode is Stitching.BLEND:
        rows, cols = blend_axis(height, plan.tile, plan.overlap), blend_axis(width, plan.tile, plan.overlap)
    else:
        rows = crop_axis(height, plan.tile, plan.margin, anchor="end")
        cols = crop_axis(width, plan.tile, plan.margin, anchor="start")
    return TileGrid(width, height, plan, rows, cols)


def _check(length: int, tile: int) -> None:
    if length <= 0:
        raise ConfigError(f"raster length {length} px must be positive")
    if tile <= 0:
        raise ConfigError(f"tile size {tile} px must be positive")
