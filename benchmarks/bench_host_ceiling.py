"""The host-side ceiling of `detect`: its whole pipeline with the null backend (no network).

The null backend returns ready logits on its device, so what is left is everything the host does per
tile: reading and decoding, batching, the backend call, stitching (on the host here, because the
"device" of a CPU run is the host), copying finished rows back, compression, overviews. The CPU
milliseconds per tile of each thread say which stage limits a GPU run, and how many tiles per second
the host could feed with N cores.

    python benchmarks/bench_host_ceiling.py --size 4096 --json host-ceiling.json

Settings follow the issue's host-ceiling definition: blend, 15 active classes of 19 logits, 512-px
tiles, overlap 128 (the preset's), detect's defaults otherwise; crop mode is measured too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any


def measure(
    raster: Path, out: Path, *, stitching: str, batch: int, readers: int, device: str
) -> dict[str, Any]:
    """Map *raster* with the null backend; return per-tile CPU milliseconds per stage."""
    from flair_deploy.artifacts import preset_description
    from flair_deploy.inference.backends.null_backend import NullBackend
    from flair_deploy.inference.config import DetectConfig
    from flair_deploy.inference.detect import run_detection

    desc = preset_description("flair-inc-rgbie-15cl-resnet34-unet")
    cfg = DetectConfig(
        inputs=(raster,),
        output=out,
        stitching=stitching,
        batch_size=batch,
        readers=readers,
        device=device,
        overwrite=True,
        allow_gsd_mismatch=True,
    )
    with NullBackend(desc, device=device) as backend:
        cpu0, wall0 = time.process_time(), time.perf_counter()
        summary = run_detection(backend, cfg)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    s = summary.seconds
    n = summary.tiles_inferred

    def ms(seconds: float) -> float:
        return round(1e3 * seconds / n, 3)

    threads = {
        "read (all readers)": s.read_cpu,
        "main": s.main_cpu,
        "stitch": s.stitch_cpu,
        "writer": s.write_cpu,
    }
    serial = {k: v for k, v in threads.items() if k != "read (all readers)"}
    finalise_cpu = cpu - s.process_cpu  # overviews and renames, after the pipeline
    return {
        "stitching": stitching,
        "batch": batch,
        "readers": readers,
        "device": device,
        "tiles": n,
        "wall_s": round(wall, 3),
        "tiles_per_s": round(n / wall, 1),
        "cpu_ms_per_tile_total": ms(cpu),
        "cpu_ms_per_tile": {k: ms(v) for k, v in threads.items()}
        | {
            "other threads (GDAL compression, runtimes)": ms(s.process_cpu - sum(threads.values())),
            "after the pipeline (overviews, renames)": ms(finalise_cpu),
        },
        "busiest_serial_thread": max(serial, key=lambda k: serial[k]),
        "busiest_serial_ms_per_tile": ms(max(serial.values())),
        "projected_tiles_per_s_16_cores": round(16 * 1e3 / ms(cpu), 0) if cpu else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096, help="raster edge in pixels")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--readers", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from flair_deploy.sample import make_sample_ortho

    results = []
    with tempfile.TemporaryDirectory(prefix="host-ceiling-") as tmp:
        raster = make_sample_ortho(
            Path(tmp) / "ortho.tif", width=args.size, height=args.size, seed=1, compress="deflate"
        )
        for stitching in ("blend", "crop"):
            for batch in args.batch:
                r = measure(
                    raster,
                    Path(tmp) / "map.tif",
                    stitching=stitching,
                    batch=batch,
                    readers=args.readers,
                    device=args.device,
                )
                print(json.dumps(r))
                results.append(r)
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs",
        "raster": f"{args.size}x{args.size} 5-band uint8 deflate GeoTIFF",
        "results": results,
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
