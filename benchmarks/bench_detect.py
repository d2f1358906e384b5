"""`detect` must-show numbers: crop parity, seams, memory flatness, I/O hiding, speed against IGN.

Sections (``--sections``, default all):

* ``parity``: ``crop`` mode vs an independent re-implementation of IGN flair-detect's grid (appendix A of
  the FLAIR anchor report, integer windows), same weights and margin: pixel agreement (ties excluded).
* ``seams``: ``blend`` (and ``crop`` for contrast) vs a whole-image forward pass of the same network:
  agreement within 8 px of interior tile borders vs in tile interiors (the gap must be <= 0.5 points).
* ``memory``: peak RSS of a ``detect`` run (onnxruntime FP32, fresh process) for growing rasters: flat in
  the raster size (target: 16384² five-band in <= 1.5 GB).
* ``throughput``: end-to-end tiles/s vs the backend's model-only tiles/s on the same tiles (target >= 90 %).
* ``ign``: a baseline that mimics flair-detect's processing (float geo windows, boundless bilinear reads
  through one handle, float64 normalisation, full fp32 probabilities to host, crop, argmax, column-major
  LZW writes) vs our ``crop`` (same margin) and ``blend`` (default) runs, same weights, FP32.

Small now, full size on a quiet machine::

    python benchmarks/bench_detect.py --size 1024 --tile 256 --encoder resnet18          # smoke, ~minutes
    python benchmarks/bench_detect.py --size 4096 --tile 512 --margin 128 --encoder resnet34 \\
        --memory-sizes 4096 8192 16384 --json detect-bench.json                           # the real numbers

By default the network is an untrained SMP U-Net (random weights, fixed seed, no download): parity, memory
and speed do not depend on what it learnt. The seams figure does: a random network's output depends on
context hundreds of pixels away, so measure it with trained weights (``--checkpoint``, e.g. the demo's
model, or IGN's with ``--preset``).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch

from flair_deploy.description import ArchitectureSpec, ModelDescription, class_preset
from flair_deploy.inference import DetectConfig, run_detection
from flair_deploy.inference.tiling import make_grid
from flair_deploy.models import build_model
from flair_deploy.sample import make_sample_ortho


# ---------------------------------------------------------------------- models
def make_description(tile: int, overlap: int, encoder: str) -> ModelDescription:
    return ModelDescription(
        name=f"bench-unet-{encoder}",
        tile_size=tile,
        overlap=overlap,
        architecture=ArchitectureSpec(arch="unet", encoder=encoder),
        classes=class_preset("flair15"),
    )


CHECKPOINT: tuple[Path, str | None] | None = None  # set by --checkpoint/--preset


def make_torch_backend(desc: ModelDescription, threads: int | None):
    from flair_deploy.inference.backends.torch_backend import TorchBackend

    if CHECKPOINT is not None:
        # Trained weights: the seams figure is only meaningful for a network with a local receptive field.
        from flair_deploy.checkpoints import load_checkpoint

        loaded = load_checkpoint(CHECKPOINT[0], preset=CHECKPOINT[1])
        model = loaded.model.eval()
        # The network is fully convolutional: run it at the benchmark's tile and overlap, whatever
        # patch size it was trained on.
        described = loaded.description.model_copy(
            update={"tile_size": desc.tile_size, "overlap": desc.overlap}
        )
        return TorchBackend(model, described, threads=threads), model
    torch.manual_seed(0)
    model = build_model(desc).eval()
    return TorchBackend(model, desc, threads=threads), model


def make_onnx(desc: ModelDescription, model: torch.nn.Module, path: Path) -> Path:
    from flair_deploy.exports.onnx import export_onnx

    export_onnx(model, desc, path, dynamic_hw=True)
    return path


def make_ort_backend(path: Path, threads: int | None):
    from flair_deploy.inference.backends import create_backend

    return create_backend("onnxruntime", path, options={"threads": threads} if threads else None)


# ---------------------------------------------------------------------- IGN reference and baseline
def ign_reference_indices(backend, image: np.ndarray, P: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Appendix A in integer pixels, written independently of flair_deploy.inference.tiling.

    Returns the 0-based class map and a per-pixel "tie" mask (top-2 probabilities within 1e-6).
    """
    _, h, w = image.shape
    big = np.pad(image.astype(np.float32), ((0, 0), (P, P), (P, P)), mode="reflect")
    out = np.full((h, w), 255, np.uint8)
    ties = np.zeros((h, w), bool)
    step = P - 2 * m
    active = np.asarray(backend.description.active_mask)
    for x in range(-m, w + m, step):  # outer loop: x from the west
        if x + P > w + m:
            x = w + m - P
        for u in range(-m, h + m, step):  # inner loop: y from the south
            if u + P > h + m:
                u = h + m - P
            top = h - u - P
            patch = np.ascontiguousarray(big[None, :, top + P : top + 2 * P, x + P : x + 2 * P])
            probs = backend.predict_probabilities(patch)[0]
            sub = probs[active]
            srt = np.sort(sub, axis=0)
            cls = np.flatnonzero(active)[sub.argmax(axis=0)]
            tie = (srt[-1] - srt[-2]) < 1e-6
            r0, r1, c0, c1 = max(top + m, 0), min(top + P - m, h), max(x + m, 0), min(x + P - m, w)
            out[r0:r1, c0:c1] = cls[r0 - top : r1 - top, c0 - x : c1 - x]
            ties[r0:r1, c0:c1] = tie[r0 - top : r1 - top, c0 - x : c1 - x]
    return out, ties


