"""Stitch a chunk's tile logits into final class rows, on the device the network ran on.

Each :class:`~flair_deploy.inference.chunks.Chunk` is stitched on its own: its tiles (of the global
grid) arrive in row-major order, in batches, as the backend's *logits on its device* (numpy arrays for
CPU runtimes, torch CUDA tensors for PyTorch, onnxruntime-CUDA and TensorRT). The stitcher keeps one
band of ``tile`` rows over the chunk's width **on that device**; when the first tile of the next tile
row arrives, every row above that row's first kept pixel is final: it is reduced to uint8 (class
index, confidence, optional probabilities) on the device, and only those uint8 rows are copied back
(:class:`FinishedRows`, whose copy may still be in flight). Only pixels inside the chunk are
accumulated, so memory is ``O(chunk width × tile × active classes)`` whatever the raster's size.

The code is written once against the `array API standard <https://data-apis.org/array-api/>`_
(``array_api_compat``): the same lines run on numpy and on torch tensors of any device, and the suite
checks them on CPU tensors against numpy.

* ``blend``: softmax over the *active* classes (inactive ones are never accumulated), times a separable
  window, summed, then divided by the summed weights. The window (:func:`blend_window`) is 1 in the
  tile centre, 0 over a small border ``b`` on sides that lie inside the raster (the network's least
  reliable pixels), and a raised-cosine (half-Hann) ramp over the rest of the overlap; ramps of
  neighbouring tiles sum to one. Sides on the raster edge are not tapered, so edge pixels keep full
  weight. Nodata pixels get weight 0.
* ``crop``: each tile writes its kept core (the crop grid's keep intervals partition the raster), with
  no arithmetic on probabilities.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from flair_deploy.inference.chunks import Box, Chunk
from flair_deploy.inference.device import HOST, ArrayDevice, Download
from flair_deploy.inference.tiling import Tile, TileGrid
from flair_deploy.predictions import active_softmax, masked_argmax, masked_classes, masked_softmax

__all__ = ["NO_CLASS", "FinishedRows", "OutputBand", "OutputChunk", "RowBandStitcher", "blend_window"]

_U8 = npt.NDArray[np.uint8]
_F32 = npt.NDArray[np.float32]
# Rows reduced at once on the host: keeps the float temporaries of a reduction small and in cache. A
# GPU reduces all final rows in one go (fewer, larger kernels).
_HOST_REDUCE_ROWS = 16
#: Logit-index value meaning "no prediction" inside the stitcher (mapped to the output nodata later).
NO_CLASS = 255


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


@dataclass(frozen=True, slots=True)
class FinishedRows:
    """Final output rows of a chunk whose uint8 planes may still be on their way to the host.

    Attributes:
        row: First row (absolute).
        col: First column (the chunk's left edge).
        classes: ``(n, W)`` uint8 logit indices, 255 where there is no prediction.
        confidence: ``(n, W)`` uint8 confidence, or None.
        probabilities: ``(K, n, W)`` uint8 probabilities, or None.
    """

    row: int
    col: int
    classes: Download
    confidence: Download | None
    probabilities: Download | None

    def result(self) -> OutputChunk:
        """Wait for the copies and return the rows as host arrays."""
        return OutputChunk(
            self.row,
            self.classes.result(),
            None if self.confidence is None else self.confidence.result(),
            None if self.probabilities is None else self.probabilities.result(),
            self.col,
        )


class RowBandStitcher:
    """Accumulate a chunk's tile logits row band by row band, on the logits' device.

    Args:
        grid: The raster's global tile grid (its plan gives the mode, overlap and blend border).
        active: Per-logit flag: True for trained classes.
        confidence: Produce the confidence plane.
        probabilities: Produce per-logit uint8 probabilities.
        chunk: The chunk to stitch (its tiles must be fed, in row-major order); None for the whole
            raster as one chunk.
        device: Where the logits live (the backend's :attr:`~Backend.arrays`); the band lives there too.
    """

    def __init__(
        self,
        grid: TileGrid,
        *,
        active: Sequence[bool],
        confidence: bool = False,
        probabilities: bool = False,
        chunk: Chunk | None = None,
        device: ArrayDevice = HOST,
    ) -> None:
        self.grid = grid
        self.mode = grid.mode
        self.device = device
        xp = self.xp = device.xp
        self.num_classes = len(active)
        self.active = tuple(bool(a) for a in active)
        self.active_index = [int(i) for i in np.flatnonzero(np.asarray(active, dtype=bool))]
        self.want_conf = confidence
        self.want_probs = probabilities
        self.box = chunk.output if chunk is not None else Box(0, 0, grid.height, grid.width)
        self._overlap, self._border = grid.plan.overlap, grid.plan.border
        w, t = self.box.width, grid.size
        self._band_rows = t
        self._base = self.box.row0  # absolute row of band row 0
        self._row_index = chunk.tile_rows[0] if chunk is not None else 0  # current tile row
        self._reduce_rows = _HOST_REDUCE_ROWS if device.is_host else t
        self._dev = device.array_device
        z = {"device": self._dev}
        if self.mode == "blend":
            self._acc = xp.zeros((len(self.active_index), t, w), dtype=xp.float32, **z)
            self._wsum = xp.zeros((t, w), dtype=xp.float32, **z)
            self._windows: dict[tuple[bool, bool, bool, bool], Any] = {}
            # logit index of each accumulator plane, as a device lookup table for the reduction
            self._lut = device.asarray(np.asarray(self.active_index, dtype=np.uint8))
        else:
            self._cls = xp.full((t, w), NO_CLASS, dtype=xp.uint8, **z)
            self._conf = xp.zeros((t, w), dtype=xp.uint8, **z)
            self._prob = xp.zeros((self.num_classes if probabilities else 0, t, w), dtype=xp.uint8, **z)

    # ------------------------------------------------------------------ feeding
    def add(
        self,
        tiles: Sequence[Tile],
        logits: Any,
        valid: Sequence[npt.NDArray[np.bool_] | None],
    ) -> list[FinishedRows]:
        """Add a batch of tiles (in row-major order) and their logits.

        Args:
            tiles: The batch's tiles.
            logits: ``(N, K, T, T)`` logits on the stitcher's device.
            valid: Per tile, the ``(T, T)`` host validity mask, or None when every pixel is valid.

        Returns:
            Rows made final by moving to these tiles' rows (often none).
        """
        if len(tiles) != int(logits.shape[0]) or len(valid) != len(tiles):
            raise ValueError(f"{len(tiles)} tiles, {logits.shape[0]} logits and {len(valid)} masks")
        if self.mode == "blend":
            return self._add_blend(tiles, logits, valid)
        return self._add_crop(tiles, logits, valid)

    def advance(self, tile: Tile) -> list[FinishedRows]:
        """Note that *tile* is next (call it for skipped tiles too); returns rows made final."""
        if tile.row_index < self._row_index:
            raise ValueError(f"tile row {tile.row_index} arrived after row {self._row_index}: not row-major")
        out: list[FinishedRows] = []
        if tile.row_index > self._row_index:
            self._row_index = tile.row_index
            out = self._finalize(self.grid.rows[tile.row_index].keep_start)
        return out

    def finish(self) -> list[FinishedRows]:
        """Finalise every remaining row of the chunk; returns the last rows."""
        return self._finalize(self.box.row1)

    # ------------------------------------------------------------------ helpers
    def _valid(self, mask: npt.NDArray[np.bool_]) -> Any:
        return self.device.upload(np.ascontiguousarray(mask))

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

    # ------------------------------------------------------------------ blend
    def _window(self, tile: Tile) -> Any:
        key = (tile.row.inner_start, tile.row.inner_stop, tile.col.inner_start, tile.col.inner_stop)
        win = self._windows.get(key)
        if win is None:
            rows = blend_window(tile.size, self._overlap, self._border, inner_start=key[0], inner_stop=key[1])
            cols = blend_window(tile.size, self._overlap, self._border, inner_start=key[2], inner_stop=key[3])
            win = self._windows[key] = self.device.asarray(np.outer(rows, cols))
        return win

    def _add_blend(
        self, tiles: Sequence[Tile], logits: Any, valid: Sequence[npt.NDArray[np.bool_] | None]
    ) -> list[FinishedRows]:
        xp = self.xp
        # Softmax over the active classes only, (N, A, T, T): one call for the whole batch on a GPU
        # (few large kernels), tile by tile on the host (temporaries that stay in cache).
        batch_probs = None if self.device.is_host else active_softmax(logits, self.active)
        out: list[FinishedRows] = []
        for i, tile in enumerate(tiles):
            out += self.advance(tile)
            band_r, band_c, tile_r, tile_c = self._regions(tile)
            probs = batch_probs[i] if batch_probs is not None else active_softmax(logits[i], self.active)
            weight = self._window(tile)[tile_r, tile_c]
            mask = valid[i]
            if mask is not None:
                weight = weight * xp.astype(self._valid(mask)[tile_r, tile_c], xp.float32)
            kept = probs[:, tile_r, tile_c]
            kept *= weight  # in place: the probabilities are this call's own array
            self._acc[:, band_r, band_c] += kept
            self._wsum[band_r, band_c] += weight
        return out

    # ------------------------------------------------------------------ crop
    def _add_crop(
        self, tiles: Sequence[Tile], logits: Any, valid: Sequence[npt.NDArray[np.bool_] | None]
    ) -> list[FinishedRows]:
        xp = self.xp
        # As for blend: the whole batch at once on a GPU, tile by tile on the host.
        batch = None if self.device.is_host else self._crop_predictions(logits)
        out: list[FinishedRows] = []
        for i, tile in enumerate(tiles):
            out += self.advance(tile)
            band_r, band_c, tile_r, tile_c = self._regions(tile)
            preds, j = (batch, i) if batch is not None else (self._crop_predictions(logits[i : i + 1]), 0)
            conf, probs = preds[1][j], None if preds[2] is None else preds[2][j]
            cls = preds[0][j][tile_r, tile_c]
            mask = valid[i]
            ok = None if mask is None else self._valid(mask)[tile_r, tile_c]
            self._cls[band_r, band_c] = cls if ok is None else xp.where(ok, cls, NO_CLASS)
            if self.want_conf:
                c8 = _to_u8(xp, conf[tile_r, tile_c])
                self._conf[band_r, band_c] = c8 if ok is None else xp.where(ok, c8, 0)
            if probs is not None:
                p8 = _to_u8(xp, probs[:, tile_r, tile_c])
                self._prob[:, band_r, band_c] = p8 if ok is None else xp.where(ok, p8, 0)
        return out

    def _crop_predictions(self, logits: Any) -> tuple[Any, Any, Any]:
        """Classes, confidence and (when wanted) probabilities of ``(N, K, T, T)`` logits."""
        xp = self.xp
        if not self.want_probs:
            classes, conf = masked_classes(logits, self.active)
            return classes, conf, None
        probs = masked_softmax(logits, self.active)
        arg = masked_argmax(probs, self.active)
        return xp.astype(arg, xp.uint8), xp.take_along_axis(probs, arg[:, None], axis=1)[:, 0], probs

    # ------------------------------------------------------------------ finalising
    def _finalize(self, upto: int) -> list[FinishedRows]:
        n = min(upto, self.box.row1) - self._base
        if n <= 0:
            return []
        if n > self._band_rows:
            raise AssertionError(f"cannot finalise {n} rows from a band of {self._band_rows}")
        rows = self._reduce_blend(n) if self.mode == "blend" else self._reduce_crop(n)
        self._shift(n)
        self._base += n
        return [rows]

    def _finished(self, cls: Any, conf: Any, probs: Any) -> FinishedRows:
        d = self.device
        return FinishedRows(
            self._base,
            self.box.col0,
            d.download(cls),
            None if conf is None else d.download(conf),
            None if probs is None else d.download(probs),
        )

    def _reduce_crop(self, n: int) -> FinishedRows:
        xp = self.xp
        # Copies: the band is shifted and refilled while the rows may still be on their way back.
        return self._finished(
            xp.asarray(self._cls[:n], copy=True),
            xp.asarray(self._conf[:n], copy=True) if self.want_conf else None,
            xp.asarray(self._prob[:, :n], copy=True) if self.want_probs else None,
        )

    def _reduce_blend(self, n: int) -> FinishedRows:
        xp = self.xp
        every = [True] * len(self.active_index)
        cls_parts, conf_parts, prob_parts = [], [], []
        for a in range(0, n, self._reduce_rows):
            b = min(a + self._reduce_rows, n)
            acc, wsum = self._acc[:, a:b], self._wsum[a:b]
            empty = wsum <= 0.0
            # argmax of the weighted sum = argmax of the weighted mean: no division needed for classes.
            # The accumulators hold the active classes only, so every plane may win.
            arg = masked_argmax(acc, every)
            index = xp.reshape(xp.take(self._lut, xp.reshape(arg, (-1,)), axis=0), arg.shape)
            cls_parts.append(xp.where(empty, NO_CLASS, index))
            if not (self.want_conf or self.want_probs):
                continue
            inv = xp.where(empty, 0.0, 1.0 / xp.where(empty, 1.0, wsum))
            if self.want_conf:
                top = xp.take_along_axis(acc, arg[None], axis=0)[0]
                conf_parts.append(_to_u8(xp, top * inv))
            if self.want_probs:
                p8 = _to_u8(xp, acc * inv)
                full = xp.zeros((self.num_classes, b - a, self.box.width), dtype=xp.uint8, device=self._dev)
                for j, c in enumerate(self.active_index):
                    full[c] = p8[j]
                prob_parts.append(full)
        return self._finished(
            _join(xp, cls_parts, 0),
            _join(xp, conf_parts, 0) if self.want_conf else None,
            _join(xp, prob_parts, 1) if self.want_probs else None,
        )

    def _shift(self, n: int) -> None:
        """Drop the first *n* band rows and clear the freed rows at the bottom."""
        xp = self.xp
        if self.mode == "blend":
            arrays, fills = [self._acc, self._wsum], [0.0, 0.0]
        else:
            arrays, fills = [self._cls, self._conf, self._prob], [NO_CLASS, 0, 0]
        for arr, fill in zip(arrays, fills, strict=True):
            keep = arr.shape[-2] - n
            if keep > 0:
                src = arr[..., n:, :]
                # Overlapping source and destination (n < keep): copy first (torch does not allow it).
                arr[..., :keep, :] = xp.asarray(src, copy=True) if n < keep else src
            arr[..., max(keep, 0) :, :] = fill


def _join(xp: Any, parts: list[Any], axis: int) -> Any:
    return parts[0] if len(parts) == 1 else xp.concat(parts, axis=axis)


def _to_u8(xp: Any, p: Any) -> Any:
    """``round(255 × p)`` as uint8 (rounded half to even, not truncated as IGN's ``class_prob``)."""
    return xp.astype(xp.clip(xp.round(p * 255.0), 0, 255), xp.uint8)
