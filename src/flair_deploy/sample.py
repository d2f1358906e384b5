"""A small, learnable sample dataset in FLAIR #1's format, and large sample orthophotos.

Everything comes from one deterministic *scene generator* (:func:`render_scene`) defined over an infinite
Lambert-93 world at 0.2 m: any window of the world can be rendered on its own and always looks the same,
so 64-px training patches, a 4096² benchmark raster rendered block by block, and a 16384² one written in
bounded memory all show the same kind of landscape, and a model trained on the patches maps the
orthophotos sensibly.

The scene, from bottom to top:

* **Regions**: a jittered-grid Voronoi tessellation (cells of 32 px = 6.4 m). Each region is one of
  eight FLAIR classes (pervious and impervious surfaces, bare soil, water, coniferous, deciduous,
  herbaceous vegetation, agricultural land), drawn with fixed probabilities from a hash of its cell.
* **Buildings**: an axis-aligned roof of 10-24 px in most cells whose region is a (pervious or
  impervious) urban surface, and in a few rural ones, with its own height.
* **Roads**: impervious strips 3-6 px wide, horizontal and vertical, at hashed positions.

Each class has a distinct R, G, B, NIR and elevation signature (:data:`SAMPLE_SIGNATURES`); each region
a ±8 % brightness variation, each pixel Gaussian noise (stronger in tree canopies). Elevation follows
FLAIR's convention (1 unit = 20 cm above ground): roofs 8-16 m, trees 10-25 m, the rest near 0. Values
are uint8; R, G, B and NIR are never 0 (see the nodata convention of :func:`make_sample_ortho`).

The hash-based geometry (never a stateful random generator) is what makes windows independent; the
per-pixel noise is drawn from a generator seeded by ``(seed, row, col)`` of the window, so it is
deterministic too.

This is the project's only generator of synthetic imagery: the sample dataset (``train --sample-data``),
the sample orthophotos (demo, benchmarks), and the tiles that export (parity without a validation CSV)
and benchmarking feed a model (:func:`sample_tiles`) all come from it. It needs numpy (and rasterio to
write files), never torch.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from flair_deploy.aerial import AERIAL_ENCODING
from flair_deploy.atomic import atomic_folder, atomic_path
from flair_deploy.description import (
    ArchitectureSpec,
    ModelDescription,
    Provenance,
    class_preset,
)
from flair_deploy.errors import ConfigError, OutputError
from flair_deploy.flair_format import FLAIR_BANDS

__all__ = [
    "SAMPLE_CLASS_CODES",
    "SAMPLE_GSD",
    "SAMPLE_SIGNATURES",
    "SampleDataset",
    "make_sample_dataset",
    "make_sample_ortho",
    "render_scene",
    "sample_description",
    "sample_tiles",
]

SAMPLE_GSD = 0.2
#: Northing of the world's row 0; world row r is at ``_Y_TOP - r * gsd``, column c at ``c * gsd``.
_Y_TOP = 7_200_000.0
_CELL = 32  # Voronoi/building cell edge, px
_ROAD_BAND = 192  # at most one horizontal (vertical) road per band of this many rows (columns)

#: FLAIR codes of the classes the generator draws, in internal order.
SAMPLE_CLASS_CODES: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 10, 11)
_BUILDING, _PERVIOUS, _IMPERVIOUS, _WATER = 0, 1, 2, 4

#: Mean (R, G, B, NIR, elevation) per class, in :data:`SAMPLE_CLASS_CODES` order.
SAMPLE_SIGNATURES: tuple[tuple[float, float, float, float, float], ...] = (
    (170.0, 150.0, 140.0, 110.0, 60.0),  # 1 building: light roofs, raised (elevation drawn per roof)
    (120.0, 125.0, 95.0, 150.0, 2.0),  # 2 pervious surface: gardens, mixed low cover
    (95.0, 95.0, 100.0, 80.0, 1.0),  # 3 impervious surface: grey asphalt, low NIR
    (165.0, 135.0, 100.0, 125.0, 1.0),  # 4 bare soil: brown
    (40.0, 70.0, 90.0, 20.0, 0.0),  # 5 water: dark blue, NIR absorbed
    (45.0, 70.0, 50.0, 120.0, 95.0),  # 6 coniferous: dark green, tall
    (70.0, 110.0, 60.0, 190.0, 70.0),  # 7 deciduous: green, high NIR, tall
    (110.0, 150.0, 80.0, 200.0, 3.0),  # 10 herbaceous vegetation: bright green, low
    (200.0, 185.0, 120.0, 160.0, 2.0),  # 11 agricultural land: yellow crops
)
#: Per-pixel noise standard deviation (spectral, elevation) per class.
_NOISE: tuple[tuple[float, float], ...] = (
    (6.0, 2.0),
    (7.0, 2.0),
    (5.0, 1.0),
    (6.0, 1.0),
    (3.0, 0.5),
    (10.0, 12.0),
    (10.0, 10.0),
    (6.0, 2.0),
    (6.0, 1.5),
)
# Probability of each region class (internal indexes 1..8; buildings come from the building layer).
_REGION_PROBS: tuple[float, ...] = (0.0, 0.13, 0.08, 0.10, 0.09, 0.12, 0.14, 0.17, 0.17)

_MEANS = np.asarray(SAMPLE_SIGNATURES, dtype=np.float32)  # (K, 5)
_STDS = np.asarray([[s, s, s, s, e] for s, e in _NOISE], dtype=np.float32)  # (K, 5)
_CODES = np.asarray(SAMPLE_CLASS_CODES, dtype=np.uint8)
_REGION_CDF = np.cumsum(_REGION_PROBS)


# ---------------------------------------------------------------------------------------------- hashing
def _fmix(h: np.ndarray) -> np.ndarray:
    # MurmurHash3's 64-bit finaliser: a cheap, well-mixed integer hash (uint64 arithmetic wraps).
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xC4CEB9FE1A85EC53)
    out: np.ndarray = h ^ (h >> np.uint64(33))
    return out


def _uniform(a: np.ndarray, b: np.ndarray, seed: int, salt: int) -> np.ndarray:
    """Deterministic uniform [0, 1) values from integer coordinates (broadcast), a seed and a salt."""
    key = np.uint64((seed * 0x9E3779B97F4A7C15 + salt * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF)
    h = a.astype(np.int64).astype(np.uint64) * np.uint64(0x9E3779B1) ^ _fmix(
        b.astype(np.int64).astype(np.uint64) + key
    )
    out: np.ndarray = (_fmix(h + key) >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)
    return out


# ---------------------------------------------------------------------------------------------- scene
def render_scene(
    row0: int, col0: int, height: int, width: int, *, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Render a window of the sample world.

    Args:
        row0: World row of the window's top edge (row r lies at northing ``7 200 000 - 0.2 r``).
        col0: World column of the window's left edge (column c lies at easting ``0.2 c``).
        height: Window height, px.
        width: Window width, px.
        seed: World seed: a different seed is a different landscape.

    Returns:
        ``(image, mask)``: uint8 ``(5, height, width)`` R, G, B, NIR, elevation values and uint8
        ``(height, width)`` FLAIR class codes.
    """
    c = _CELL
    # Work on the window grown to whole cells, so each cell's pixels form one (C, C) block and the
    # per-cell quantities broadcast instead of being gathered per pixel.
    a0, b0 = row0 // c, col0 // c
    na, nb = -(-(row0 + height) // c) - a0, -(-(col0 + width) // c) - b0
    ai = np.arange(a0 - 1, a0 + na + 1, dtype=np.int64)[:, None]  # padded cell rows
    bi = np.arange(b0 - 1, b0 + nb + 1, dtype=np.int64)[None, :]
    seed_y = (ai - a0 + _uniform(ai, bi, seed, 1)) * c  # seed point in local pixel coordinates
    seed_x = (bi - b0 + _uniform(ai, bi, seed, 2)) * c
    region = np.searchsorted(_REGION_CDF, _uniform(ai, bi, seed, 3), side="right").astype(np.uint8)
    region = np.minimum(region, len(SAMPLE_CLASS_CODES) - 1)
    gain = (0.92 + 0.16 * _uniform(ai, bi, seed, 4)).astype(np.float32)

    p = np.arange(c, dtype=np.float32)
    rows = (np.arange(na, dtype=np.float32)[:, None] * c + p)[:, :, None]  # (na, C, 1)
    cols = (np.arange(nb, dtype=np.float32)[:, None] * c + p)[None, :, :]  # (1, nb, C)
    shape = (na, c, nb, c)
    best = np.full(shape, np.inf, dtype=np.float32)
    cls = np.zeros(shape, dtype=np.uint8)
    gn = np.ones(shape, dtype=np.float32)
    for di in (0, 1, 2):
        for dj in (0, 1, 2):
            sl = (slice(di, di + na), slice(dj, dj + nb))
            dy = rows - seed_y[sl].astype(np.float32)[:, None, :]  # (na, C, nb)
            dx = cols - seed_x[sl].astype(np.float32)[:, :, None]  # (na, nb, C)
            d = (dy * dy)[:, :, :, None] + (dx * dx)[:, None, :, :]
            closer = d < best
            np.copyto(best, d, where=closer)
            np.copyto(cls, region[sl][:, None, :, None], where=closer)
            np.copyto(gn, gain[sl][:, None, :, None], where=closer)

    # Buildings: one roof per cell, likely in urban regions, rare elsewhere, never in water.
    own = (slice(1, na + 1), slice(1, nb + 1))
    a, b = ai[own[0]], bi[:, own[1]]
    urban = (region[own] == _PERVIOUS) | (region[own] == _IMPERVIOUS)
    p_bld = np.where(urban, 0.75, np.where(region[own] == _WATER, 0.0, 0.08))
    has = _uniform(a, b, seed, 5) < p_bld
    bh = np.floor(10 + 15 * _uniform(a, b, seed, 6))
    bw = np.floor(10 + 15 * _uniform(a, b, seed, 7))
    top = np.floor(2 + (c - 4 - bh) * _uniform(a, b, seed, 8))
    left = np.floor(2 + (c - 4 - bw) * _uniform(a, b, seed, 9))
    roof_e = (40 + 40 * _uniform(a, b, seed, 10)).astype(np.float32)
    roof_g = (0.85 + 0.3 * _uniform(a, b, seed, 11)).astype(np.float32)
    in_r = (p[None, :, None] >= top[:, None, :]) & (p[None, :, None] < (top + bh)[:, None, :])
    in_c = (p[None, None, :] >= left[:, :, None]) & (p[None, None, :] < (left + bw)[:, :, None])
    bld = has[:, None, :, None] & in_r[:, :, :, None] & in_c[:, None, :, :]
    np.copyto(cls, np.uint8(_BUILDING), where=bld)
    np.copyto(gn, roof_g[:, None, :, None], where=bld)
    elev = np.where(bld, roof_e[:, None, :, None], np.float32(0.0))

    # Back to (rows, cols), cropped to the requested window.
    r_off, c_off = row0 - a0 * c, col0 - b0 * c
    crop = (slice(r_off, r_off + height), slice(c_off, c_off + width))
    cls2 = cls.reshape(na * c, nb * c)[crop]
    gn2 = gn.reshape(na * c, nb * c)[crop]
    bld2 = bld.reshape(na * c, nb * c)[crop]
    elev2 = elev.reshape(na * c, nb * c)[crop]

    # Roads: on top of everything (bridges over water included).
    road = (
        _roads(np.arange(row0, row0 + height), seed, 12)[:, None]
        | _roads(np.arange(col0, col0 + width), seed, 13)[None, :]
    )
    cls2 = np.where(road, np.uint8(_IMPERVIOUS), cls2)
    gn2 = np.where(road, np.float32(1.0), gn2)
    bld2 = bld2 & ~road

    rng = np.random.default_rng([seed, row0 & 0xFFFFFFFF, col0 & 0xFFFFFFFF, height, width])
    noise = rng.standard_normal((5, height, width), dtype=np.float32)
    image = np.empty((5, height, width), dtype=np.uint8)
    for band in range(5):
        mean = _MEANS[:, band][cls2]
        # Spectral bands get the region's brightness; elevation takes each roof's own height.
        mean = mean * gn2 if band < 4 else np.where(bld2, elev2, mean)
        value = mean + noise[band] * _STDS[:, band][cls2]
        # R, G, B and NIR stay >= 1 so that 0 on every band can mean nodata in sample orthophotos.
        np.clip(value, 1.0 if band < 4 else 0.0, 255.0, out=value)
        image[band] = np.rint(value)
    return image, _CODES[cls2]


def _roads(coord: np.ndarray, seed: int, salt: int) -> np.ndarray:
    band = coord // _ROAD_BAND
    zero = np.zeros_like(band)
    present = _uniform(band, zero, seed, salt) < 0.45
    offset = np.floor(16 + (_ROAD_BAND - 40) * _uniform(band, zero, seed, salt + 100))
    width = np.floor(3 + 4 * _uniform(band, zero, seed, salt + 200))
    local = coord - band * _ROAD_BAND - offset
    on: np.ndarray = present & (local >= 0) & (local < width)
    return on


# ---------------------------------------------------------------------------------------------- tiles
def sample_tiles(
    description: ModelDescription, count: int, tile: int | None = None, *, seed: int = 0
) -> npt.NDArray[np.float32]:
    """Render *count* tiles of the sample world as a model's raw input.

    What export (parity and calibration without real tiles) and benchmarking feed a model: FLAIR-like
    regions, roofs and roads, taken from distinct places so that a batch is not one image repeated.
    Bands are picked by name from :data:`~flair_deploy.flair_format.FLAIR_BANDS` (case-insensitive); a
    band the sample world lacks is filled with its R band. Values are scaled to the description's
    input dtype (uint8 as is, uint16 x 257, float32 / 255).

    Args:
        description: Model description (bands and input dtype).
        count: Number of tiles.
        tile: Tile edge in pixels; None uses the description's.
        seed: World seed (the same seed gives the same tiles).

    Returns:
        ``(count, C, tile, tile)`` float32 raw band values.
    """
    edge = tile or description.tile_size
    upper = [b.upper() for b in FLAIR_BANDS]
    index = [upper.index(b.upper()) if b.upper() in upper else 0 for b in description.bands]
    scale = {"uint8": 1.0, "uint16": 257.0, "float32": 1.0 / 255.0}[description.input_dtype]
    out = np.empty((count, len(index), edge, edge), dtype=np.float32)
    for i in range(count):
        # Large prime strides: far-apart windows of the world, one per tile.
        image, _ = render_scene(i * 7919, i * 104729, edge, edge, seed=seed)
        out[i] = image[index].astype(np.float32) * np.float32(scale)
    return out


# ---------------------------------------------------------------------------------------------- dataset
@dataclass(frozen=True)
class SampleDataset:
    """Paths and description of a generated sample dataset.

    Attributes:
        root: Dataset folder.
        train_csv: Training list (FLAIR format, paths relative to the CSV's folder).
        val_csv: Validation list.
        test_csv: Held-out test list.
        aerial_json: FLAIR aerial metadata keyed by image stem, or None if not generated.
        description: A model description suited to the data (5 bands, flair19 classes with the
            classes absent from the sample inactive, tile size = patch size).
    """

    root: Path
    train_csv: Path
    val_csv: Path
    test_csv: Path
    aerial_json: Path | None
    description: ModelDescription

    @property
    def band_indexes(self) -> tuple[int, ...]:
        """1-based raster bands in the description's order: R, G, B, NIR, E."""
        return (1, 2, 3, 4, 5)


def sample_description(size: int = 64) -> ModelDescription:
    """Return the description of a U-Net/ResNet-34 for the sample data at *size*-px tiles.

    The 19 FLAIR classes are kept (19 logits, as IGN's models); those the generator never draws are
    inactive. There is no metadata input: add ``metadata=aerial_spec()`` for a metadata model.
    """
    drawn = set(SAMPLE_CLASS_CODES)
    classes = tuple(c.model_copy(update={"active": c.code in drawn}) for c in class_preset("flair19"))
    return ModelDescription(
        name=f"flair-sample-unet-resnet34-{size}px",
        classes=classes,
        tile_size=size,
        overlap=size // 4,
        gsd=SAMPLE_GSD,
        architecture=ArchitectureSpec(arch="unet", encoder="resnet34"),
        provenance=Provenance(source="flair-deploy sample dataset"),
    )


_MARKER = "sample.json"


def make_sample_dataset(
    out_dir: Path,
    *,
    n_train: int = 160,
    n_val: int = 40,
    n_test: int = 40,
    size: int = 64,
    seed: int = 0,
    with_aerial: bool = True,
    overwrite: bool = False,
) -> SampleDataset:
    """Generate a small FLAIR-format dataset that a small U-Net learns in a few CPU minutes.

    Layout (the same as FLAIR's, with lists next to the data)::

        out_dir/
          train.csv  val.csv  test.csv       # "train/img/IMG_000000.tif,train/msk/MSK_000000.tif"
          train/img/IMG_000000.tif ...       # 5-band uint8 R, G, B, NIR, E; EPSG:2154, 0.2 m
          train/msk/MSK_000000.tif ...       # uint8 FLAIR class codes
          val/...  test/...
          aerial_metadata.json               # FLAIR aerial records keyed by image stem
          description.json                   # the suited ModelDescription
          sample.json                        # generator parameters (marks the folder as a sample)

    Patches are windows of the sample world (:func:`render_scene`) at random positions over France;
    their geotransforms and aerial records give those positions. The dataset is written to a
    temporary folder beside *out_dir* and renamed when complete (:func:`flair_deploy.atomic.atomic_folder`).

    Args:
        out_dir: Folder to create.
        n_train: Training patches.
        n_val: Validation patches.
        n_test: Test patches.
        size: Patch edge in pixels (a multiple of 32, the U-Net's output stride).
        seed: Seed; the same seed gives identical files.
        with_aerial: Also write the aerial metadata JSON.
        overwrite: Replace an existing sample dataset at *out_dir*.

    Returns:
        The paths and description of the dataset.

    Raises:
        ConfigError: For a non-positive count or a size that is not a multiple of 32.
        OutputError: If *out_dir* exists and is not empty (without *overwrite*), or is not a folder
            this function wrote.
    """
    out_dir = Path(out_dir)
    if size < 32 or size % 32:
        raise ConfigError(f"sample patch size must be a positive multiple of 32 (U-Net stride), got {size}")
    for name, n in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        if n < 1:
            raise ConfigError(f"{name} must be >= 1, got {n}")
    if out_dir.exists():
        if not out_dir.is_dir():
            raise OutputError(f"{out_dir} exists and is not a folder; choose another sample output folder")
        if any(out_dir.iterdir()):
            if not overwrite:
                raise OutputError(
                    f"{out_dir} already exists and is not empty; pass overwrite=True (--overwrite) to "
                    "replace it, or choose another folder"
                )
            if not (out_dir / _MARKER).is_file():
                raise OutputError(
                    f"{out_dir} is not empty and is not a flair-deploy sample dataset (no {_MARKER}); "
                    "refusing to delete it, choose an empty or new folder"
                )
    description = sample_description(size)
    # The checks above refuse what must not be replaced; the folder appears whole, or not at all.
    with atomic_folder(out_dir, overwrite=True) as tmp:
        _write_dataset(tmp, description, n_train, n_val, n_test, size, seed, with_aerial)
    return SampleDataset(
        root=out_dir,
        train_csv=out_dir / "train.csv",
        val_csv=out_dir / "val.csv",
        test_csv=out_dir / "test.csv",
        aerial_json=out_dir / "aerial_metadata.json" if with_aerial else None,
        description=description,
    )


def _write_dataset(
    root: Path,
    description: ModelDescription,
    n_train: int,
    n_val: int,
    n_test: int,
    size: int,
    seed: int,
    with_aerial: bool,
) -> None:
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(seed)
    aerial: dict[str, dict[str, object]] = {}
    cameras = ("UCE-M3-f120-s06", "UCE-M3-f100-s07", "UCE-M3-f120-s07", "CAMERA#030")
    index = 0
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        (root / split / "img").mkdir(parents=True)
        (root / split / "msk").mkdir(parents=True)
        rows: list[tuple[str, str]] = []
        for _ in range(n):
            # A random position over France (Lambert-93), snapped to the world's 0.2 m grid.
            col0 = int(rng.integers(200_000, 1_000_000) / SAMPLE_GSD)
            row0 = int((_Y_TOP - rng.integers(6_250_000, 7_050_000)) / SAMPLE_GSD)
            image, mask = render_scene(row0, col0, size, size, seed=seed)
            x0, y0 = col0 * SAMPLE_GSD, _Y_TOP - row0 * SAMPLE_GSD
            transform = from_origin(x0, y0, SAMPLE_GSD, SAMPLE_GSD)
            stem = f"{index:06d}"
            img_rel = f"{split}/img/IMG_{stem}.tif"
            msk_rel = f"{split}/msk/MSK_{stem}.tif"
            common = {"driver": "GTiff", "width": size, "height": size, "crs": "EPSG:2154"}
            with rasterio.open(
                root / img_rel, "w", count=5, dtype="uint8", transform=transform, **common
            ) as dst:
                dst.write(image)
                dst.descriptions = FLAIR_BANDS
            with rasterio.open(
                root / msk_rel, "w", count=1, dtype="uint8", transform=transform, **common
            ) as dst:
                dst.write(mask, 1)
            rows.append((img_rel, msk_rel))
            date_year = int(rng.integers(2018, 2023))
            aerial[f"IMG_{stem}"] = {
                "patch_centroid_x": round(x0 + size * SAMPLE_GSD / 2, 2),
                "patch_centroid_y": round(y0 - size * SAMPLE_GSD / 2, 2),
                "patch_centroid_z": round(float(20 + 1200 * rng.random()), 2),
                "camera": cameras[int(rng.integers(len(cameras)))],
                "date": f"{date_year:04d}-{int(rng.integers(4, 10)):02d}-{int(rng.integers(1, 29)):02d}",
                "time": f"{int(rng.integers(8, 17)):02d}h{int(rng.integers(0, 60)):02d}",
            }
            index += 1
        with (root / f"{split}.csv").open("w", newline="", encoding="utf-8") as f:
            csv.writer(f, lineterminator="\n").writerows(rows)
    if with_aerial:
        (root / "aerial_metadata.json").write_text(json.dumps(aerial, indent=1) + "\n", encoding="utf-8")
    description.save_sidecar(root / "description.json")
    marker = {
        "generator": "flair-deploy sample dataset",
        "seed": seed,
        "size": size,
        "n_train": n_train,
        "n_val": n_val,
        "n_test": n_test,
        "aerial_encoding": AERIAL_ENCODING if with_aerial else None,
        "class_codes": list(SAMPLE_CLASS_CODES),
    }
    (root / _MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------- ortho
def make_sample_ortho(
    path: Path,
    *,
    width: int,
    height: int,
    seed: int = 0,
    block: int = 512,
    nodata_border: int = 0,
    origin: tuple[float, float] = (650_000.0, 6_862_000.0),
    compress: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a large 5-band sample orthophoto, block by block in bounded memory.

    The raster is a window of the same world as :func:`make_sample_dataset` (same seed, same look), as a
    tiled uint8 GeoTIFF (R, G, B, NIR, E; EPSG:2154; 0.2 m; *block*-px internal tiles). Memory use is a
    few blocks, whatever the raster size.

    **Nodata convention**: the file declares ``nodata=0`` on every band. With *nodata_border* > 0, a
    border of that many pixels along all four edges is 0 on all five bands; the scene never writes 0 in
    R, G, B or NIR, so "all bands 0" (GDAL's dataset mask, ``rasterio``'s ``dataset_mask()``) marks
    exactly the border. Elevation may legitimately be 0 inside the scene.

    Args:
        path: Output GeoTIFF.
        width: Width, px.
        height: Height, px.
        seed: World seed (use the sample dataset's seed to match its landscape).
        block: Internal tile and write-block edge, px (a multiple of 16).
        nodata_border: Width of the nodata border, px (0 for none).
        origin: ``(x, y)`` Lambert-93 coordinates of the top-left corner; snapped to the 0.2 m grid.
        compress: GDAL compression (``"deflate"``, ``"lzw"``...) or None for an uncompressed, fast file.
        overwrite: Replace an existing file.

    Returns:
        *path*.

    Raises:
        ConfigError: For a non-positive size, a bad block size or a border that covers the raster.
        OutputError: If *path* exists (without *overwrite*) or cannot be written.
    """
    import rasterio
    from rasterio.errors import RasterioIOError
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    path = Path(path)
    if width < 1 or height < 1:
        raise ConfigError(f"sample ortho size must be positive, got {width}x{height}")
    if block < 16 or block % 16:
        raise ConfigError(f"block must be a positive multiple of 16 (GeoTIFF tiles), got {block}")
    if nodata_border < 0 or 2 * nodata_border >= min(width, height):
        raise ConfigError(
            f"nodata_border {nodata_border} must be >= 0 and leave data in a {width}x{height} raster "
            f"(< {min(width, height) // 2})"
        )
    if path.exists() and not overwrite:
        raise OutputError(f"{path} already exists; pass overwrite=True (--overwrite) to replace it")
    if not path.parent.is_dir():
        raise OutputError(f"output folder {path.parent} does not exist; create it first")
    col0 = round(origin[0] / SAMPLE_GSD)
    row0 = round((_Y_TOP - origin[1]) / SAMPLE_GSD)
    transform = from_origin(col0 * SAMPLE_GSD, _Y_TOP - row0 * SAMPLE_GSD, SAMPLE_GSD, SAMPLE_GSD)
    profile: dict[str, object] = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": 5,
        "dtype": "uint8",
        "crs": "EPSG:2154",
        "transform": transform,
        "nodata": 0,
        "tiled": True,
        "blockxsize": block,
        "blockysize": block,
        "interleave": "pixel",
        "BIGTIFF": "IF_SAFER",
    }
    if compress:
        profile.update(compress=compress, num_threads="ALL_CPUS")
    try:
        with atomic_path(path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
            dst.descriptions = FLAIR_BANDS
            for r in range(0, height, block):
                h = min(block, height - r)
                for c in range(0, width, block):
                    w = min(block, width - c)
                    image, _ = render_scene(row0 + r, col0 + c, h, w, seed=seed)
                    if nodata_border:
                        _blank_border(image, r, c, width, height, nodata_border)
                    dst.write(image, window=Window(c, r, w, h))
    except RasterioIOError as exc:
        raise OutputError(f"cannot write sample ortho {path}: {exc}") from None
    return path


def _blank_border(image: np.ndarray, r: int, c: int, width: int, height: int, border: int) -> None:
    """Zero, in place, the part of a block at (*r*, *c*) that lies within *border* px of the raster edge."""
    _, h, w = image.shape
    top = max(0, border - r)
    bottom = max(0, (r + h) - (height - border))
    left = max(0, border - c)
    right = max(0, (c + w) - (width - border))
    if top:
        image[:, : min(top, h)] = 0
    if bottom:
        image[:, h - min(bottom, h) :] = 0
    if left:
        image[:, :, : min(left, w)] = 0
    if right:
        image[:, :, w - min(right, w) :] = 0