def ign_baseline(
    path: Path, out: Path, model: torch.nn.Module, P: int, m: int, batch: int
) -> dict[str, float]:
    """Mimic flair-detect's processing chain (§2.2-2.7 of the anchor report) with the same network."""
    from rasterio.enums import Resampling
    from rasterio.windows import Window, from_bounds

    mean = np.array([105.08, 110.87, 101.82, 106.38, 53.26])[:, None, None]
    std = np.array([52.17, 45.38, 44.0, 39.69, 79.3])[:, None, None]
    start = time.perf_counter()
    tiles = 0
    with rasterio.open(path) as src:
        res = abs(round(src.res[0], 5))
        minx, miny, maxx, maxy = src.bounds
        geo_p, geo_m, step = P * res, m * res, (P - 2 * m) * res
        patches, seen = [], set()
        for x in np.arange(minx - geo_m, maxx + geo_m, step):
            for y in np.arange(miny - geo_m, maxy + geo_m, step):
                if x + geo_p > maxx + geo_m:
                    x = maxx + geo_m - geo_p
                if y + geo_p > maxy + geo_m:
                    y = maxy + geo_m - geo_p
                core = (x + geo_m, y + geo_m, min(x + geo_p - geo_m, maxx), min(y + geo_p - geo_m, maxy))
                key = tuple(round(c, 6) for c in core)
                if key not in seen:
                    seen.add(key)
                    patches.append(((x, y, x + geo_p, y + geo_p), core))
        profile = src.profile.copy()
        profile.update(
            driver="GTiff",
            dtype="uint8",
            count=1,
            compress="LZW",
            BIGTIFF="YES",
            tiled=True,
            blockxsize=P,
            blockysize=P,
        )
        profile.pop("photometric", None)
        with rasterio.open(out, "w+", **profile) as dst:
            for i in range(0, len(patches), batch):
                group = patches[i : i + batch]
                imgs = []
                for bounds, _ in group:
                    win = from_bounds(*bounds, src.transform)
                    img = src.read(
                        indexes=[1, 2, 3, 4, 5],
                        window=win,
                        out_shape=(5, P, P),
                        resampling=Resampling.bilinear,
                        boundless=True,
                    )
                    norm = (img.astype(np.float64) - mean) / std  # IGN normalises in float64
                    # Our network normalises inside: feed the raw values the normalisation came from.
                    imgs.append((norm * std + mean).astype(np.float32))
                with torch.no_grad():
                    logits = model(torch.from_numpy(np.stack(imgs)))
                    probs = torch.softmax(logits, dim=1).cpu().numpy()  # full fp32 probabilities to host
                for (_, core), pr in zip(group, probs, strict=True):
                    pred = np.argmax(pr[:, m : P - m, m : P - m], axis=0).astype(np.uint8)
                    # geometry_window(pixel_precision=6) + round_shape(ceil): IGN's write window.
                    fw = from_bounds(*core, dst.transform)
                    win = Window(
                        math.floor(round(fw.col_off, 6)),
                        math.floor(round(fw.row_off, 6)),
                        math.ceil(round(fw.width, 4)),
                        math.ceil(round(fw.height, 4)),
                    )
                    dst.write(pred[: win.height, : win.width], 1, window=win)
                tiles += len(group)
    wall = time.perf_counter() - start
    with rasterio.open(path) as src:
        px = src.width * src.height
    return {"tiles": tiles, "seconds": wall, "tiles_per_s": tiles / wall, "mpx_per_s": px / 1e6 / wall}


