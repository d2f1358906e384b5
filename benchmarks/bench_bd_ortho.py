"""BD ORTHO must-show: ``detect`` from three separate sources equals ``detect`` on the pre-stacked raster.

Builds a synthetic BD ORTHO tile from the sample world (:func:`flair_deploy.sample.make_sample_ortho`):

* RVB ortho (R, G, B) and IRC ortho (NIR, R, G) as lossless JPEG 2000 (``REVERSIBLE=YES``, ``QUALITY=100``),
  0.2 m, IGN file names;
* a height-above-ground model in metres at 1 m (the sample's E band / 5, averaged onto a 1 m grid that
  overhangs the tile by a few metres), float32 GeoTIFF.

Then maps it twice with the same random-weight U-Net (fixed seed, no download):

1. ``detect --rvb RVB.jp2 --irc IRC.jp2 --elevation height.tif`` (bands assembled on the fly, VRT + warp);
2. ``detect stacked.tif`` on the same bands pre-stacked into one 5-band GeoTIFF by an independent path
   (decoded JPEG 2000 + ``rasterio.warp.reproject`` bilinear of the height, x 5 in float32, rounded).

and reports the agreement of the class maps and probabilities and the wall times (pre-stacking included)::

    python benchmarks/bench_bd_ortho.py --size 2048 --tile 512 --json bd-ortho.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def build_inputs(folder: Path, size: int, seed: int) -> dict[str, Path]:
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.transform import from_origin
    from rasterio.warp import reproject

    from flair_deploy.sample import make_sample_ortho

    x0, y0 = 650_000.0, 6_865_000.0
    full = make_sample_ortho(folder / "sample.tif", width=size, height=size, seed=seed, origin=(x0, y0))
    with rasterio.open(full) as src:
        data, crs, transform = src.read(), src.crs, src.transform
    profile = {"driver": "JP2OpenJPEG", "width": size, "height": size, "dtype": "uint8", "crs": crs}
    lossless = {"REVERSIBLE": "YES", "QUALITY": 100}
    rvb = folder / "D075-2021-0650-6865-LA93-0M20-RVB-E080.jp2"
    irc = folder / "D075-2021-0650-6865-LA93-0M20-IRC-E080.jp2"
    with rasterio.open(rvb, "w", count=3, transform=transform, **profile, **lossless) as dst:
        dst.write(data[[0, 1, 2]])
    with rasterio.open(irc, "w", count=3, transform=transform, **profile, **lossless) as dst:
        dst.write(data[[3, 0, 1]])  # IRC: NIR, R, G
    with rasterio.open(rvb) as a, rasterio.open(irc) as b:
        if not (np.array_equal(a.read(), data[[0, 1, 2]]) and np.array_equal(b.read(), data[[3, 0, 1]])):
            raise RuntimeError("the JPEG 2000 round trip is not lossless with REVERSIBLE=YES QUALITY=100")
    # Height in metres at 1 m, 3 m beyond the tile on each side (edge heights repeated).
    margin, side = 3, int(np.ceil(size * 0.2)) + 6
    height_m = data[4].astype(np.float32) / 5.0
    dem = np.zeros((side, side), np.float32)
    reproject(
        height_m,
        dem,
        src_transform=transform,
        src_crs=crs,
        dst_transform=from_origin(x0 - margin, y0 + margin, 1.0, 1.0),
        dst_crs=crs,
        resampling=Resampling.average,
        src_nodata=None,
        dst_nodata=np.nan,
    )
    dem = np.where(np.isnan(dem), np.nanmean(dem), dem).astype(np.float32)
    height = folder / "MNH_0650_6865_1M.tif"
    with rasterio.open(
        height,
        "w",
        driver="GTiff",
        width=side,
        height=side,
        count=1,
        dtype="float32",
        crs=crs,
        transform=from_origin(x0 - margin, y0 + margin, 1.0, 1.0),
    ) as dst:
        dst.write(dem, 1)
    full.unlink()
    return {"rvb": rvb, "irc": irc, "elevation": height}


def prestack(inputs: dict[str, Path], out: Path) -> Path:
    """One 5-band GeoTIFF of the same bands, by an independent path (no VRT)."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.warp import reproject

    with rasterio.open(inputs["rvb"]) as r, rasterio.open(inputs["irc"]) as i:
        rgb, nir, profile = r.read(), i.read(1), r.profile
    warped = np.zeros(rgb.shape[1:], np.float32)
    with rasterio.open(inputs["elevation"]) as e:
        reproject(
            rasterio.band(e, 1),
            warped,
            dst_transform=profile["transform"],
            dst_crs=profile["crs"],
            resampling=Resampling.bilinear,
        )
    elev = np.clip(np.floor(warped * np.float32(5.0) + np.float32(0.5)), 0, 255).astype(np.uint8)
    profile.update(driver="GTiff", count=5, tiled=True, blockxsize=512, blockysize=512, compress="deflate")
    for key in ("quality", "reversible"):
        profile.pop(key, None)
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(np.concatenate([rgb, nir[None], elev[None]]))
    return out


