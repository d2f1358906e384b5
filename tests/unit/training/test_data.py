"""Patch lists, the patch dataset, its augmentations and the data module."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from flair_deploy.aerial import AERIAL_DIM, AerialRecord, aerial_spec
from flair_deploy.description import ClassInfo
from flair_deploy.errors import ConfigError, InputDataError
from flair_deploy.training.data import FlairDataModule, FlairPatchDataset, PatchPair, read_patch_csv
from flair_deploy.training.transforms import d4, radiometric_jitter, random_d4

BANDS = (1, 2, 3, 4, 5)
AERIAL = {
    "patch_centroid_x": 650000.0,
    "patch_centroid_y": 6860000.0,
    "patch_centroid_z": 80.0,
    "camera": "UCE-M3-f120-s06",
    "date": "2020-07-01",
    "time": "11h00",
}


@pytest.fixture
def patch(write_geotiff):
    """Factory writing one 5-band image and its mask; returns the PatchPair."""

    def _make(name="000001", *, mask=None, bands=5, size=8, seed=0):
        rng = np.random.default_rng(seed)
        image = rng.integers(0, 256, (bands, size, size), dtype=np.uint8)
        if mask is None:
            mask = rng.integers(1, 15, (size, size), dtype=np.uint8)
        img = write_geotiff(image, f"IMG_{name}.tif")
        msk = write_geotiff(np.asarray(mask, dtype=np.uint8), f"MSK_{name}.tif")
        return PatchPair(img, msk)

    return _make


# ---------------------------------------------------------------------------------------------- CSV
def test_csv_relative_and_absolute_paths(tmp_path, patch):
    p = patch()
    sub = tmp_path / "lists"
    sub.mkdir()
    csv_path = sub / "train.csv"
    # Relative to the CSV's folder (not the working directory), absolute as given; blank line skipped.
    csv_path.write_text(f"../{p.image.name},../{p.mask.name}\n\n{p.image},{p.mask}\n")
    pairs = read_patch_csv(csv_path)
    assert [q.image.resolve() for q in pairs] == [p.image.resolve()] * 2
    assert [q.mask.resolve() for q in pairs] == [p.mask.resolve()] * 2


def test_csv_missing_file_names_csv_and_line(tmp_path, patch):
    p = patch()
    csv_path = tmp_path / "val.csv"
    csv_path.write_text(f"{p.image.name},{p.mask.name}\n{p.image.name},MSK_missing.tif\n")
    with pytest.raises(
        InputDataError, match=r"val\.csv, line 2: mask file .*MSK_missing\.tif does not exist"
    ):
        read_patch_csv(csv_path)


def test_csv_empty_and_unreadable(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("\n \n")
    with pytest.raises(InputDataError, match=r"empty\.csv is empty"):
        read_patch_csv(empty)
    with pytest.raises(InputDataError, match="cannot read patch list"):
        read_patch_csv(tmp_path / "nope.csv")


def test_csv_column_count(tmp_path, patch):
    p = patch()
    csv_path = tmp_path / "l.csv"
    csv_path.write_text(f"{p.image.name}\n")
    with pytest.raises(InputDataError, match=r"line 1: got 1 column"):
        read_patch_csv(csv_path)
    # Image-only lists are fine for prediction.
    assert read_patch_csv(csv_path, require_masks=False) == [PatchPair(tmp_path / p.image.name, None)]
    csv_path.write_text(f"{p.image.name},{p.mask.name},extra\n")
    with pytest.raises(InputDataError, match=r"line 1: got 3 column"):
        read_patch_csv(csv_path, require_masks=False)


# ---------------------------------------------------------------------------------------------- dataset
def test_item_is_raw_bands_and_mapped_mask(patch, tiny_description):
    mask = np.array([[1, 2], [19, 5]], dtype=np.uint8).repeat(4, 0).repeat(4, 1)
    p = patch(mask=mask)
    item = FlairPatchDataset([p], description=tiny_description, band_indexes=BANDS)[0]
    import rasterio

    with rasterio.open(p.image) as src:
        raw = src.read()
    assert item["image"].dtype == torch.float32 and item["image"].shape == (5, 8, 8)
    np.testing.assert_array_equal(item["image"].numpy(), raw.astype(np.float32))  # not normalised
    assert item["mask"].dtype == torch.int64
    np.testing.assert_array_equal(item["mask"].numpy(), mask.astype(np.int64) - 1)  # flair codes → logits
    assert item["name"] == "IMG_000001"
    assert "metadata" not in item


def test_band_selection_order(patch, tiny_description):
    p = patch()
    reordered = FlairPatchDataset([p], description=tiny_description, band_indexes=(3, 2, 1, 4, 5))[0]
    plain = FlairPatchDataset([p], description=tiny_description, band_indexes=BANDS)[0]
    torch.testing.assert_close(reordered["image"][0], plain["image"][2])


def test_mask_code_outside_table_is_an_error_or_ignored(patch, tiny_description):
    mask = np.full((8, 8), 3, dtype=np.uint8)
    mask[0, :2] = (0, 42)
    p = patch(mask=mask)
    ds = FlairPatchDataset([p], description=tiny_description, band_indexes=BANDS)
    with pytest.raises(InputDataError, match=r"MSK_000001\.tif contains code\(s\) \[0, 42\]"):
        ds[0]
    ds = FlairPatchDataset([p], description=tiny_description, band_indexes=BANDS, ignore_index=255)
    out = ds[0]["mask"]
    assert out[0, 0] == 255 and out[0, 1] == 255 and (out[1:] == 2).all()


def test_custom_class_table_keyed_by_code(patch, tiny_description):
    # Logit order differs from code order and one class folds another code in: codes are looked up.
    classes = (
        ClassInfo(code=5, name="water"),
        ClassInfo(code=1, name="building", aliases=(3,)),
        ClassInfo(code=10, name="grass"),
    )
    desc = tiny_description.model_copy(update={"classes": classes})
    mask = np.array([[5, 1, 3, 10]], dtype=np.uint8).repeat(8, 0).repeat(2, 1)
    item = FlairPatchDataset([patch(mask=mask)], description=desc, band_indexes=BANDS)[0]
    assert item["mask"][0].tolist() == [0, 0, 1, 1, 1, 1, 2, 2]


def test_too_few_bands(patch, tiny_description):
    p = patch(bands=4)
    ds = FlairPatchDataset([p], description=tiny_description, band_indexes=BANDS)
    with pytest.raises(InputDataError, match=r"has 4 band\(s\) but band_indexes .* needs 5"):
        ds[0]


def test_band_indexes_must_match_model(patch, tiny_description):
    with pytest.raises(ConfigError, match="selects 3 band"):
        FlairPatchDataset([patch()], description=tiny_description, band_indexes=(1, 2, 3))
    with pytest.raises(ConfigError, match="1-based"):
        FlairPatchDataset([patch()], description=tiny_description, band_indexes=(0, 1, 2, 3, 4))


def test_mask_image_size_mismatch(write_geotiff, tiny_description):
    img = write_geotiff(np.zeros((5, 8, 8), np.uint8), "IMG_1.tif")
    msk = write_geotiff(np.ones((8, 6), np.uint8), "MSK_1.tif")
    ds = FlairPatchDataset([PatchPair(img, msk)], description=tiny_description, band_indexes=BANDS)
    with pytest.raises(InputDataError, match="must match"):
        ds[0]


def test_prediction_items_without_mask(patch, tiny_description):
    p = patch()
    item = FlairPatchDataset([PatchPair(p.image, None)], description=tiny_description, band_indexes=BANDS)[0]
    assert set(item) == {"image", "name"}


def test_metadata_from_aerial_records(patch, tiny_description):
    p = patch()
    records = {"IMG_000001": AerialRecord.from_flair(AERIAL)}
    item = FlairPatchDataset([p], description=tiny_description, band_indexes=BANDS, aerial=records)[0]
    assert item["metadata"].dtype == torch.float32 and item["metadata"].shape == (AERIAL_DIM,)
    with pytest.raises(InputDataError, match=r"no record for 1 listed image.*IMG_000001"):
        FlairPatchDataset([p], description=tiny_description, band_indexes=BANDS, aerial={})


# ---------------------------------------------------------------------------------------------- transforms
def test_d4_keeps_image_and_mask_aligned():
    # The mask is a function of the image (band 0 == mask): any misalignment breaks the equality.
    mask = torch.arange(6 * 6).view(6, 6)
    image = torch.stack([mask.float(), -mask.float()])
    seen = set()
    for k in range(4):
        for flip in (False, True):
            img, msk = d4(image, mask, rotations=k, flip=flip)
            assert msk is not None
            assert torch.equal(img[0], msk.float()) and torch.equal(img[1], -msk.float())
            seen.add(tuple(msk.flatten().tolist()))
    assert len(seen) == 8  # the eight symmetries are distinct
    gen = torch.Generator().manual_seed(0)
    for _ in range(10):
        img, msk = random_d4(image, mask, generator=gen)
        assert msk is not None and torch.equal(img[0], msk.float())


def test_radiometric_jitter_per_band_and_clipped():
    image = torch.full((5, 4, 4), 100.0)
    out = radiometric_jitter(image, 0.2, generator=torch.Generator().manual_seed(1))
    per_band = out.flatten(1)
    assert (per_band == per_band[:, :1]).all()  # one gain/offset per band, not per pixel
    assert len(set(per_band[:, 0].tolist())) == 5  # bands differ
    assert ((out - 100.0).abs() <= 100.0 * 0.2 + 255.0 * 0.2 + 1e-4).all()
    assert radiometric_jitter(image, 0.0) is image
    bright = radiometric_jitter(torch.full((5, 2, 2), 250.0), 0.5, generator=torch.Generator().manual_seed(0))
    assert bright.max() <= 255.0 and bright.min() >= 0.0
    with pytest.raises(ValueError, match="strength"):
        radiometric_jitter(image, 1.5)


def test_augmented_dataset_keeps_alignment(write_geotiff, tiny_description):
    # Band 1 carries the mask code: after D4 (and no jitter) the two must still agree pixel for pixel.
    rng = np.random.default_rng(3)
    mask = rng.integers(1, 15, (8, 8), dtype=np.uint8)
    image = np.concatenate([mask[None], rng.integers(0, 256, (4, 8, 8), dtype=np.uint8)])
    pair = PatchPair(write_geotiff(image, "IMG_9.tif"), write_geotiff(mask, "MSK_9.tif"))
    ds = FlairPatchDataset([pair], description=tiny_description, band_indexes=BANDS, augment=True)
    for _ in range(8):
        item = ds[0]
        assert torch.equal(item["image"][0].long() - 1, item["mask"])


# ---------------------------------------------------------------------------------------------- datamodule
def _lists(tmp_path, patch, n=6):
    pairs = [patch(f"{i:06d}", seed=i) for i in range(n)]
    text = "".join(f"{p.image.name},{p.mask.name}\n" for p in pairs)
    for split in ("train", "val"):
        (tmp_path / f"{split}.csv").write_text(text)
    return tmp_path / "train.csv", tmp_path / "val.csv", pairs


def test_datamodule_loaders(tmp_path, patch, tiny_description):
    train, val, _ = _lists(tmp_path, patch)
    dm = FlairDataModule(
        train_csv=train, val_csv=val, description=tiny_description, band_indexes=BANDS, batch_size=4
    )
    dm.setup("fit")
    tl, vl = dm.train_dataloader(), dm.val_dataloader()
    assert tl.dataset.augment and not vl.dataset.augment
    assert tl.drop_last and not vl.drop_last
    assert len(list(tl)) == 1  # 6 patches, batch 4, the incomplete batch dropped for BatchNorm
    batches = list(vl)
    assert [b["image"].shape[0] for b in batches] == [4, 2]
    assert batches[0]["name"][0] == "IMG_000000"  # val keeps file order
    with pytest.raises(ConfigError, match="no test patch list"):
        dm.test_dataloader()


def test_datamodule_workers(tmp_path, patch, tiny_description):
    # Rasters are opened inside __getitem__, so worker processes read independently.
    train, val, _ = _lists(tmp_path, patch)
    dm = FlairDataModule(
        train_csv=train,
        val_csv=val,
        description=tiny_description,
        band_indexes=BANDS,
        batch_size=3,
        num_workers=2,
    )
    loader = dm.val_dataloader()
    assert loader.persistent_workers
    names = [n for b in loader for n in b["name"]]
    assert names == [f"IMG_{i:06d}" for i in range(6)]


def test_datamodule_metadata(tmp_path, patch, tiny_description):
    train, val, pairs = _lists(tmp_path, patch, n=2)
    meta_desc = tiny_description.model_copy(update={"metadata": aerial_spec()})
    with pytest.raises(ConfigError, match="no aerial metadata JSON"):
        FlairDataModule(train_csv=train, val_csv=val, description=meta_desc, band_indexes=BANDS)
    aerial = tmp_path / "aerial.json"
    aerial.write_text(json.dumps({p.image.stem: AERIAL for p in pairs}))
    dm = FlairDataModule(
        train_csv=train,
        val_csv=val,
        description=meta_desc,
        band_indexes=BANDS,
        batch_size=2,
        aerial_json=aerial,
    )
    batch = next(iter(dm.val_dataloader()))
    assert batch["metadata"].shape == (2, AERIAL_DIM)
    wrong = meta_desc.model_copy(update={"metadata": meta_desc.metadata.model_copy(update={"dim": 7})})
    with pytest.raises(ConfigError, match="has 7 values"):
        FlairDataModule(
            train_csv=train, val_csv=val, description=wrong, band_indexes=BANDS, aerial_json=aerial
        )
