"""Training-loader throughput (patches/s), without a model.

Generates a sample dataset (or uses a given patch list) and times :func:`loader_throughput` for each
worker count. Run on a quiet machine::

    python benchmarks/bench_loader.py                       # 64-px sample patches, workers 0 and 2
    python benchmarks/bench_loader.py --size 512 --workers 0 2 4
    python benchmarks/bench_loader.py --csv /data/flair/train.csv --workers 0 4 8

Also times the sample generators themselves (dataset, and a 4096² orthophoto with --ortho).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from flair_deploy.sample import make_sample_dataset, make_sample_ortho, sample_description
from flair_deploy.training.data import loader_throughput


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--csv", type=Path, help="FLAIR patch list to read (default: a generated sample)")
    parser.add_argument("--size", type=int, default=64, help="sample patch size, px (default 64)")
    parser.add_argument("--n", type=int, default=320, help="sample training patches (default 320)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--no-augment", action="store_true", help="time reading only, without D4")
    parser.add_argument("--ortho", type=int, default=0, help="also time writing an N x N sample ortho")
    args = parser.parse_args(argv)

    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.csv is None:
            t0 = time.perf_counter()
            sample = make_sample_dataset(
                Path(tmp) / "sample", n_train=args.n, n_val=1, n_test=1, size=args.size
            )
            results["generate_dataset_s"] = time.perf_counter() - t0
            csv_path, description = sample.train_csv, sample.description
        else:
            csv_path, description = args.csv, sample_description(args.size)
        for workers in args.workers:
            rate = loader_throughput(
                csv_path,
                description=description,
                band_indexes=(1, 2, 3, 4, 5),
                batch_size=args.batch_size,
                num_workers=workers,
                augment=not args.no_augment,
                epochs=args.epochs,
            )
            results[f"patches_per_s_workers{workers}"] = rate
        if args.ortho:
            t0 = time.perf_counter()
            make_sample_ortho(Path(tmp) / "ortho.tif", width=args.ortho, height=args.ortho)
            results[f"generate_ortho{args.ortho}_s"] = time.perf_counter() - t0
    print(json.dumps({k: round(v, 2) for k, v in results.items()}, indent=2))
    return results


if __name__ == "__main__":
    main()