def read_seconds(path: Path, block: int = 512, repeats: int = 3) -> float:
    """Best of *repeats* wall seconds reading every band of *path* in *block*-px windows (no model)."""
    import rasterio
    from rasterio.windows import Window

    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        with rasterio.open(path) as ds:
            for row in range(0, ds.height, block):
                for col in range(0, ds.width, block):
                    ds.read(window=Window(col, row, min(block, ds.width - col), min(block, ds.height - row)))
        best = min(best, time.perf_counter() - t)
    return best


def tiny_checkpoint(folder: Path, tile: int, encoder: str) -> Path:
    import torch

    from flair_deploy.artifacts import save_checkpoint
    from flair_deploy.description import ArchitectureSpec, ModelDescription, class_preset
    from flair_deploy.models import build_model

    desc = ModelDescription(
        name="bench",
        tile_size=tile,
        overlap=tile // 4,
        architecture=ArchitectureSpec(arch="unet", encoder=encoder, encoder_depth=5),
        classes=class_preset("flair15"),
    )
    torch.manual_seed(0)
    return save_checkpoint(folder / "bench.ckpt", build_model(desc).eval(), desc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--read-only", action="store_true", help="Only time reading the assembled VRT vs the stacked GeoTIFF."
    )
    args = parser.parse_args()

    from flair_deploy.inference.config import BandSourcesConfig, DetectConfig
    from flair_deploy.inference.detect import detect

    root = Path(tempfile.mkdtemp(prefix="bd-ortho-bench-"))
    try:
        print("building inputs", file=sys.stderr, flush=True)
        t = time.perf_counter()
        inputs = build_inputs(root, args.size, args.seed)
        build_s = time.perf_counter() - t
        ckpt = tiny_checkpoint(root, args.tile, args.encoder)
        print("pre-stacking", file=sys.stderr, flush=True)
        t = time.perf_counter()
        stacked = prestack(inputs, root / "stacked.tif")
        stack_s = time.perf_counter() - t
        if args.read_only:
            from flair_deploy.inference.sources import assemble_bands, bd_ortho_sources

            vrt = assemble_bands(
                bd_ortho_sources(inputs["rvb"], inputs["irc"], inputs["elevation"]), root / "t.vrt"
            )
            result = {
                "size": args.size,
                "read_s_prestacked_geotiff": round(read_seconds(stacked), 3),
                "read_s_three_sources_vrt": round(read_seconds(vrt), 3),
                "read_s_rvb_jp2_alone": round(read_seconds(inputs["rvb"]), 3),
            }
            print(json.dumps(result, indent=2))
            if args.json:
                args.json.write_text(json.dumps(result, indent=2))
            return
        common = {"model": ckpt, "probabilities": True, "overviews": False}
        print("detect: pre-stacked", file=sys.stderr, flush=True)
        t = time.perf_counter()
        ref = detect(DetectConfig(inputs=(stacked,), output=root / "ref" / "map.tif", **common))
        ref_s = time.perf_counter() - t
        print("detect: three sources", file=sys.stderr, flush=True)
        t = time.perf_counter()
        sources = BandSourcesConfig(rvb=inputs["rvb"], irc=inputs["irc"], elevation=inputs["elevation"])
        bd = detect(DetectConfig(sources=sources, output=root / "bd" / "map.tif", **common))
        bd_s = time.perf_counter() - t

        import rasterio

        def read(path: Path) -> np.ndarray:
            with rasterio.open(path) as ds:
                return ds.read()

        classes = read(root / "bd" / "map.tif") == read(root / "ref" / "map.tif")
        proba = read(root / "bd" / "map_proba.tif") == read(root / "ref" / "map_proba.tif")
        leftovers = sorted(p.name for p in (root / "bd").iterdir() if p.name.startswith("."))
        result = {
            "size": args.size,
            "tile": args.tile,
            "encoder": args.encoder,
            "classes_equal_pct": 100.0 * float(classes.mean()),
            "probabilities_equal_pct": 100.0 * float(proba.mean()),
            "inputs_mb": {k: round(p.stat().st_size / 2**20, 2) for k, p in inputs.items()},
            "build_inputs_s": round(build_s, 2),
            "prestack_s": round(stack_s, 2),
            "detect_prestacked_s": round(ref_s, 2),
            "detect_three_sources_s": round(bd_s, 2),
            "three_sources_vs_prestacked_detect": round(bd_s / ref_s, 3),
            "three_sources_vs_prestack_plus_detect": round(bd_s / (stack_s + ref_s), 3),
            "stage_s_prestacked": {k: round(v, 2) for k, v in dataclasses.asdict(ref.seconds).items()},
            "stage_s_three_sources": {k: round(v, 2) for k, v in dataclasses.asdict(bd.seconds).items()},
            "temporaries_left": leftovers,
        }
        print(json.dumps(result, indent=2))
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
