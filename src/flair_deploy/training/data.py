"""FLAIR training data: patch lists, the patch dataset and the Lightning data module.

FLAIR #1 lists its patches in CSV files: column 0 the image GeoTIFF, column 1 its mask.
:func:`~flair_deploy.flair_format.read_patch_csv` reads such a list (one rule for every command, see
``docs/data.md``). :class:`FlairPatchDataset` reads one patch per item and returns

* ``"image"``: float32 ``(C, H, W)`` **raw** band values (the model normalises inside its graph, so
  training, export and inference all feed the same thing);
* ``"mask"``: int64 ``(H, W)`` logit indices, mapped from FLAIR mask codes through the description's
  class table (:meth:`ModelDescription.code_lut`);
* ``"metadata"``: float32 ``(D,)`` ``flair-aerial-v1`` vector when aerial metadata is given;
* ``"name"``: the image stem (``"IMG_002993"``).

Rasters are opened inside ``__getitem__``: each DataLoader worker then owns its GDAL handles (a handle
opened in the parent and inherited by forked workers is what limited IGN's ``zone_detect`` to two
workers).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from flair_deploy._compat import ensure_torchvision_importable

# Lightning imports torchmetrics, which imports torchvision: the shim must run first.
ensure_torchvision_importable()

import lightning

from flair_deploy.aerial import AERIAL_DIM, AerialRecord, encode_aerial, load_aerial_json
from flair_deploy.description import ModelDescription
from flair_deploy.errors import ConfigError, InputDataError
from flair_deploy.flair_format import PatchPair, read_patch_csv
from flair_deploy.training.transforms import radiometric_jitter, random_d4

__all__ = [
    "FlairDataModule",
    "FlairPatchDataset",
    "PatchPair",
    "collate_patches",
    "loader_throughput",
    "read_patch_csv",
]

Sample = dict[str, Any]


class FlairPatchDataset(Dataset[Sample]):
    """FLAIR patches read with rasterio, one image (and mask) per item.

    Args:
        pairs: Patches to read (see :func:`read_patch_csv`).
        description: Model description; gives the band count, the class table and the value range.
        band_indexes: 1-based raster bands to read, in the model's band order
            (``len == description.in_channels``; ``(1, 2, 3, 4, 5)`` for FLAIR's R, G, B, NIR, E).
        ignore_index: Logit index given to mask codes that are not in the class table. None (default)
            makes such codes an error instead of training on them silently.
        augment: Apply a random D4 symmetry to image and mask together.
        radiometric_jitter: Strength of the per-band gain/offset jitter (0 disables it; see
            :func:`flair_deploy.training.transforms.radiometric_jitter`). Applied only with *augment*.
        aerial: Aerial records keyed by image stem; adds ``"metadata"`` to each item.

    Raises:
        ConfigError: If *band_indexes* does not match the description.
        InputDataError: If *aerial* lacks a record for a listed image.
    """

    def __init__(
        self,
        pairs: Sequence[PatchPair],
        *,
        description: ModelDescription,
        band_indexes: Sequence[int],
        ignore_index: int | None = None,
        augment: bool = False,
        radiometric_jitter: float = 0.0,
        aerial: Mapping[str, AerialRecord] | None = None,
    ) -> None:
        self.pairs = list(pairs)
        self.description = description
        self.band_indexes = _check_bands(band_indexes, description)
        self.ignore_index = ignore_index
        self.augment = augment
        if not 0.0 <= radiometric_jitter < 1.0:
            raise ConfigError(f"radiometric_jitter must be in [0, 1), got {radiometric_jitter}; try 0.05")
        self.jitter = radiometric_jitter
        lut = np.asarray(description.code_lut(), dtype=np.int64)
        self._known = lut >= 0
        if ignore_index is not None:
            lut = np.where(self._known, lut, ignore_index)
        self._lut = lut
        # Value range of the raw data, for the jitter offset and clipping.
        dtype = description.input_dtype
        self._value_range = 255.0 if dtype == "uint8" else 65535.0 if dtype == "uint16" else 1.0
        self._clip = None if dtype == "float32" else (0.0, self._value_range)
        self._metadata: list[np.ndarray] | None = None
        if aerial is not None:
            missing = [p.image.stem for p in self.pairs if p.image.stem not in aerial]
            if missing:
                raise InputDataError(
                    f"aerial metadata has no record for {len(missing)} listed image(s), e.g. "
                    f"{missing[:3]}; records are keyed by image stem (e.g. 'IMG_002993')"
                )
            self._metadata = [encode_aerial(aerial[p.image.stem]) for p in self.pairs]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> Sample:
        import rasterio
        from rasterio.errors import RasterioIOError

        pair = self.pairs[index]
        # One GDAL environment for both files (rasterio otherwise builds one per open), and no directory
        # listing on open: FLAIR folders hold thousands of patches and GDAL would scan them for sidecar
        # files that patches never have.
        mask_array: np.ndarray | None = None
        try:
            with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"):
                with rasterio.open(pair.image) as src:
                    if src.count < max(self.band_indexes):
                        raise InputDataError(
                            f"{pair.image} has {src.count} band(s) but band_indexes "
                            f"{list(self.band_indexes)} needs {max(self.band_indexes)}; "
                            "FLAIR patches have 5 (R, G, B, NIR, E)"
                        )
                    array = src.read(list(self.band_indexes))
                if pair.mask is not None:
                    with rasterio.open(pair.mask) as msrc:
                        mask_array = msrc.read(1)
        except RasterioIOError as exc:
            raise InputDataError(f"cannot read patch {pair.image.stem}: {exc}") from None

        image = torch.from_numpy(array.astype(np.float32, copy=False))
        sample: Sample = {"name": pair.image.stem}
        mask: torch.Tensor | None = None
        if mask_array is not None:
            assert pair.mask is not None
            if mask_array.shape != array.shape[1:]:
                raise InputDataError(
                    f"mask {pair.mask} is {mask_array.shape[1]}x{mask_array.shape[0]} px but its image "
                    f"{pair.image} is {array.shape[2]}x{array.shape[1]} px; they must match"
                )
            mask = torch.from_numpy(self._map_codes(mask_array, pair.mask))
        if self.augment:
            image, mask = random_d4(image, mask)
            if self.jitter > 0.0:
                image = radiometric_jitter(image, self.jitter, value_range=self._value_range, clip=self._clip)
        sample["image"] = image
        if mask is not None:
            sample["mask"] = mask
        if self._metadata is not None:
            sample["metadata"] = torch.from_numpy(self._metadata[index])
        return sample

    def _map_codes(self, codes: np.ndarray, path: Path) -> np.ndarray:
        if codes.dtype.kind not in "ui" or codes.min() < 0 or codes.max() > 255:
            raise InputDataError(
                f"mask {path} has {codes.dtype} values in [{codes.min()}, {codes.max()}]; "
                "expected uint8 FLAIR class codes"
            )
        codes = codes.astype(np.intp, copy=False)
        if self.ignore_index is None:
            known = self._known[codes]
            if not known.all():
                bad = np.unique(codes[~known]).tolist()
                valid = [i for i, k in enumerate(self._known) if k]
                raise InputDataError(
                    f"mask {path} contains code(s) {bad[:10]} that are not in the class table "
                    f"(codes {valid}); fix the mask, extend the classes, or set ignore_index"
                )
        mapped: np.ndarray = self._lut[codes]
        return mapped


_MIXED_SIZES_FIX = (
    "list patches of one size in each CSV (FLAIR's are 512x512), e.g. crop or tile the odd ones"
)


def collate_patches(samples: Sequence[Sample], *, fix: str = _MIXED_SIZES_FIX) -> dict[str, Any]:
    """Stack patches into a batch, refusing patches of different sizes in one line.

    Args:
        samples: Patches of :class:`FlairPatchDataset`.
        fix: What the error tells the user to do about mixed sizes.

    Raises:
        InputDataError: Naming the patches and their sizes (PyTorch's own message is a stack error).
    """
    sizes = {tuple(s["image"].shape[-2:]) for s in samples}
    if len(sizes) > 1:
        by_size = {tuple(s["image"].shape[-2:]): s["name"] for s in samples}
        seen = ", ".join(f"{name} is {w}x{h} px" for (h, w), name in sorted(by_size.items()))
        raise InputDataError(f"patches of different sizes in one batch ({seen}); {fix}")
    batch: dict[str, Any] = torch.utils.data.default_collate(list(samples))
    return batch


def _check_bands(band_indexes: Sequence[int], description: ModelDescription) -> tuple[int, ...]:
    bands = tuple(int(b) for b in band_indexes)
    if len(bands) != description.in_channels:
        raise ConfigError(
            f"band_indexes {list(bands)} selects {len(bands)} band(s) but the model takes "
            f"{description.in_channels} {list(description.bands)}; give one 1-based raster band per model band"
        )
    if any(b < 1 for b in bands):
        raise ConfigError(f"band_indexes {list(bands)} must be 1-based raster band numbers (>= 1)")
    return bands


class FlairDataModule(lightning.LightningDataModule):
    """Train/val/test loaders over FLAIR patch lists.

    The train loader shuffles and augments (D4, optional radiometric jitter) and drops a last incomplete
    batch (a batch of one breaks BatchNorm); val/test loaders are neither shuffled nor augmented.
    ``persistent_workers`` is on when *num_workers* > 0, ``pin_memory`` only when CUDA is available.

    Args:
        train_csv: Training patch list, or None when only evaluating.
        val_csv: Validation patch list, or None.
        test_csv: Test patch list, or None.
        description: Model description (bands, class table, metadata spec).
        band_indexes: 1-based raster bands in the model's band order.
        batch_size: Patches per batch.
        num_workers: DataLoader worker processes (0 reads in the main process).
        ignore_index: Logit index for mask codes outside the class table (None: such codes are an error).
        augment: Augment the training set.
        radiometric_jitter: Jitter strength for training (0 disables it).
        aerial_json: FLAIR aerial metadata JSON; required when the description has a metadata input.

    Raises:
        ConfigError: If the description needs metadata and no *aerial_json* is given, or the metadata
            encoding does not match.
    """

    def __init__(
        self,
        *,
        train_csv: Path | None,
        val_csv: Path | None,
        test_csv: Path | None = None,
        description: ModelDescription,
        band_indexes: Sequence[int],
        batch_size: int = 8,
        num_workers: int = 0,
        ignore_index: int | None = None,
        augment: bool = True,
        radiometric_jitter: float = 0.0,
        aerial_json: Path | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ConfigError(f"num_workers must be >= 0, got {num_workers}")
        meta = description.metadata
        if meta is not None and aerial_json is None:
            raise ConfigError(
                f"the model takes a {meta.dim}-value metadata input ({meta.encoding}) but no aerial "
                "metadata JSON was given; set aerial_json (FLAIR's flair-1_metadata_aerial.json)"
            )
        if meta is not None and meta.dim != AERIAL_DIM:
            raise ConfigError(
                f"the model's metadata input has {meta.dim} values ({meta.encoding}) but aerial "
                f"metadata encodes to {AERIAL_DIM} (flair-aerial-v1); use flair_deploy.aerial.aerial_spec()"
            )
        self.csvs = {"train": train_csv, "val": val_csv, "test": test_csv}
        self.description = description
        self.band_indexes = _check_bands(band_indexes, description)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.ignore_index = ignore_index
        self.augment = augment
        self.radiometric_jitter = radiometric_jitter
        # Aerial records are only attached when the model uses them (an image-only model ignores the file).
        self.aerial_json = aerial_json if meta is not None else None
        self._datasets: dict[str, FlairPatchDataset] = {}

    def dataset(self, split: str) -> FlairPatchDataset:
        """Return (building it on first use) the dataset of *split* (``train``, ``val`` or ``test``).

        Raises:
            ConfigError: If no CSV was given for *split*.
        """
        if split in self._datasets:
            return self._datasets[split]
        csv_path = self.csvs.get(split)
        if csv_path is None:
            raise ConfigError(f"no {split} patch list was given; set {split}_csv")
        aerial = load_aerial_json(self.aerial_json) if self.aerial_json is not None else None
        train = split == "train"
        ds = FlairPatchDataset(
            read_patch_csv(csv_path),
            description=self.description,
            band_indexes=self.band_indexes,
            ignore_index=self.ignore_index,
            augment=self.augment and train,
            radiometric_jitter=self.radiometric_jitter if train else 0.0,
            aerial=aerial,
        )
        self._datasets[split] = ds
        return ds

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets a Lightning stage needs (``fit``, ``validate``, ``test``); reads the CSVs."""
        splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(stage or "", ())
        for split in splits:
            if self.csvs.get(split) is not None:
                self.dataset(split)

    def _loader(self, split: str) -> DataLoader[Sample]:
        ds = self.dataset(split)
        train = split == "train"
        sampler = None
        if not train and torch.distributed.is_available() and torch.distributed.is_initialized():
            # Lightning's own DistributedSampler pads uneven shards with repeated patches, which the
            # summed confusion matrix would count twice; this one gives every patch to one rank.
            from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

            sampler = UnrepeatedDistributedSampler(ds, shuffle=False)
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            shuffle=train,
            sampler=sampler,
            drop_last=train and len(ds) > self.batch_size,
            num_workers=self.num_workers,
            # Training workers start afresh each epoch, seeded from the main process's random state: a
            # run resumed from a checkpoint (which stores that state) then augments as the
            # uninterrupted run did. Persistent workers would carry their own state across epochs.
            persistent_workers=self.num_workers > 0 and not train,
            collate_fn=collate_patches,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader[Sample]:
        """Shuffled, augmented training batches."""
        return self._loader("train")

    def val_dataloader(self) -> DataLoader[Sample]:
        """Validation batches in file order, not augmented."""
        return self._loader("val")

    def test_dataloader(self) -> DataLoader[Sample]:
        """Test batches in file order, not augmented."""
        return self._loader("test")


def loader_throughput(
    csv_path: Path,
    *,
    description: ModelDescription,
    band_indexes: Sequence[int],
    batch_size: int = 16,
    num_workers: int = 0,
    augment: bool = True,
    epochs: int = 2,
) -> float:
    """Measure how many patches per second the training loader delivers (no model involved).

    The first batch is excluded from the timing (worker start-up and first file opens).

    Args:
        csv_path: Patch list to read.
        description: Model description for the dataset.
        band_indexes: 1-based raster bands in the model's band order.
        batch_size: Patches per batch.
        num_workers: DataLoader workers.
        augment: Include D4 augmentation, as in training.
        epochs: Passes over the list.

    Returns:
        Patches per second.
    """
    ds = FlairPatchDataset(
        read_patch_csv(csv_path), description=description, band_indexes=band_indexes, augment=augment
    )
    loader = DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=True,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )
    count = 0
    start: float | None = None
    for _ in range(max(1, epochs)):
        for batch in loader:
            if start is None:
                start = time.perf_counter()
                continue
            count += int(batch["image"].shape[0])
    elapsed = time.perf_counter() - start if start is not None else 0.0
    return count / elapsed if elapsed > 0 else float("nan")
