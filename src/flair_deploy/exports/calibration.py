"""Tiles for INT8 calibration and parity checks, read exactly as inference reads them.

Tiles are **raw band values** as float32 ``(N, C, T, T)`` (the graph normalises), taken from

* a FLAIR CSV, read by :func:`~flair_deploy.flair_format.read_patch_csv` (the rule of ``train`` and
  ``evaluate``; here the mask column is optional), or
* rasters (:data:`~flair_deploy.flair_format.RASTER_SUFFIXES`), or folders of them searched
  recursively, from integer windows spread over each raster.

Tiles are drawn round-robin across every input so that one large raster cannot dominate, with a
seeded generator so the same sources always give the same set. :attr:`TileSet.sha256` hashes the
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


def _windows(height: int, width: int, tile: int) -> list[tuple[int, int]]:
    """Return the (row, col) offsets of a grid of whole tiles covering the raster, edges pulled in."""
    rows = sorted({*range(0, height - tile + 1, tile), height - tile})
    cols = sorted({*range(0, width - tile + 1, tile), width - tile})
    return [(r, c) for r in rows for c in cols]


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
    """Read *count* tiles spread across every source.

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
            all sources together hold fewer than *count* tiles.
    """
    import rasterio
    from rasterio.errors import RasterioIOError
    from rasterio.windows import Window

    tile = tile_size or description.tile_size
    items = _expand(sources)
    rng = np.random.default_rng(seed)
    # Every item's window grid, shuffled, then drawn round-robin across items.
    grids: list[list[tuple[int, int]]] = []
    for item in items:
        try:
            with rasterio.open(item.image) as ds:
                _band_indexes(item.image, ds.count, description)
                if ds.height < tile or ds.width < tile:
                    raise InputDataError(
                        f"raster {item.image} is {ds.width}×{ds.height} px, smaller than one {tile}-px tile; "
                        "give larger rasters or a smaller --tile"
                    )
                grid = _windows(ds.height, ds.width, tile)
        except RasterioIOError as exc:
            raise InputDataError(f"cannot read {purpose} raster {item.image}: {exc}") from None
        order = rng.permutation(len(grid))
        grids.append([grid[i] for i in order])
    available = sum(len(g) for g in grids)
    if available < count:
        raise InputDataError(
            f"{purpose} sources give only {available} tiles of {tile} px ({len(items)} rasters), "
            f"{count} needed; add rasters or lower the tile count"
        )
    picks: list[tuple[int, tuple[int, int]]] = []
    depth = 0
    while len(picks) < count:
        for i, grid in enumerate(grids):
            if depth < len(grid) and len(picks) < count:
                picks.append((i, grid[depth]))
        depth += 1
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
