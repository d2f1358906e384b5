"""Shared fixtures: tiny descriptions and models, synthetic GeoTIFFs. Everything offline and CPU-only."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from flair_deploy.description import ArchitectureSpec, ModelDescription, class_preset


def pytest_collection_modifyitems(config, items):
    has_cuda = torch.cuda.is_available()
    try:
        import tensorrt  # noqa: F401

        has_trt = has_cuda
    except ImportError:
        has_trt = False
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (none on this machine)")
    skip_trt = pytest.mark.skip(reason="needs the tensorrt package and a CUDA GPU (not installed here)")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)
        if "tensorrt" in item.keywords and not has_trt:
            item.add_marker(skip_trt)


@pytest.fixture(autouse=True)
def _seed_and_offline(tmp_path_factory, monkeypatch):
    torch.manual_seed(0)
    np.random.seed(0)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.hub.set_dir(str(tmp_path_factory.mktemp("hub")))


@pytest.fixture
def tiny_description() -> ModelDescription:
    """A small 5-band, 19-logit (15 active) U-Net/ResNet-18 description with 64-px tiles."""
    return ModelDescription(
        name="tiny",
        tile_size=64,
        overlap=16,
        architecture=ArchitectureSpec(arch="unet", encoder="resnet18", encoder_depth=5),
        classes=class_preset("flair15"),
    )


@pytest.fixture
def write_geotiff(tmp_path: Path) -> Callable[..., Path]:
    """Factory writing a GeoTIFF with a real CRS and transform (as rasterio's own test fixtures)."""
    import rasterio
    from rasterio.transform import from_origin

    def _write(
        data: np.ndarray,
        name: str = "ortho.tif",
        *,
        crs: str | None = "EPSG:2154",
        res: float = 0.2,
        origin: tuple[float, float] = (650000.0, 6860000.0),
        nodata: float | None = None,
        **profile: object,
    ) -> Path:
        if data.ndim == 2:
            data = data[None]
        path = tmp_path / name
        prof = {
            "driver": "GTiff",
            "width": data.shape[2],
            "height": data.shape[1],
            "count": data.shape[0],
            "dtype": data.dtype.name,
            "crs": crs,
            "transform": from_origin(origin[0], origin[1], res, res),
            "nodata": nodata,
        }
        prof.update(profile)
        with rasterio.open(path, "w", **prof) as dst:
            dst.write(data)
        return path

    return _write
