"""detect on the real sample orthophotos in ../shared/data/orthos (see its README for provenance).

They exercise what synthetic rasters do not: three projected CRSs, 0.1-0.25 m pixels, a nodata value
(255) that collides with real white pixels, JPEG-in-TIFF tiling, and a NIR-first band order with a
mislabelled colour interpretation. The network is untrained (what it predicts is not the point); the
test checks what a GIS user relies on: georeferencing, nodata, band mapping and clear refusals.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from flair_deploy.artifacts import save_checkpoint
from flair_deploy.cli import main
from flair_deploy.description import ArchitectureSpec, ModelDescription, Normalization, class_preset
from flair_deploy.models import build_model

ORTHOS = Path(__file__).resolve().parents[3] / "shared" / "data" / "orthos"
pytestmark = pytest.mark.skipif(not ORTHOS.is_dir(), reason=f"sample orthophotos not found at {ORTHOS}")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A self-describing checkpoint of a tiny untrained RGB model (what `train` writes, minus training)."""
    desc = ModelDescription(
        name="rgb-tiny",
        bands=("R", "G", "B"),
        normalization=Normalization(mean=(105.08, 110.87, 101.82), std=(52.17, 45.38, 44.0)),
        classes=class_preset("flair12"),
        tile_size=128,
        overlap=32,
        architecture=ArchitectureSpec(encoder="resnet18", encoder_depth=3),
    )
    torch.manual_seed(0)
    model = build_model(desc)
    path = tmp_path_factory.mktemp("model") / "rgb-tiny.ckpt"
    return save_checkpoint(path, model, desc)


def _detect(argv: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main(["detect", *argv, "--quiet"])
    return int(exc.value.code or 0), capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "bands"),
    [
        ("OSBS_029.tif", "1,2,3"),  # EPSG:32617, 0.1 m, nodata 255 on white pixels
        # EPSG:28992, 0.25 m, JPEG-compressed 256-px tiles; 1000 x 1000 px, the slowest case (slow run).
        pytest.param("test_tiled.tif", "1,2,3", marks=pytest.mark.slow),
        ("Betula_spec._1_15679_WEFL_NLF.tif", "4,2,3"),  # EPSG:25832, 0.2 m, bands NIR,G,B,R
    ],
)
def test_maps_keep_the_input_grid_and_nodata(name, bands, checkpoint, tmp_path, capsys):
    src_path = ORTHOS / name
    out = tmp_path / "map.tif"
    code, err = _detect(
        [str(src_path), "-m", str(checkpoint), "-o", str(out), "--bands", bands, "--allow-gsd-mismatch"],
        capsys,
    )
    assert code == 0, err
    with rasterio.open(src_path) as src, rasterio.open(out) as dst:
        assert (dst.width, dst.height) == (src.width, src.height)
        assert dst.crs == src.crs
        assert dst.transform == src.transform
        assert dst.dtypes[0] == "uint8" and dst.nodata == 255
        assert dst.colormap(1)[1][:3] == (0xDB, 0x0E, 0x9A)  # FLAIR "building" colour
        classes = dst.read(1)
        # GDAL's dataset mask is the validity the user declared: nodata pixels map to 255, others to a
        # trained class code (flair12: codes 1-12).
        valid = src.dataset_mask() > 0
        assert np.all(classes[~valid] == 255)
        assert np.isin(classes[valid], np.arange(1, 13)).all()
        if src.nodata is not None:
            assert (~valid).any()  # OSBS: saturated white pixels are declared nodata


def test_gsd_mismatch_is_refused_without_the_option(checkpoint, tmp_path, capsys):
    out = tmp_path / "map.tif"
    code, err = _detect([str(ORTHOS / "test_tiled.tif"), "-m", str(checkpoint), "-o", str(out)], capsys)
    assert code == 1
    assert len(err.strip().splitlines()) == 1 and "0.25" in err and "--allow-gsd-mismatch" in err
    assert not out.exists() and not list(tmp_path.glob("*map*"))


def test_band_count_mismatch_is_refused_before_any_output(checkpoint, tmp_path, capsys):
    out = tmp_path / "map.tif"
    code, err = _detect(
        [str(ORTHOS / "OSBS_029.tif"), "-m", str(checkpoint), "-o", str(out), "--bands", "1,2,3,4"], capsys
    )
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.glob("*map*"))
