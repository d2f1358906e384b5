"""Peak memory of `detect` against raster width: a square raster and a very wide VRT mosaic.

Each run is a fresh process (peak RSS = ``VmHWM``) mapping a synthetic 5-band orthophoto with an
onnxruntime FP32 model (19 logits, 15 active, 512-px tiles, detect defaults). The wide mosaic is a VRT
that repeats one strip side by side, so a 262,144-px-wide input costs no disk.

    python benchmarks/bench_memory.py --encoder resnet34 --depth 5 --square 16384 --wide 262144 \
        --json memory.json

``--square-height`` sets the height of the "square" run (memory does not depend on the height, so a
16384 x 1024 strip measures the 16384-px width at a fraction of the cost); ``--height`` is the height of
the wide mosaic.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape


def _model(work: Path, encoder: str, depth: int) -> Path:
    from flair_deploy.artifacts import preset_description
    from flair_deploy.description import ArchitectureSpec
    from flair_deploy.exports.onnx import export_onnx
    from flair_deploy.models import build_model

    path = work / f"{encoder}-d{depth}.onnx"
    if not path.exists():
        desc = preset_description("flair-inc-rgbie-15cl-resnet34-unet").model_copy(
            update={"architecture": ArchitectureSpec(arch="unet", encoder=encoder, encoder_depth=depth)}
        )
        export_onnx(build_model(desc).eval(), desc, path)
    return path


def _strip(work: Path, width: int, height: int) -> Path:
    from flair_deploy.sample import make_sample_ortho

    path = work / f"strip_{width}x{height}.tif"
    if not path.exists():
        make_sample_ortho(path, width=width, height=height, seed=1, compress="deflate")
    return path


def _wide_vrt(work: Path, strip: Path, repeats: int) -> Path:
    import rasterio

    with rasterio.open(strip) as ds:
        w, h, t, crs, nodata = ds.width, ds.height, ds.transform, ds.crs, ds.nodata
    geo = f"{t.c}, {t.a}, {t.b}, {t.f}, {t.d}, {t.e}"
    bands = []
    for b in range(1, 6):
        sources = "".join(
            f'<ComplexSource><SourceFilename relativeToVRT="0">{strip}</SourceFilename>'
            f"<SourceBand>{b}</SourceBand>"
            f'<SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>'
            f'<DstRect xOff="{i * w}" yOff="0" xSize="{w}" ySize="{h}"/>'
            f"<NODATA>{nodata:g}</NODATA></ComplexSource>"
            for i in range(repeats)
        )
        bands.append(
            f'<VRTRasterBand dataType="Byte" band="{b}"><NoDataValue>{nodata:g}</NoDataValue>'
            f"{sources}</VRTRasterBand>"
        )
    path = work / f"wide_{w * repeats}x{h}.vrt"
    path.write_text(
        f'<VRTDataset rasterXSize="{w * repeats}" rasterYSize="{h}"><SRS>{escape(crs.to_wkt())}</SRS>'
        f"<GeoTransform>{geo}</GeoTransform>{''.join(bands)}</VRTDataset>\n"
    )
    return path


def _child(spec: str) -> None:
    """Run one detect in this fresh process and print its summary as JSON."""
    from flair_deploy.inference import DetectConfig, detect

    cfg = json.loads(spec)
    if cfg.pop("null_backend", False):
        # The pipeline alone: the null backend imitates the model (its description) and computes nothing.
        from flair_deploy.artifacts import read_description
        from flair_deploy.inference.backends.null_backend import NullBackend
        from flair_deploy.inference.detect import run_detection

        with NullBackend(read_description(Path(cfg["model"]))) as backend:
            summary = run_detection(backend, DetectConfig(**cfg))
    else:
        summary = detect(DetectConfig(**cfg))
    print(json.dumps(summary.as_dict()))


def _run(model: Path, raster: Path, out: Path, extra: dict[str, Any]) -> dict[str, Any]:
    cfg = {"inputs": [str(raster)], "output": str(out), "model": str(model), "overwrite": True, **extra}
    t0 = time.perf_counter()
    res = subprocess.run(
        [sys.executable, __file__, "_child", json.dumps(cfg)], capture_output=True, text=True, check=False
    )
    if res.returncode:
        raise SystemExit(res.stderr.strip()[-2000:])
    s = json.loads(res.stdout.strip().splitlines()[-1])
    return {
        "raster": raster.name,
        "peak_rss_mib": s["peak_rss_mb"],
        "tiles_inferred": s["tiles_inferred"],
        "tiles_per_s": s["tiles_per_s"],
        "wall_s": time.perf_counter() - t0,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoder", default="resnet34")
    ap.add_argument("--depth", type=int, default=5)
    ap.add_argument("--square", type=int, default=16384, help="width of the 'square' raster (0: skip)")
    ap.add_argument("--square-height", type=int, default=None, help="its height (default: its width)")
    ap.add_argument("--wide", type=int, default=262144, help="width of the wide VRT mosaic (0: skip)")
    ap.add_argument("--height", type=int, default=1024, help="height of the wide mosaic")
    ap.add_argument("--strip", type=int, default=16384, help="width of the strip the VRT repeats")
    ap.add_argument("--chunk-mb", type=int, default=None, help="detect's chunk_mb (default: detect's)")
    ap.add_argument("--null", action="store_true", help="the null backend: the pipeline's own memory")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    extra: dict[str, Any] = {"allow_gsd_mismatch": True}
    if args.chunk_mb:
        extra["chunk_mb"] = args.chunk_mb
    if args.null:
        extra["null_backend"] = True
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        model = _model(work, args.encoder, args.depth)
        if args.square:
            raster = _strip(work, args.square, args.square_height or args.square)
            rows.append(_run(model, raster, work / "square_map.tif", extra))
            print(json.dumps(rows[-1]), flush=True)
        if args.wide:
            vrt = _wide_vrt(work, _strip(work, args.strip, args.height), args.wide // args.strip)
            rows.append(_run(model, vrt, work / "wide_map.tif", extra))
            print(json.dumps(rows[-1]), flush=True)
    result = {"args": {k: str(v) for k, v in vars(args).items()}, "runs": rows}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "_child":
        _child(sys.argv[2])
    else:
        main()