# ---------------------------------------------------------------------- sections
def read_raster(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read().astype(np.float32)


def section_parity(work: Path, ortho: Path, desc, args) -> dict[str, Any]:
    backend, _ = make_torch_backend(desc, args.threads)
    out = work / "parity_crop.tif"
    image = read_raster(ortho)
    cfg = DetectConfig(
        inputs=(ortho,),
        output=out,
        stitching="crop",
        margin=args.margin,
        indices=True,
        overviews=False,
        overwrite=True,
        batch_size=args.batch_size,
        allow_gsd_mismatch=True,
    )
    with backend:
        run_detection(backend, cfg)
        ref, ties = ign_reference_indices(backend, image, desc.tile_size, args.margin)
    with rasterio.open(out) as ds:
        got = ds.read(1)
    differ = got != ref
    return {
        "pixels": int(got.size),
        "differ": int(differ.sum()),
        "differ_not_ties": int((differ & ~ties).sum()),
        "agreement_pct_excl_ties": 100.0 * (1 - (differ & ~ties).sum() / max((~ties).sum(), 1)),
    }


def _border_mask(grid, h: int, w: int, px: int = 8) -> np.ndarray:
    """Pixels within *px* of an interior tile edge (edges of tiles that lie inside the raster)."""
    rows, cols = np.zeros(h, bool), np.zeros(w, bool)
    for axis, tiles, n in ((rows, grid.rows, h), (cols, grid.cols, w)):
        for t in tiles:
            for edge in (t.start, t.start + grid.size):
                if 0 < edge < n:
                    axis[max(edge - px, 0) : min(edge + px, n)] = True
    return rows[:, None] | cols[None, :]


def section_seams(work: Path, ortho: Path, desc, args) -> dict[str, Any]:
    backend, _ = make_torch_backend(desc, args.threads)
    image = read_raster(ortho)
    _, h, w = image.shape
    stride = desc.architecture.output_stride
    ph, pw = math.ceil(h / stride) * stride, math.ceil(w / stride) * stride
    padded = np.pad(image, ((0, 0), (0, ph - h), (0, pw - w)), mode="reflect")[None]
    results: dict[str, Any] = {}
    with backend:
        whole, _ = backend.predict_classes(np.ascontiguousarray(padded))
        whole = whole[0, :h, :w]
        for mode in ("blend", "crop"):
            out = work / f"seams_{mode}.tif"
            kw: dict[str, Any] = {"overlap": args.overlap} if mode == "blend" else {"margin": args.margin}
            cfg = DetectConfig(
                inputs=(ortho,),
                output=out,
                stitching=mode,
                indices=True,
                overviews=False,
                overwrite=True,
                batch_size=args.batch_size,
                allow_gsd_mismatch=True,
                **kw,
            )
            run_detection(backend, cfg)
            with rasterio.open(out) as ds:
                got = ds.read(1)
            plan = cfg.resolve_tiling(desc)
            grid = make_grid(w, h, plan)
            border = _border_mask(grid, h, w)
            agree = got == whole
            results[mode] = {
                "agreement_border_pct": 100.0 * agree[border].mean(),
                "agreement_interior_pct": 100.0 * agree[~border].mean(),
                "gap_points": 100.0 * (agree[~border].mean() - agree[border].mean()),
            }
    return results


def _child(spec: str) -> None:
    """Run one detect in this (fresh) process and print its summary as JSON (for the memory section)."""
    p = json.loads(spec)
    backend = make_ort_backend(Path(p["model"]), p.get("threads"))
    cfg = DetectConfig(**p["cfg"])
    with backend:
        s = run_detection(backend, cfg)
    print(json.dumps(s.as_dict()))


def run_child(model: Path, cfg: dict[str, Any], threads: int | None) -> dict[str, Any]:
    spec = json.dumps({"model": str(model), "threads": threads, "cfg": cfg})
    res = subprocess.run(
        [sys.executable, __file__, "_child", spec], capture_output=True, text=True, check=False
    )
    if res.returncode:
        raise RuntimeError(res.stderr.strip().splitlines()[-1] if res.stderr.strip() else "child failed")
    return json.loads(res.stdout.strip().splitlines()[-1])


def section_memory(work: Path, onnx: Path, desc, args) -> dict[str, Any]:
    rows = {}
    for size in args.memory_sizes:
        ortho = work / f"mem_{size}.tif"
        if not ortho.exists():
            make_sample_ortho(ortho, width=size, height=size, seed=1, nodata_border=size // 64)
        out = work / f"mem_{size}_map.tif"
        cfg = {
            "inputs": [str(ortho)],
            "output": str(out),
            "overwrite": True,
            "batch_size": args.batch_size,
            "allow_gsd_mismatch": True,
        }
        s = run_child(onnx, cfg, args.threads)
        rows[str(size)] = {k: s[k] for k in ("peak_rss_mb", "mpx_per_s", "tiles_per_s", "busy")}
        rows[str(size)]["wall_s"] = s["seconds"]["wall"]
    return rows


def model_only_tiles_per_s(backend, desc, batch: int, seconds: float, classes: bool) -> float:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (batch, desc.in_channels, desc.tile_size, desc.tile_size)).astype(np.float32)
    call = backend.predict_classes if classes else backend.predict_probabilities
    call(x)  # warm-up
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        call(x)
        n += batch
    return n / (time.perf_counter() - start)


def section_throughput(work: Path, ortho: Path, onnx: Path, desc, args) -> dict[str, Any]:
    backend = make_ort_backend(onnx, args.threads)
    rows = {}
    with backend:
        for mode in ("blend", "crop"):
            cfg = DetectConfig(
                inputs=(ortho,),
                output=work / f"tp_{mode}.tif",
                stitching=mode,
                overwrite=True,
                batch_size=args.batch_size,
                allow_gsd_mismatch=True,
            )
            s = run_detection(backend, cfg)
            model = model_only_tiles_per_s(
                backend, desc, args.batch_size, args.model_seconds, classes=mode == "crop"
            )
            rows[mode] = {
                "end_to_end_tiles_per_s": s.tiles_per_s,
                "model_only_tiles_per_s": model,
                "ratio_pct": 100.0 * s.tiles_per_s / model,
                "busy_pct": 100.0 * s.busy,
                "stage_seconds": s.as_dict()["seconds"],
            }
    return rows


def section_ign(work: Path, ortho: Path, onnx: Path, desc, args) -> dict[str, Any]:
    backend, model = make_torch_backend(desc, args.threads)
    torch.set_num_threads(args.threads or torch.get_num_threads())
    rows: dict[str, Any] = {}
    rows["ign_baseline_torch"] = ign_baseline(
        ortho, work / "ign.tif", model, desc.tile_size, args.margin, args.batch_size
    )
    for name, be in (("torch", backend), ("onnxruntime", make_ort_backend(onnx, args.threads))):
        with be:
            for mode, kw in (("crop", {"margin": args.margin}), ("blend", {})):
                cfg = DetectConfig(
                    inputs=(ortho,),
                    output=work / f"ours_{name}_{mode}.tif",
                    stitching=mode,
                    overwrite=True,
                    batch_size=args.batch_size,
                    allow_gsd_mismatch=True,
                    **kw,
                )
                s = run_detection(be, cfg)
                rows[f"ours_{name}_{mode}"] = {
                    "tiles": s.tiles_inferred,
                    "seconds": s.seconds.wall,
                    "tiles_per_s": s.tiles_per_s,
                    "mpx_per_s": s.mpx_per_s,
                }
    base = rows["ign_baseline_torch"]["mpx_per_s"]
    for v in rows.values():
        v["speedup_vs_ign"] = v["mpx_per_s"] / base
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=1024, help="raster edge for parity/seams/throughput/ign")
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=None, help="blend overlap (default tile/4)")
    parser.add_argument(
        "--margin", type=int, default=None, help="crop margin (default tile/4, IGN: 128 of 512)"
    )
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--memory-sizes", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument("--model-seconds", type=float, default=10.0)
    parser.add_argument("--sections", nargs="+", default=["parity", "seams", "memory", "throughput", "ign"])
    parser.add_argument("--checkpoint", type=Path, default=None, help="trained weights (needed for seams)")
    parser.add_argument("--preset", default=None, help="description preset for IGN weights")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    args.overlap = args.tile // 4 if args.overlap is None else args.overlap
    args.margin = args.tile // 4 if args.margin is None else args.margin
    desc = make_description(args.tile, args.overlap, args.encoder)
    if args.checkpoint is not None:
        global CHECKPOINT
        CHECKPOINT = (args.checkpoint, args.preset)
        desc = make_torch_backend(desc, args.threads)[0].description
    results: dict[str, Any] = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        ortho = work / f"ortho_{args.size}.tif"
        if not ortho.exists():
            make_sample_ortho(ortho, width=args.size, height=args.size, seed=0)
        onnx = work / f"bench_{args.encoder}_{args.tile}.onnx"
        if not onnx.exists() and set(args.sections) & {"memory", "throughput", "ign"}:
            make_onnx(desc, make_torch_backend(desc, args.threads)[1], onnx)
        for name in args.sections:
            t0 = time.perf_counter()
            if name == "parity":
                results[name] = section_parity(work, ortho, desc, args)
            elif name == "seams":
                results[name] = section_seams(work, ortho, desc, args)
            elif name == "memory":
                results[name] = section_memory(work, onnx, desc, args)
            elif name == "throughput":
                results[name] = section_throughput(work, ortho, onnx, desc, args)
            elif name == "ign":
                results[name] = section_ign(work, ortho, onnx, desc, args)
            else:
                raise SystemExit(f"unknown section {name!r}")
            results[name]["_section_seconds"] = time.perf_counter() - t0
            print(f"[{name}] {json.dumps(results[name], indent=1, default=float)}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=float))
    return results


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "_child":
        _child(sys.argv[2])
    else:
        main()
