"""Stitch tile predictions over one chunk of the output, in row bands as wide as the chunk.

Each :class:`~flair_deploy.inference.chunks.Chunk` is stitched on its own: its tiles (of the global
grid) arrive in row-major order, and the stitcher keeps one band of ``tile`` rows over the chunk's
width; when the first tile of the next tile row arrives, every row above that row's first kept pixel is
final: it is reduced to uint8 (class index, confidence, optional probabilities) and handed to an
:class:`OutputBand`, which releases rows only in whole output blocks. Only pixels inside the chunk are
accumulated, so memory is ``O(chunk width × tile × active classes)`` whatever the raster's size.

* ``blend``: probabilities of the *active* classes times a separable window, summed, then divided by
  the summed weights. The window (:func:`blend_window`) is 1 in the tile centre, 0 over a small border
  ``b`` on sides that lie inside the raster (the network's least reliable pixels), and a raised-cosine
  (half-Hann) ramp over the rest of the overlap; ramps of neighbouring tiles sum to one. Sides on the
  raster edge are not tapered, so edge pixels keep full weight. Nodata pixels get weight 0.
* ``crop``: each tile writes its kept core (the crop grid's keep intervals partition the raster), with
  no arithmetic on probabilities.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from flair_deploy.errors import ConfigError
from flair_deploy.inference.chunks import Box, Chunk
from flair_deploy.inference.tiling import Tile, TileGrid
from flair_deploy.predictions import masked_argmax

__all__ = ["OutputBand", "OutputChunk", "RowBandStitcher", "TilePrediction", "blend_window"]

_U8 = npt.NDArray[np.uint8]
_F32 = npt.NDArray[np.float32]
# Rows reduced at once: bounds the float temporaries of a reduction to ~16 × width × classes
# (~15 MB each at 16384 px and 15 classes), small next to the row band itself.
_REDUCE_ROWS = 16
#: Logit-index value meaning "no prediction" inside the stitcher (mapped to the output nodata later).
NO_CLASS = 255


@dataclass(frozen=True, slots=True)
class TilePrediction:
    """The network's output for one tile.

    Exactly one of *probabilities* or (*classes*, *confidence*) is set.

    Attributes:
        tile: The tile.
        valid: ``(T, T)`` bool, True where the input pixel holds data.
        probabilities: ``(K, T, T)`` float32 probabilities over all logits (0 for inactive ones).
        classes: ``(T, T)`` uint8 logit indices.
        confidence: ``(T, T)`` float32 probability of the chosen class.
    """

    tile: Tile
    valid: npt.NDArray[np.bool_]
    probabilities: _F32 | None = None
    classes: _U8 | None = None
    confidence: _F32 | None = None


@dataclass(frozen=True, slots=True)
class OutputChunk:
    """Final output rows ``[row, row + classes.shape[0])``, full width.

    Attributes:
        row: First row.
        classes: ``(n, W)`` uint8 logit indices, 255 where there is no prediction.
        confidence: ``(n, W)`` uint8 ``round(255 × p)`` of the chosen class, or None.
        probabilities: ``(K, n, W)`` uint8 ``round(255 × p)`` per logit, or None.
        col: First column (the chunk's left edge).
    """

    row: int
    classes: _U8
    confidence: _U8 | None
    probabilities: _U8 | None
    col: int = 0

    @property
    def rows(self) -> int:
        """Number of rows."""
        return int(self.classes.shape[0])

    @property
    def width(self) -> int:
        """Number of columns."""
        return int(self.classes.shape[1])


def blend_window(size: int, overlap: int, border: int, *, inner_start: bool, inner_stop: bool) -> _F32:
    """Return the 1-D blend weights of a tile side by side.

    Args:
        size: Tile length.
        overlap: Nominal overlap with the neighbouring tile.
        border: Pixels given weight 0 on inner sides (``2·border < overlap`` unless both are 0).
        inner_start: Taper the low side (it lies inside the raster).
        inner_stop: Taper the high side.

    Returns:
        ``(size,)`` float32 weights in ``[0, 1]``.
    """
    w = np.ones(size, dtype=np.float64)
    ramp_len = overlap - 2 * border
    i = np.arange(max(ramp_len, 0), dtype=np.float64)
    # sin² ramp of length L: r_i + r_{L-1-i} = 1, so two facing ramps sum to one (partition of unity).
    ramp = np.sin(0.5 * math.pi * (i + 0.5) / max(ramp_len, 1)) ** 2
    if inner_start:
        w[:border] = 0.0
        w[border : border + ramp_len] = ramp
    if inner_stop:
        w[size - border :] = 0.0
        w[size - border - ramp_len : size - border] = ramp[::-1]
    return w.astype(np.float32)


class OutputBand:
    """Collect final rows and release them in whole output blocks (each block written once).

    Args:
        height: Raster height: the last, partial block is released by :meth:`finish`.
        block: Output block height in rows.
    """

    def __init__(self, height: int, block: int) -> None:
        self.height = height
        self.block = block
        self._pending: list[OutputChunk] = []
        self._row = 0  # first row not yet released

    def push(self, chunk: OutputChunk) -> list[OutputChunk]:
        """Add final rows; return the chunks now complete to whole blocks (maybe none)."""
        self._pending.append(chunk)
        held = sum(c.rows for c in self._pending)
        ready = held // self.block * self.block
        return self._release(ready) if ready else []

    def finish(self) -> list[OutputChunk]:
        """Release every row still held (the raster's last rows)."""
        held = sum(c.rows for c in self._pending)
        return self._release(held) if held else []

    def _release(self, rows: int) -> list[OutputChunk]:
        merged = _concat(self._pending)
        self._pending = [] if merged.rows == rows else [_slice(merged, rows, merged.rows)]
        out = _slice(merged, 0, rows)
        self._row += rows
        return [out]


def _concat(chunks: Sequence[OutputChunk]) -> OutputChunk:
    if len(chunks) == 1:
        return chunks[0]
    conf = [c.confidence for c in chunks]
    probs = [c.probabilities for c in chunks]
    return OutputChunk(
        chunks[0].row,
        np.concatenate([c.classes for c in chunks]),
        None if conf[0] is None else np.concatenate([c for c in conf if c is not None]),
        None if probs[0] is None else np.concatenate([p for p in probs if p is not None], axis=1),
        chunks[0].col,
    )


def _slice(chunk: OutputChunk, a: int, b: int) -> OutputChunk:
    return OutputChunk(
        chunk.row + a,
        chunk.classes[a:b],
        None if chunk.confidence is None else chunk.confidence[a:b],
        None if chunk.probabilities is None else chunk.probabilities[:, a:b],
        chunk.col,
    )


class RowBandStitcher:
    """Accumulate a chunk's tile predictions row band by row band; emit final rows in whole blocks.

    Args:
        grid: The raster's global tile grid (its mode selects blend or crop).
        active: Per-logit flag: True for trained classes.
        overlap: Blend overlap the grid was built with.
        border: Blend border given zero weight on inner tile sides.
        block: Output block height; chunks are released in multiples of it.
        confidence: Produce the confidence plane.
        probabilities: Produce per-logit uint8 probabilities.
        chunk: The chunk to stitch (its tiles must be fed, in row-major order); None for the whole
            raster as one chunk.

    Raises:
        ConfigError: If the blend border does not fit in the overlap.
    """

    def __init__(
        self,
        grid: TileGrid,
        *,
        active: Sequence[bool],
        overlap: int = 0,
        border: int = 0,
        block: int = 256,
        confidence: bool = False,
        probabilities: bool = False,
        chunk: Chunk | None = None,
    ) -> None:
        if grid.mode == "blend" and overlap > 0 and not 0 <= 2 * border < overlap:
            raise ConfigError(
                f"blend border {border} px leaves no ramp in an overlap of {overlap} px; "
                f"use a border < {overlap // 2 + overlap % 2}"
            )
        self.grid = grid
        self.mode = grid.mode
        self.num_classes = len(active)
        self.active = tuple(bool(a) for a in active)
        self.active_index = np.flatnonzero(np.asarray(active, dtype=bool))
        self.want_conf = confidence
        self.want_probs = probabilities
        self.box = chunk.output if chunk is not None else Box(0, 0, grid.height, grid.width)
        self.output = OutputBand(self.box.row1, block)
        self._overlap, self._border = overlap, border
        w, t = self.box.width, grid.size
        self._band_rows = t
        self._base = self.box.row0  # absolute row of band row 0
        self._row_index = chunk.tile_rows[0] if chunk is not None else 0  # current tile row
        if self.mode == "blend":
            self._acc: _F32 = np.zeros((len(self.active_index), t, w), dtype=np.float32)
            self._wsum: _F32 = np.zeros((t, w), dtype=np.float32)
            self._windows: dict[tuple[bool, bool], _F32] = {}
        else:
            self._cls: _U8 = np.full((t, w), NO_CLASS, dtype=np.uint8)
            self._conf: _U8 = np.zeros((t, w), dtype=np.uint8)
            self._prob: _U8 = np.zeros((self.num_classes if probabilities else 0, t, w), dtype=np.uint8)

    # ------------------------------------------------------------------ feeding
    def add(self, prediction: TilePrediction) -> list[OutputChunk]:
        """Add one tile's prediction (tiles must come in row-major order).

        Returns:
            Output chunks completed by moving to this tile's row (often none).
        """
        out = self.advance(prediction.tile)
        if self.mode == "blend":
            self._add_blend(prediction)
        else:
            self._add_crop(prediction)
        return out

    def advance(self, tile: Tile) -> list[OutputChunk]:
        """Note that *tile* is next (call it for skipped tiles too); returns chunks made final."""
        if tile.row_index < self._row_index:
            raise ValueError(f"tile row {tile.row_index} arrived after row {self._row_index}: not row-major")
        out: list[OutputChunk] = []
        if tile.row_index > self._row_index:
            self._row_index = tile.row_index
            out = self._finalize(self.grid.rows[tile.row_index].keep_start)
        return out

    def finish(self) -> list[OutputChunk]:
        """Finalise every remaining row of the chunk; returns the last rows."""
        return self._finalize(self.box.row1) + self.output.finish()

    # ------------------------------------------------------------------ blend
    def _window(self, tile: Tile) -> _F32:
        key = (tile.row.inner_start, tile.row.inner_stop, tile.col.inner_start, tile.col.inner_stop)
        rk, ck = key[:2], key[2:]
        if rk not in self._windows:
            self._windows[rk] = blend_window(
                tile.size, self._overlap, self._border, inner_start=rk[0], inner_stop=rk[1]
            )
        if ck not in self._windows:
            self._windows[ck] = blend_window(
                tile.size, self._overlap, self._border, inner_start=ck[0], inner_stop=ck[1]
            )
        return np.outer(self._windows[rk], self._windows[ck])

    def _regions(self, tile: Tile) -> tuple[slice, slice, slice, slice]:
        """Return (band rows, band cols, tile rows, tile cols) slices of the tile's kept area in the chunk."""
        r, c, box = tile.row, tile.col, self.box
        r0, r1 = max(r.keep_start, box.row0), min(r.keep_stop, box.row1)
        c0, c1 = max(c.keep_start, box.col0), min(c.keep_stop, box.col1)
        if r0 >= r1 or c0 >= c1:
            raise AssertionError(f"tile {tile.index} keeps no pixel of the chunk {box}")
        band_r = slice(r0 - self._base, r1 - self._base)
        tile_r = slice(r0 - r.start, r1 - r.start)
        band_c = slice(c0 - box.col0, c1 - box.col0)
        tile_c = slice(c0 - c.start, c1 - c.start)
        if band_r.start < 0 or band_r.stop > self._band_rows:
            raise AssertionError(f"tile rows {r} fall outside the row band at {self._base}")
        return band_r, band_c, tile_r, tile_c

    def _add_blend(self, p: TilePrediction) -> None:
        if p.probabilities is None:
            raise ValueError("blend stitching needs class probabilities")
        band_r, band_c, tile_r, tile_c = self._regions(p.tile)
        weight = self._window(p.tile)[tile_r, tile_c] * p.valid[tile_r, tile_c]
        probs = p.probabilities[self.active_index][:, tile_r, tile_c]
        self._acc[:, band_r, band_c] += probs * weight
        self._wsum[band_r, band_c] += weight

    # ------------------------------------------------------------------ crop
    def _add_crop(self, p: TilePrediction) -> None:
        band_r, band_c, tile_r, tile_c = self._regions(p.tile)
        valid = p.valid[tile_r, tile_c]
        if p.probabilities is not None:
            probs = p.probabilities[:, tile_r, tile_c]
            arg = masked_argmax(probs, self.active)
            cls = arg.astype(np.uint8)
            conf = np.take_along_axis(probs, arg[None], axis=0)[0]
            if self.want_probs:
                self._prob[:, band_r, band_c] = np.where(valid, _to_u8(probs), 0)
        elif p.classes is not None and p.confidence is not None:
            cls = p.classes[tile_r, tile_c]
            conf = p.confidence[tile_r, tile_c]
        else:
            raise ValueError("crop stitching needs probabilities or classes with confidence")
        self._cls[band_r, band_c] = np.where(valid, cls, NO_CLASS)
        if self.want_conf:
            self._conf[band_r, band_c] = np.where(valid, _to_u8(conf), 0)

    # ------------------------------------------------------------------ finalising
    def _finalize(self, upto: int) -> list[OutputChunk]:
        n = min(upto, self.box.row1) - self._base
        if n <= 0:
            return []
        if n > self._band_rows:
            raise AssertionError(f"cannot finalise {n} rows from a band of {self._band_rows}")
        chunk = self._reduce_blend(n) if self.mode == "blend" else self._reduce_crop(n)
        self._shift(n)
        self._base += n
        return self.output.push(chunk)

    def _reduce_crop(self, n: int) -> OutputChunk:
        return OutputChunk(
            self._base,
            self._cls[:n].copy(),
            self._conf[:n].copy() if self.want_conf else None,
            self._prob[:, :n].copy() if self.want_probs else None,
            self.box.col0,
        )

    def _reduce_blend(self, n: int) -> OutputChunk:
        w = self.box.width
        cls = np.empty((n, w), dtype=np.uint8)
        conf = np.empty((n, w), dtype=np.uint8) if self.want_conf else None
        probs = np.zeros((self.num_classes, n, w), dtype=np.uint8) if self.want_probs else None
        for a in range(0, n, _REDUCE_ROWS):
            b = min(a + _REDUCE_ROWS, n)
            acc, wsum = self._acc[:, a:b], self._wsum[a:b]
            empty = wsum <= 0.0
            # argmax of the weighted sum = argmax of the weighted mean: no division needed for classes.
            # The accumulators hold the active classes only, so every plane may win.
            arg = masked_argmax(acc, [True] * len(self.active_index))
            cls[a:b] = np.where(empty, NO_CLASS, self.active_index[arg])
            if conf is None and probs is None:
                continue
            inv = np.divide(1.0, wsum, out=np.zeros_like(wsum), where=~empty)
            if conf is not None:
                top = np.take_along_axis(acc, arg[None], axis=0)[0]
                conf[a:b] = _to_u8(top * inv)
            if probs is not None:
                probs[self.active_index, a:b] = _to_u8(acc * inv)
        return OutputChunk(self._base, cls, conf, probs, self.box.col0)

    def _shift(self, n: int) -> None:
        """Drop the first *n* band rows and clear the freed rows at the bottom."""
        arrays: list[npt.NDArray[np.generic]]
        if self.mode == "blend":
            arrays, fills = [self._acc, self._wsum], [0.0, 0.0]
        else:
            arrays, fills = [self._cls, self._conf, self._prob], [NO_CLASS, 0, 0]
        for arr, fill in zip(arrays, fills, strict=True):
            axis_rows = arr.shape[-2]
            keep = axis_rows - n
            if keep > 0:
                arr[..., :keep, :] = arr[..., n:, :]
            arr[..., max(keep, 0) :, :] = fill


def _to_u8(p: npt.NDArray[np.floating]) -> _U8:
    """``round(255 × p)`` as uint8 (rounded, not truncated as IGN's ``class_prob``)."""
    out: _U8 = np.clip(np.rint(p * 255.0), 0, 255).astype(np.uint8)
    return out
