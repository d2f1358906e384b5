"""Fixtures for export tests: a tiny *trained* model and a FLAIR-like GeoTIFF dataset.

Random-weight networks give near-tied logits everywhere, so INT8/FP16 agreement on them says nothing;
a few dozen optimisation steps on class-coloured synthetic tiles give decisive logits in seconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from flair_deploy.artifacts import save_checkpoint
from flair_deploy.description import ArchitectureSpec, ModelDescription, class_preset
from flair_deploy.models import build_model

TILE = 64
# Logit indices used by the synthetic scenes (all active in flair15) and their band values.
SCENE_CLASSES = (0, 2, 4, 5, 9, 10)


def _description() -> ModelDescription:
    return ModelDescription(
        name="tiny",
        tile_size=TILE,
        overlap=16,
        # Depth 3 (output stride 8): a tenth of the depth-5 weights, so export, INT8 calibration and
        # parity run in seconds; the graph still has every op kind the real encoder has.
        architecture=ArchitectureSpec(arch="unet", encoder="resnet18", encoder_depth=3),
        classes=class_preset("flair15"),
    )


def make_scenes(n: int, seed: int, size: int = TILE) -> tuple[np.ndarray, np.ndarray]:
    """Return raw uint8-range images (n, 5, size, size) and logit-index labels (n, size, size)."""
    rng = np.random.default_rng(seed)
    palette = rng.uniform(20, 235, size=(len(SCENE_CLASSES), 5)).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size]
    images = np.empty((n, 5, size, size), np.float32)
    labels = np.empty((n, size, size), np.int64)
    for i in range(n):
        centres = rng.uniform(0, size, size=(6, 2))
        region = (
            (yy[None] - centres[:, 0, None, None]) ** 2 + (xx[None] - centres[:, 1, None, None]) ** 2
        ).argmin(0)
        cls = rng.integers(0, len(SCENE_CLASSES), size=6)[region]
        images[i] = (palette[cls] + rng.normal(0, 6, size=(size, size, 5))).transpose(2, 0, 1)
        labels[i] = np.asarray(SCENE_CLASSES)[cls]
    return np.clip(images, 0, 255), labels


@pytest.fixture(scope="session")
def export_data(tmp_path_factory) -> dict[str, Path]:
    """A trained tiny checkpoint plus a FLAIR-like CSV of 128-px GeoTIFF patches with masks."""
    import rasterio
    from rasterio.transform import from_origin

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("export-data")
    desc = _description()
    model = build_model(desc)
    # 32-px scenes keep training to seconds; the network is fully convolutional and colour-driven,
    # so it stays decisive on the 64-px export tiles.
    images, labels = make_scenes(64, seed=1, size=32)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x_all, y_all = torch.from_numpy(images), torch.from_numpy(labels)
    model.train()
    for _ in range(30):
        idx = torch.randint(0, len(x_all), (8,))
        loss = torch.nn.functional.cross_entropy(model(x_all[idx]), y_all[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    ckpt = save_checkpoint(root / "tiny.ckpt", model, desc)
    big_images, big_labels = make_scenes(6, seed=2, size=2 * TILE)
    codes = np.asarray([c.code for c in desc.classes], dtype=np.uint8)
    rows = []
    for i in range(len(big_images)):
        for kind, arr in (("IMG", big_images[i].astype(np.uint8)), ("MSK", codes[big_labels[i]][None])):
            with rasterio.open(
                root / f"{kind}_{i}.tif",
                "w",
                driver="GTiff",
                width=2 * TILE,
                height=2 * TILE,
                count=arr.shape[0],
                dtype="uint8",
                crs="EPSG:2154",
                transform=from_origin(650000 + i * 100, 6860000, 0.2, 0.2),
            ) as dst:
                dst.write(arr)
        rows.append(f"IMG_{i}.tif,MSK_{i}.tif")
    csv = root / "val.csv"
    csv.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return {"checkpoint": ckpt, "csv": csv, "root": root, "loss": float(loss.detach())}


@pytest.fixture(scope="session")
def exported(export_data, tmp_path_factory):
    """One full export (FP32 + FP16 + INT8, all heads) shared by the read-only tests."""
    from flair_deploy.exports import ExportConfig, Head, export_model

    out = tmp_path_factory.mktemp("exported")
    cfg = ExportConfig(
        checkpoint=export_data["checkpoint"],
        out_dir=out,
        fp16=True,
        int8=True,
        calibration=(export_data["csv"],),
        calibration_tiles=24,
        validation=export_data["csv"],
        parity_tiles=6,
        heads=(Head.LOGITS, Head.PROBABILITIES, Head.CLASSES),
    )
    return export_model(cfg, progress=False)
