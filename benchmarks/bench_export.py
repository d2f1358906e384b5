"""Measure the export must-show numbers (issue 3) on this CPU.

* ORT FP32 vs PyTorch: argmax agreement and max |Δlogit|;
* throughput (tiles/s) of PyTorch eager, ORT FP32 and ORT INT8 (with/without quant_pre_process),
  U-Net/ResNet-34, 5 bands, batch 4, 512² tiles by default;
* FP16 / INT8 agreement and ΔmIoU on a trained checkpoint (``--checkpoint`` + ``--csv``).

Run on a quiet machine::

    python benchmarks/bench_export.py                      # random weights: speed + FP32 parity
    python benchmarks/bench_export.py --checkpoint runs/best.ckpt --csv sample/val.csv --out bench-out

Without ``--checkpoint`` the weights are random: speed and FP32 parity are meaningful, FP16/INT8
agreement is not (near-tied logits everywhere).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def physical_cores() -> int:
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        return os.cpu_count() or 1


def timeit(fn, *, warmup: int, iters: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def ort_session(path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, help="trained checkpoint (default: random U-Net/ResNet-34)")
    ap.add_argument("--preset", help="preset for IGN weights")
    ap.add_argument("--csv", type=Path, help="FLAIR CSV: calibration and parity tiles (masks → ΔmIoU)")
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=physical_cores())
    ap.add_argument("--calibration-tiles", type=int, default=100)
    ap.add_argument("--parity-tiles", type=int, default=16)
    ap.add_argument("--method", default="percentile", choices=["minmax", "entropy", "percentile"])
    ap.add_argument(
        "--no-preprocess-variant", action="store_true", help="skip INT8 without quant_pre_process"
    )
    ap.add_argument("--calibration-csv", type=Path, help="FLAIR CSV for INT8 calibration (default: --csv)")
    ap.add_argument("--out", type=Path, help="folder for the artifacts and bench_export.json")
    args = ap.parse_args()

    from flair_deploy.checkpoints import load_checkpoint
    from flair_deploy.description import ModelDescription, class_preset
    from flair_deploy.exports.calibration import read_tiles, synthetic_tiles
    from flair_deploy.exports.config import CalibrationMethod, ParityGates
    from flair_deploy.exports.onnx import export_onnx, load_onnx
    from flair_deploy.exports.parity import compare_logits, onnx_logits, reference_logits
    from flair_deploy.exports.precision import convert_fp16, quantize_int8
    from flair_deploy.models import build_model

    torch.set_num_threads(args.threads)
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-export-"))
    out.mkdir(parents=True, exist_ok=True)
    if args.checkpoint:
        loaded = load_checkpoint(args.checkpoint, preset=args.preset)
        model, desc = loaded.model, loaded.description
    else:
        desc = ModelDescription(name="random-unet-resnet34", classes=class_preset("flair19"))
        torch.manual_seed(0)
        model = build_model(desc).eval()
    if args.tile != desc.tile_size:
        overlap = min(desc.overlap, args.tile // 4)
        desc = ModelDescription.model_validate(
            {**desc.model_dump(), "tile_size": args.tile, "overlap": overlap}
        )

    report: dict[str, object] = {
        "tile": args.tile,
        "batch": args.batch,
        "threads": args.threads,
        "weights": "trained" if args.checkpoint else "random",
        "torch": torch.__version__,
    }
    t = time.perf_counter()
    fp32 = out / "bench.fp32.onnx"
    d32 = export_onnx(model, desc, fp32, tile_size=args.tile)
    report["export_fp32_s"] = round(time.perf_counter() - t, 2)
    ops: dict[str, int] = {}
    for node in load_onnx(fp32).graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    report["fp32_graph_ops"] = dict(sorted(ops.items(), key=lambda kv: -kv[1]))

    if args.csv:
        parity = read_tiles(
            [args.csv], desc, count=args.parity_tiles, with_masks=True, purpose="parity", seed=1
        )
        # Calibrate on other tiles than the parity ones when a calibration list is given (the sample's
        # training split), so INT8 agreement is measured on data the quantiser never saw.
        calib = read_tiles([args.calibration_csv or args.csv], desc, count=args.calibration_tiles)
    else:
        parity = synthetic_tiles(desc, args.parity_tiles, seed=1)
        calib = synthetic_tiles(desc, args.calibration_tiles, seed=2)
    reference = reference_logits(model, parity, batch_size=args.batch)
    variants = {"fp32": fp32}
    t = time.perf_counter()
    convert_fp16(fp32, out / "bench.fp16.onnx", d32)
    variants["fp16"] = out / "bench.fp16.onnx"
    report["export_fp16_s"] = round(time.perf_counter() - t, 2)
    method = CalibrationMethod(args.method)
    for pre in (True, False) if not args.no_preprocess_variant else (True,):
        name = "int8" if pre else "int8-nopre"
        t = time.perf_counter()
        quantize_int8(fp32, out / f"bench.{name}.onnx", d32, calib, method=method, preprocess=pre)
        report[f"export_{name}_s"] = round(time.perf_counter() - t, 2)
        variants[name] = out / f"bench.{name}.onnx"

    gates = ParityGates()
    parity_rows = {}
    for name, path in variants.items():
        cand = onnx_logits(path, parity, batch_size=args.batch, threads=args.threads)
        gate = gates.for_precision(d32.provenance.precision if name == "fp32" else name.split("-")[0])  # type: ignore[arg-type]
        r = compare_logits(reference, cand, desc, gate, variant=name, artifact=path.name, masks=parity.masks)
        parity_rows[name] = r.summary() | {"near_tie_flips": r.near_tie_flips, "other_flips": r.other_flips}
    report["parity"] = parity_rows

    x = (
        np.random.default_rng(0)
        .uniform(0, 255, (args.batch, desc.in_channels, args.tile, args.tile))
        .astype(np.float32)
    )
    xt = torch.from_numpy(x)
    speeds: dict[str, float] = {}
    with torch.inference_mode():
        times = timeit(lambda: model(xt), warmup=args.warmup, iters=args.iters)
    speeds["pytorch_eager"] = args.batch / statistics.median(times)
    for name, path in variants.items():
        if name == "fp16":
            continue  # FP16 on CPU is emulated by casts: not a CPU deployment target
        sess = ort_session(path, args.threads)
        times = timeit(lambda s=sess: s.run(["logits"], {"image": x}), warmup=args.warmup, iters=args.iters)
        speeds[f"ort_{name}"] = args.batch / statistics.median(times)
    report["tiles_per_s"] = {k: round(v, 3) for k, v in speeds.items()}
    report["ort_fp32_over_torch"] = round(speeds["ort_fp32"] / speeds["pytorch_eager"], 3)
    report["ort_int8_over_fp32"] = round(speeds["ort_int8"] / speeds["ort_fp32"], 3)
    if "ort_int8-nopre" in speeds:
        report["ort_int8_nopre_over_fp32"] = round(speeds["ort_int8-nopre"] / speeds["ort_fp32"], 3)
    (out / "bench_export.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
