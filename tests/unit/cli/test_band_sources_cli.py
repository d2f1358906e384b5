"""``detect --rvb --irc --elevation`` / ``--band``: BD ORTHO products assembled on the fly (docs/bd-ortho.md)."""

import functools
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.drivers import raster_driver_extensions
from rasterio.enums import Resampling
from rasterio.transform import from_origin
from rasterio.warp import reproject

from flair_deploy.cli import main
from flair_deploy.inference import backends
from tests.fakes import EchoBackend
from tests.gis_helpers import write_raster

# 112 x 96 px at 0.2 m: 2 x 2 overlapping 64-px tiles of the tiny model (stitching is exercised, cheaply).
X0, Y0, RES, W, H = 650000.0, 6865000.0, 0.2, 112, 96
_JP2 = raster_driver_extensions().get("jp2") == "JP2OpenJPEG"
needs_jp2 = pytest.mark.skipif(
    not _JP2,
    reason="this GDAL has no JP2OpenJPEG driver to write and read BD ORTHO .jp2 tiles",
)


_write = functools.partial(write_raster, origin=(X0, Y0), res=RES)


def _jp2(path: Path, data: np.ndarray, **kw) -> Path:
    # Reversible wavelet at quality 100: lossless JPEG 2000, so maps can be compared exactly.
    return _write(path.with_suffix(".jp2"), data, driver="JP2OpenJPEG", REVERSIBLE="YES", QUALITY=100, **kw)


