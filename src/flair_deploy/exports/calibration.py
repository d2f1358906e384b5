"""Tiles for INT8 calibration and parity checks, read exactly as inference reads them.

Tiles are **raw band values** as float32 ``(N, C, T, T)`` (the graph normalises), taken from

* a FLAIR CSV, read by :func:`~flair_deploy.flair_format.read_patch_csv` (the rule of ``train`` and
  ``evaluate``; here the mask column is optional), or
* rasters (:data:`~flair_deploy.flair_format.RASTER_SUFFIXES`), or folders of them searched
  recursively, from integer windows at any position of each raster (they may overlap) whose pixels are
  all valid data (GDAL's dataset mask: no nodata).

Tiles are drawn round-robin across every input so that one large raster cannot dominate, with a
seeded generator so the same sources always give the same set; a large orthophoto gives as many
windows as asked, not only its non-overlapping ones. :attr:`TileSet.sha256` hashes the
tiles actually used; it is stored in the model description as the calibration-set hash.

Band handling: a raster must have exactly the model's band count, except that the first bands of a
5-band FLAIR raster (R, G, B, NIR, E) feed a model whose bands are a prefix of that order (IGN's RGB
and RGBI models).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from flair_deploy.description import ModelDescription
from flair_deploy.errors import InputDataError
from flair_deploy.flair_format import FLAIR_BANDS, PatchPair, list_rasters, read_patch_csv
from flair_deploy.sample import sample_tiles

__all__ = [
    "TileSet",
    "read_tiles",
    "synthetic_tiles",
]


@dataclass(frozen=True)
class TileSet:
    """A batch of tiles ready to feed an exported graph.

    Attributes:
        images: Raw band values, float32 ``(N, C, T, T)``.
        masks: Logit indices, int16 ``(N, T, T)`` with -1 where unlabelled, or None.
        metadata: Encoded metadata vectors, float32 ``(N, D)``, for metadata models; else None.
        origin: Where the tiles came from (for reports), e.g. ``"3 rasters"``.
    """

    images: NDArray[np.float32]
    masks: NDArray[np.int16] | None
    metadata: NDArray[np.float32] | None
    origin: str

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def sha256(self) -> str:
        """SHA-256 of the tiles (shape and bytes of images, then metadata)."""
        h = hashlib.sha256()
        h.update(repr(self.images.shape).encode())
        h.update(np.ascontiguousarray(self.images).tobytes())
        if self.metadata is not None:
            h.update(np.ascontiguousarray(self.metadata).tobytes())
        return h.hexdigest()

    def batches(self, batch_size: int) -> Iterator[dict[str, NDArray[np.float32]]]:
        """Yield ONNX feeds of at most *batch_size* tiles."""
        for start in range(0, len(self), batch_size):
            feed = {"image": self.images[start : start + batch_size]}
            if self.metadata is not None:
                feed["metadata"] = self.metadata[start : start + batch_size]
            yield feed


def _expand(sources: Sequence[Path]) -> list[PatchPair]:
    items: list[PatchPair] = []
    for src in sources:
        if src.is_dir():
            items += [PatchPair(p, None) for p in list_rasters(src, recursive=True)]
        elif src.suffix.lower() == ".csv":
            items += read_patch_csv(src, require_masks=False)
        elif src.is_file():
            items.append(PatchPair(src, None))
        else:
            raise InputDataError(f"tile source {src} does not exist; give a FLAIR CSV, rasters or a folder")
    if not items:
        raise InputDataError("no tile sources given; give a FLAIR CSV, rasters or a folder of rasters")
    return items


def _band_indexes(path: Path, count: int, description: ModelDescription) -> list[int]:
    c = description.in_channels
    if count == c:
        return list(range(1, c + 1))
    if count == len(FLAIR_BANDS) and description.bands == FLAIR_BANDS[:c]:
        return list(range(1, c + 1))
    raise InputDataError(
        f"raster {path} has {count} bands but the model expects {c} ({', '.join(description.bands)}); "
        "give rasters with the model's bands in its order"
    )


#: The longest side of a raster's valid-data grid: windows start on a lattice of
#: ``ceil(max(height, width) / _GRID)`` px (1 px up to rasters of that size), so the grid stays small.
_GRID = 4096
#: Rows of grid cells read per mask strip (bounds memory on wide rasters).
_STRIP_CELLS = 256


def _nodata_cells(ds: Any, step: int) -> NDArray[np.bool_]:
    """Cells of *step* x *step* px holding at least one nodata pixel (GDAL's dataset mask), by strips."""
    from rasterio.enums import MaskFlags
    from rasterio.windows import Window

    height, width = ds.height, ds.width
    rows, cols = -(-height // step), -(-width // step)
    if all(flags == [MaskFlags.all_valid] for flags in ds.mask_flag_enums):
        return np.zeros((rows, cols), dtype=bool)  # no nodata, no mask: nothing to read
    cells = np.empty((rows, cols), dtype=bool)
    for r0 in range(0, rows, _STRIP_CELLS):
        r1 = min(rows, r0 + _STRIP_CELLS)
        y0, y1 = r0 * step, min(height, r1 * step)
        mask = ds.dataset_mask(window=Window(0, y0, width, y1 - y0)) == 0
        padded = np.zeros(((r1 - r0) * step, cols * step), dtype=bool)
        padded[: mask.shape[0], :width] = mask
        cells[r0:r1] = padded.reshape(r1 - r0, step, cols, step).any(axis=(1, 3))
    return cells


def _positions(
    path: Path, height: int, width: int, tile: int, rng: np.random.Generator, limit: int
) -> Iterator[tuple[int, int]]:
    """Yield up to *limit* distinct ``(row, col)`` offsets of *tile*-px windows free of nodata, seeded.

    Any offset may come up (windows may overlap): a 2048-px ortho gives as many 512-px windows as
    asked, not only its 16 non-overlapping ones. Offsets lie on a lattice of ``step`` px (1 px for
    rasters up to :data:`_GRID` px; coarser beyond, so the grid stays small), and a window is taken only
    when every ``step``-px cell it touches is free of nodata in GDAL's dataset mask (what ``detect``
    reads as data): exact for ``step = 1``, never accepting a nodata pixel otherwise. The mask is read
    once per raster, in strips; a raster without nodata or mask is not read at all.
    """
    import rasterio

    step = max(1, -(-max(height, width) // _GRID))
    with rasterio.open(path) as ds:
        bad = _nodata_cells(ds, step)
    span = -(-tile // step)  # cells a window starting on a cell corner touches
    # Summed-area table of nodata cells: a window is valid when its span x span block sums to 0.
    table = np.zeros((bad.shape[0] + 1, bad.shape[1] + 1), dtype=np.int64)
    table[1:, 1:] = bad.cumsum(0).cumsum(1)
    n_rows, n_cols = (height - tile) // step + 1, (width - tile) // step + 1
    block = (
        table[span : span + n_rows, span : span + n_cols]
        - table[:n_rows, span : span + n_cols]
        - table[span : span + n_rows, :n_cols]
        + table[:n_rows, :n_cols]
    )
    valid = np.flatnonzero(block == 0)
    if valid.size == 0:
        return
    for i in rng.choice(valid, size=min(limit, valid.size), replace=False):
        row, col = divmod(int(i), n_cols)
        yield row * step, col * step


def read_tiles(
    sources: Sequence[Path],
    description: ModelDescription,
    *,
    count: int,
    tile_size: int | None = None,
    seed: int = 0,
    with_masks: bool = False,
    purpose: str = "calibration",
) -> TileSet:
    """Read *count* tiles spread across every source: seeded windows at any position, valid data only.

    Sources are visited round-robin in a seeded order, each giving its next window (see
    :func:`_positions`) until *count* are drawn, so one large raster cannot dominate and a long CSV
    gives a random subset of its patches. The same sources and seed always give the same tiles.

    Args:
        sources: FLAIR CSVs, rasters, or folders of rasters.
        description: The model's description (band count and order, metadata spec, class codes).
        count: Number of tiles to return.
        tile_size: Tile edge; None uses the description's.
        seed: Seed of the window sampling.
        with_masks: Also read masks (CSV rows that name one) as logit indices.
        purpose: What the tiles are for, in error messages (``"calibration"``, ``"parity"``).

    Returns:
        The tiles; their metadata vectors are synthetic (see :func:`synthetic_metadata`).

    Raises:
        InputDataError: If a source is unreadable, has the wrong bands, is smaller than a tile, or
            all sources together hold fewer than *count* distinct windows free of nodata.
    """
    import rasterio
    from rasterio.errors import RasterioIOError
    from rasterio.windows import Window

    tile = tile_size or description.tile_size
    items = _expand(sources)
    rng = np.random.default_rng(seed)
    sizes: list[tuple[int, int]] = []
    for item in items:  # every source checked before any window is drawn
        try:
            with rasterio.open(item.image) as ds:
                _band_indexes(item.image, ds.count, description)
                if ds.height < tile or ds.width < tile:
                    raise InputDataError(
                        f"raster {item.image} is {ds.width}×{ds.height} px, smaller than one {tile}-px tile; "
                        "give larger rasters or a smaller --tile"
                    )
                sizes.append((ds.height, ds.width))
        except RasterioIOError as exc:
            raise InputDataError(f"cannot read {purpose} raster {item.image}: {exc}") from None
    # Position generators start lazily: a long CSV opens only the patches it draws from.
    order = [int(i) for i in rng.permutation(len(items))]
    streams: dict[int, Iterator[tuple[int, int]]] = {}
    picks: list[tuple[int, tuple[int, int]]] = []
    active = list(order)
    try:
        while active and len(picks) < count:
            for i in list(active):
                if len(picks) >= count:
                    break
                if i not in streams:
                    streams[i] = _positions(items[i].image, *sizes[i], tile, rng, count)
                position = next(streams[i], None)
                if position is None:
                    active.remove(i)
                else:
                    picks.append((i, position))
    except RasterioIOError as exc:
        raise InputDataError(f"cannot read {purpose} raster masks: {exc}") from None
    if len(picks) < count:
        raise InputDataError(
            f"{purpose} sources give only {len(picks)} distinct {tile}-px windows free of nodata "
            f"({len(items)} rasters), {count} needed; add rasters or lower the tile count"
        )
    images = np.empty((count, description.in_channels, tile, tile), dtype=np.float32)
    masks = np.full((count, tile, tile), -1, dtype=np.int16) if with_masks else None
    lut = np.asarray(description.code_lut(), dtype=np.int16)
    any_mask = False
    for n, (i, (row, col)) in enumerate(sorted(picks)):
        item = items[i]
        window = Window(col, row, tile, tile)
        try:
            with rasterio.open(item.image) as ds:
                images[n] = ds.read(_band_indexes(item.image, ds.count, description), window=window)
            if masks is not None and item.mask is not None:
                with rasterio.open(item.mask) as ms:
                    codes = ms.read(1, window=window)
                masks[n] = lut[np.clip(codes, 0, 255).astype(np.int64)]
                any_mask = True
        except RasterioIOError as exc:
            raise InputDataError(f"cannot read {purpose} tile from {item.image}: {exc}") from None
    metadata = synthetic_metadata(description, count, seed)
    return TileSet(images, masks if any_mask else None, metadata, f"{len(items)} rasters")


def synthetic_metadata(description: ModelDescription, count: int, seed: int) -> NDArray[np.float32] | None:
    """Return deterministic metadata vectors in ``[0, 1)`` for metadata models (None otherwise).

    The metadata encoding of real tiles belongs to the inference pipeline; export uses plausible
    encoded values so that the metadata MLP (kept in FP32) is exercised.
    """
    if description.metadata is None:
        return None
    rng = np.random.default_rng(seed + 1)
    return rng.random((count, description.metadata.dim), dtype=np.float32)


def synthetic_tiles(
    description: ModelDescription, count: int, *, tile_size: int | None = None, seed: int = 0
) -> TileSet:
    """Return *count* tiles of the sample world (:func:`flair_deploy.sample.sample_tiles`).

    Used for parity (and calibration in benchmarks) when no real tiles are given: the sample world
    has FLAIR-like regions, roofs and roads with per-class spectra and elevation, so the network's
    activations (and its argmax decisions) resemble those on real imagery, unlike white noise.

    Args:
        description: The model's description (bands, input dtype, metadata).
        count: Number of tiles.
        tile_size: Tile edge; None uses the description's.
        seed: World seed (the same seed gives the same tiles).
    """
    images = sample_tiles(description, count, tile_size or description.tile_size, seed=seed)
    return TileSet(images, None, synthetic_metadata(description, count, seed), "synthetic tiles")