def _tile(folder: Path, x_km: int = 650, y_km: int = 6865, *, seed: int = 0, jp2: bool = True):
    """RVB and IRC of one tile (JPEG 2000 or GeoTIFF) and its 1 m float32 height model in metres."""
    rng = np.random.default_rng(seed)
    rvb = rng.integers(0, 256, (3, H, W), dtype=np.uint8)
    irc = rng.integers(0, 256, (3, H, W), dtype=np.uint8)
    # 1 m pixels, 3 m beyond the tile on every side; 0..45 m so E spans most of 0..255.
    height = rng.uniform(0.0, 45.0, (H // 5 + 6, W // 5 + 6)).astype(np.float32)
    origin = (x_km * 1000.0, y_km * 1000.0)
    write = _jp2 if jp2 else _write
    suffix = ".jp2" if jp2 else ".tif"
    rvb_name = f"D075-2021-{x_km:04d}-{y_km:04d}-LA93-0M20-RVB-E080{suffix}"
    irc_name = f"D075-2021-{x_km:04d}-{y_km:04d}-LA93-0M20-IRC-E080{suffix}"
    return {
        "rvb": write(folder / "rvb" / rvb_name, rvb, origin=origin),
        "irc": write(folder / "irc" / irc_name, irc, origin=origin),
        "dem": _write(
            folder / "dem" / f"MNH_{x_km:04d}_{y_km:04d}_1M.tif",
            height,
            origin=(origin[0] - 3, origin[1] + 3),
            res=1.0,
        ),
        "arrays": (rvb, irc),
        "origin": origin,
    }


def _prestacked(tile, path: Path, scale: float = 5.0) -> Path:
    """The same bands stacked into one 5-band GeoTIFF, E by an independent path (rasterio.warp.reproject)."""
    rvb, irc = tile["arrays"]
    warped = np.zeros((H, W), np.float32)
    with rasterio.open(tile["dem"]) as src:
        reproject(
            rasterio.band(src, 1),
            warped,
            dst_transform=from_origin(*tile["origin"], RES, RES),
            dst_crs="EPSG:2154",
            resampling=Resampling.bilinear,
        )
    # GDAL scales a float32 source in float32 (its working type): so does a careful pre-stacking script.
    e = np.clip(np.floor(warped * np.float32(scale) + np.float32(0.5)), 0, 255).astype(np.uint8)
    return _write(path, np.concatenate([rvb, irc[:1], e[None]]), origin=tile["origin"])


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    """A random-weight tiny U-Net checkpoint (the shared tiny description), mapped by the torch backend."""
    import torch

    from flair_deploy.artifacts import save_checkpoint
    from flair_deploy.description import ArchitectureSpec, ModelDescription, class_preset
    from flair_deploy.models import build_model

    desc = ModelDescription(
        name="tiny",
        tile_size=64,
        overlap=16,
        architecture=ArchitectureSpec(arch="unet", encoder="resnet18", encoder_depth=5),
        classes=class_preset("flair15"),
    )
    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.ckpt", build_model(desc).eval(), desc)


def _ok(argv, capsys):
    try:
        main(argv)
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise AssertionError(capsys.readouterr().err) from exc
    return capsys.readouterr()


def _fails(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    return lines[0]


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*")) if folder.exists() else []


@needs_jp2
def test_three_sources_map_equals_the_prestacked_five_band_map(tmp_path, tiny_ckpt, capsys):
    # The must-show: RVB JP2 + IRC JP2 + 1 m elevation GeoTIFF == the same bands stacked in one GeoTIFF.
    tile = _tile(tmp_path / "in")
    stacked = _prestacked(tile, tmp_path / "stacked.tif")
    common = ["-m", str(tiny_ckpt), "--quiet", "--no-overviews", "--probabilities"]
    _ok(["detect", str(stacked), "-o", str(tmp_path / "ref" / "map.tif"), *common], capsys)
    out = tmp_path / "bd" / "map.tif"
    argv = ["detect", "--rvb", str(tile["rvb"]), "--irc", str(tile["irc"]), "--elevation", str(tile["dem"])]
    cap = _ok([*argv, "-o", str(out), *common], capsys)
    assert f"wrote {out}" in cap.out
    ref_classes, got_classes = _read(tmp_path / "ref" / "map.tif"), _read(out)
    assert len(np.unique(ref_classes)) > 3  # a map worth comparing, not one class everywhere
    np.testing.assert_array_equal(got_classes, ref_classes)
    with (
        rasterio.open(tmp_path / "ref" / "map_proba.tif") as a,
        rasterio.open(out.with_name("map_proba.tif")) as b,
    ):
        np.testing.assert_array_equal(b.read(), a.read())
        assert (b.crs, b.transform) == (a.crs, a.transform)
    assert _hidden(tmp_path / "bd") == []  # the VRT and its warp file are gone


def test_folders_of_tiles_give_one_map_per_tile_named_after_the_rvb_tile(
    tmp_path, fake_backend, model_file, capsys
):
    t1 = _tile(tmp_path / "in", 650, 6865, seed=1, jp2=False)
    t2 = _tile(tmp_path / "in", 655, 6865, seed=2, jp2=False)
    out = tmp_path / "maps"
    _ok(
        [
            "detect",
            "--rvb",
            str(tmp_path / "in" / "rvb"),
            "--irc",
            str(tmp_path / "in" / "irc"),
            "--elevation",
            str(tmp_path / "in" / "dem"),
            "-m",
            str(model_file),
            "-o",
            str(out),
            "-q",
            "--no-overviews",
        ],
        capsys,
    )
    names = sorted(p.name for p in out.glob("*.tif"))
    assert _hidden(out) == []
    assert names == [f"{t['rvb'].stem}_classes.tif" for t in (t1, t2)]
    for t in (t1, t2):
        with rasterio.open(out / f"{t['rvb'].stem}_classes.tif") as ds:
            assert ds.transform == from_origin(*t["origin"], RES, RES)
    # Each tile's map comes from its own products: the fake model echoes band 0 (R of that tile's RVB).
    assert not np.array_equal(
        _read(out / f"{t1['rvb'].stem}_classes.tif"), _read(out / f"{t2['rvb'].stem}_classes.tif")
    )


def test_band_option_maps_like_the_products(tmp_path, fake_backend, model_file, capsys):
    tile = _tile(tmp_path / "in", jp2=False)
    common = ["-m", str(model_file), "-q", "--no-overviews"]
    _ok(
        [
            "detect",
            "--rvb",
            str(tile["rvb"]),
            "--irc",
            str(tile["irc"]),
            "--elevation",
            str(tile["dem"]),
            "-o",
            str(tmp_path / "a.tif"),
            *common,
        ],
        capsys,
    )
    bands = [f"{tile['rvb']}:{b}" for b in (1, 2, 3)] + [f"{tile['irc']}:1", f"{tile['dem']}*5"]
    _ok(
        ["detect", *(x for b in bands for x in ("--band", b)), "-o", str(tmp_path / "b.tif"), *common], capsys
    )
    np.testing.assert_array_equal(_read(tmp_path / "b.tif"), _read(tmp_path / "a.tif"))


@pytest.fixture
def fake_backend(monkeypatch, tiny_description):
    """Model loading replaced by an EchoBackend; records whether it was reached."""
    asked: dict = {}

    def create(name, artifact, *, device="cpu", precision=None, options=None, preset=None):
        asked["loaded"] = True
        return EchoBackend(tiny_description)

    monkeypatch.setattr(backends, "create_backend", create)
    return asked


@pytest.fixture
def model_file(tmp_path):
    p = tmp_path / "model.onnx"
    p.write_bytes(b"fake model")
    return p


def _error_cases(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    tile = _tile(tmp_path / "in", jp2=False)
    rvb, irc, dem = str(tile["rvb"]), str(tile["irc"]), str(tile["dem"])
    rng = np.random.default_rng(5)
    short = _write(tmp_path / "short.tif", rng.uniform(0, 9, (10, 10)).astype(np.float32), res=1.0)
    wgs84 = _write(
        tmp_path / "wgs84.tif",
        rng.uniform(0, 9, (50, 50)).astype(np.float32),
        origin=(2.34, 48.86),
        res=0.0001,
        crs="EPSG:4326",
    )
    _tile(tmp_path / "in", 655, 6865, seed=3, jp2=False)
    (tmp_path / "in" / "irc" / "D075-2021-0655-6865-LA93-0M20-IRC-E080.tif").unlink()
    folders = [str(tmp_path / "in" / "rvb"), "--irc", str(tmp_path / "in" / "irc")]
    return {
        "uncovered": (["--rvb", rvb, "--irc", irc, "--elevation", str(short)], "does not cover"),
        "other crs": (["--rvb", rvb, "--irc", irc, "--elevation", str(wgs84)], "EPSG:4326"),
        "missing band": (
            [*(x for b in (rvb + ":1", rvb + ":2", rvb + ":4", irc, dem) for x in ("--band", b))],
            "band 4",
        ),
        "unmatched tiles": (["--rvb", *folders], "IRC lacks 1 (0655-6865)"),
        "rvb alone": (["--rvb", rvb], "--irc"),
        "raster and rvb": ([rvb, "--rvb", rvb, "--irc", irc], "give one of them"),
        "workers": (["--rvb", rvb, "--irc", irc, "--workers", "1"], "--workers"),
        "file and folder": (["--rvb", rvb, "--irc", str(tmp_path / "in" / "irc")], "both folders"),
        "bad resampling": (["--rvb", rvb, "--irc", irc, "--resampling", "fancy"], "resampling"),
        "missing product": (["--rvb", rvb, "--irc", str(tmp_path / "nope.jp2")], "does not exist"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "uncovered",
        "other crs",
        "missing band",
        "unmatched tiles",
        "rvb alone",
        "raster and rvb",
        "workers",
        "file and folder",
        "bad resampling",
        "missing product",
    ],
)
def test_bad_band_sources_are_one_line_before_the_model_loads_and_leave_nothing(
    case, tmp_path, fake_backend, model_file, capsys
):
    args, match = _error_cases(tmp_path)[case]
    out = tmp_path / "out" / "maps"
    line = _fails(["detect", *args, "-m", str(model_file), "-o", str(out), "-q"], capsys)
    assert match in line, line
    print(line)
    assert "loaded" not in fake_backend
    assert not (tmp_path / "out").exists()


def test_another_crs_is_warped_with_reproject(tmp_path, fake_backend, model_file, capsys):
    tile = _tile(tmp_path / "in", jp2=False)
    from rasterio.warp import transform_bounds

    # The height model in WGS 84, covering the tile with a margin.
    left, bottom, right, top = transform_bounds(
        "EPSG:2154",
        "EPSG:4326",
        tile["origin"][0] - 10,
        tile["origin"][1] - H * RES - 10,
        tile["origin"][0] + W * RES + 10,
        tile["origin"][1] + 10,
    )
    res = 0.00002
    n_x, n_y = int((right - left) / res) + 1, int((top - bottom) / res) + 1
    dem = _write(
        tmp_path / "wgs.tif",
        np.full((n_y, n_x), 10.0, np.float32),
        origin=(left, top),
        res=res,
        crs="EPSG:4326",
    )
    out = tmp_path / "m.tif"
    _ok(
        [
            "detect",
            "--rvb",
            str(tile["rvb"]),
            "--irc",
            str(tile["irc"]),
            "--elevation",
            str(dem),
            "--reproject",
            "-m",
            str(model_file),
            "-o",
            str(out),
            "-q",
            "--no-overviews",
        ],
        capsys,
    )
    with rasterio.open(out) as ds:
        assert (ds.width, ds.height, ds.crs.to_epsg()) == (W, H, 2154)


def _patch_list(folder: Path, rows: list[tuple[Path, Path]]) -> Path:
    csv = folder / "patches.csv"
    csv.write_text("".join(f"{image},{mask}\n" for image, mask in rows))
    return csv


def test_evaluate_on_rvb_patches_with_irc_and_elevation_equals_prestacked(tmp_path, tiny_ckpt, capsys):
    # Two 5 km "tiles" cut to patches: RVB JP2 in the CSV, IRC JP2 matched by corner, one height mosaic.
    rows_bd, rows_stacked = [], []
    for n, x_km in enumerate((650, 655)):
        tile = _tile(tmp_path / "in", x_km, 6865, seed=10 + n, jp2=_JP2)
        mask = _write(
            tmp_path / "in" / f"MSK_{n}.tif",
            np.random.default_rng(n).integers(1, 16, (H, W), dtype=np.uint8),
            origin=tile["origin"],
        )
        rows_bd.append((tile["rvb"], mask))
        rows_stacked.append((_prestacked(tile, tmp_path / "stacked" / f"IMG_{n}.tif"), mask))
    common = ["--out", "OUT", "--device", "cpu", "--batch-size", "2"]

    def run(csv, out, *extra):
        _ok(
            [
                "evaluate",
                str(tiny_ckpt),
                "--csv",
                str(csv),
                *extra,
                *(str(out) if c == "OUT" else c for c in common),
            ],
            capsys,
        )
        return (out / "confusion_matrix.csv").read_text()

    ref = run(_patch_list(tmp_path / "stacked", rows_stacked), tmp_path / "ref")
    # Each tile's own height model as a folder matched by corner.
    got = run(
        _patch_list(tmp_path / "in", rows_bd),
        tmp_path / "bd",
        "--irc",
        str(tmp_path / "in" / "irc"),
        "--elevation",
        str(tmp_path / "in" / "dem"),
    )
    assert got == ref
    assert _hidden(tmp_path / "bd") == []


def test_evaluate_refuses_a_patch_without_its_irc_in_one_line(tmp_path, capsys):
    tile = _tile(tmp_path / "in", jp2=False)
    mask = _write(tmp_path / "in" / "MSK.tif", np.ones((H, W), np.uint8))
    (tmp_path / "empty").mkdir()
    ckpt = tmp_path / "never_loaded.ckpt"
    ckpt.write_bytes(b"not read: the IRC is missing first")
    line = _fails(
        [
            "evaluate",
            str(ckpt),
            "--csv",
            str(_patch_list(tmp_path / "in", [(tile["rvb"], mask)])),
            "--out",
            str(tmp_path / "out"),
            "--irc",
            str(tmp_path / "empty"),
        ],
        capsys,
    )
    assert "has no tile at 0650-6865" in line, line
    assert _hidden(tmp_path / "out") == []


def test_a_failure_after_assembly_leaves_nothing(tmp_path, fake_backend, model_file, capsys):
    # Four bands (no --elevation) for a 5-band model: refused once the model is known, VRTs removed.
    tile = _tile(tmp_path / "in", jp2=False)
    out = tmp_path / "out" / "maps"
    line = _fails(
        [
            "detect",
            "--rvb",
            str(tile["rvb"]),
            "--irc",
            str(tile["irc"]),
            "-m",
            str(model_file),
            "-o",
            str(out),
            "-q",
        ],
        capsys,
    )
    assert "has 4 band(s) but model 'tiny' needs 5" in line, line
    assert fake_backend.get("loaded") and not (tmp_path / "out").exists()


def test_resume_skips_tiles_mapped_from_the_same_sources(tmp_path, fake_backend, model_file, capsys):
    _tile(tmp_path / "in", 650, 6865, seed=1, jp2=False)
    _tile(tmp_path / "in", 655, 6865, seed=2, jp2=False)
    argv = [
        "detect",
        "--rvb",
        str(tmp_path / "in" / "rvb"),
        "--irc",
        str(tmp_path / "in" / "irc"),
        "-m",
        str(model_file),
        "-o",
        str(tmp_path / "maps"),
        "-q",
        "--no-overviews",
        "--bands",
        "1,2,3,4,4",  # the tiny model takes five bands: NIR twice stands in for E
    ]
    _ok(argv, capsys)
    cap = _ok([*argv, "--resume"], capsys)
    assert "resumed: 2 raster(s) already finished" in cap.out
