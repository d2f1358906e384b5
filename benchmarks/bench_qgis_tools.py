"""QGIS Deepness / GeoDeep must-show table: which of our ONNX files load there, and how their maps agree.

For a tiny trained 3-band (R,G,B) and 5-band (R,G,B,NIR,E) model (the export tests' synthetic scenes,
a few seconds of training), exports

* ``fixed``: fixed H/W, ``logits`` only, FP32 + FP16 + INT8, with ``--for deepness`` (and ``geodeep``
  for the 3-band model);
* ``dynamic``: dynamic H/W, ``logits,probabilities,classes``, FP32, with the same ``--for``;

then runs every file (default artifacts and variants) through

* Deepness: its own code under the QGIS Python (``tests/unit/exports/deepness_driver.py``: the dock
  widget's loading path, then ``MapProcessorSegmentation._run`` on the whole raster);
* GeoDeep: ``geodeep.run(raster, model, output_type="raw")``;

and compares each map with ``flair-deploy detect`` on the same-precision default artifact (pixel
agreement of logit indices). Writes a Markdown table (``--out``)::

    PYTHONPATH=src python benchmarks/bench_qgis_tools.py --out /tmp/qgis-table.md
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.unit.exports.conftest import make_scenes

from flair_deploy.artifacts import save_checkpoint
from flair_deploy.choices import Head, QgisTool
from flair_deploy.description import ArchitectureSpec, ModelDescription, Normalization, class_preset
from flair_deploy.exports import ExportConfig, export_model
from flair_deploy.exports.qgis_tools import variant_path
from flair_deploy.flair_format import flair_statistics
from flair_deploy.inference.config import DetectConfig
from flair_deploy.inference.detect import detect
from flair_deploy.models import build_model

DEEPNESS_SRC = Path("/work/shared/third_party/qgis-plugin-deepness/src")
DRIVER = ROOT / "tests" / "unit" / "exports" / "deepness_driver.py"
TILE = 64


def train(bands: tuple[str, ...], root: Path) -> Path:
    torch.manual_seed(0)
    mean, std = flair_statistics(bands)
    desc = ModelDescription(
        name=f"tiny-{len(bands)}b",
        bands=bands,
        normalization=Normalization(mean=mean, std=std),
        tile_size=TILE,
        overlap=16,
        architecture=ArchitectureSpec(arch="unet", encoder="resnet18", encoder_depth=3),
        classes=class_preset("flair15"),
    )
    model = build_model(desc)
    images, labels = make_scenes(64, seed=1, size=32)
    x_all, y_all = torch.from_numpy(images[:, : len(bands)].copy()), torch.from_numpy(labels)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(30):
        idx = torch.randint(0, len(x_all), (8,))
        loss = torch.nn.functional.cross_entropy(model(x_all[idx]), y_all[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return save_checkpoint(root / f"tiny-{len(bands)}b.ckpt", model, desc)


def write_raster(path: Path, bands: int, size: int, seed: int) -> Path:
    scene, _ = make_scenes(1, seed=seed, size=size)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=size,
        height=size,
        count=bands,
        dtype="uint8",
        crs="EPSG:2154",
        transform=from_origin(650000, 6860000, 0.2, 0.2),
    ) as dst:
        dst.write(scene[0, :bands].astype(np.uint8))
        if bands == 3:
            dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue]
    return path


def validation_csv(root: Path, bands: int, codes: np.ndarray) -> Path:
    """A FLAIR-like CSV of scene patches with masks (parity and INT8 calibration, as the export tests)."""
    images, labels = make_scenes(6, seed=2, size=2 * TILE)
    rows = []
    for i in range(len(images)):
        for kind, arr in (("IMG", images[i, :bands].astype(np.uint8)), ("MSK", codes[labels[i]][None])):
            with rasterio.open(
                root / f"{kind}_{bands}_{i}.tif",
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
        rows.append(f"IMG_{bands}_{i}.tif,MSK_{bands}_{i}.tif")
    csv = root / f"val_{bands}.csv"
    csv.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return csv


def ours(model: Path, raster: Path, out: Path) -> np.ndarray:
    detect(DetectConfig(inputs=[raster], output=out, model=model, indices=True, overwrite=True))
    with rasterio.open(out) as ds:
        return ds.read(1).astype(np.int64)


def deepness(model: Path, raster: Path, out: Path) -> tuple[str, np.ndarray | None]:
    done = subprocess.run(
        [
            "/usr/bin/python3",
            str(DRIVER),
            str(DEEPNESS_SRC),
            sysconfig.get_paths()["purelib"],
            model,
            raster,
            out,
        ],
        capture_output=True,
        text=True,
        env={"QT_QPA_PLATFORM": "offscreen", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())},
        check=False,
        timeout=600,
    )
    if done.returncode != 0:
        return f"crashed: {done.stderr.strip().splitlines()[-1][:120]}", None
    info = json.loads(done.stdout.strip().splitlines()[-1])
    if not info.get("loads"):
        return f"no: {info.get('error', info.get('skip'))}", None
    planes = np.load(out).astype(np.int64) - 1
    note = f"yes ({info['outputs']} output(s), thresh {info['threshold']}, median {info['median_blur']})"
    return note, planes[0]


def geodeep_map(model: Path, raster: Path) -> tuple[str, np.ndarray | None]:
    import geodeep

    try:
        mask = geodeep.run(str(raster), str(model), output_type="raw")
    except Exception as exc:  # noqa: BLE001 - what a GeoDeep user sees
        return f"no: {type(exc).__name__}: {str(exc)[:100]}", None
    return "yes", mask.astype(np.int64)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=None, help="Markdown table file")
    parser.add_argument("--size", type=int, default=320, help="raster edge in pixels")
    args = parser.parse_args()
    rows: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for bands in (("R", "G", "B"), ("R", "G", "B", "NIR", "E")):
            n = len(bands)
            ckpt = train(bands, root)
            raster = write_raster(root / f"ortho_{n}.tif", n, args.size, seed=7)
            tools = tuple(QgisTool) if n == 3 else (QgisTool.DEEPNESS,)
            codes = np.asarray([c.code for c in class_preset("flair15")], dtype=np.uint8)
            val = validation_csv(root, n, codes)
            setups = {
                "fixed, logits": {"fp16": True, "int8": True, "calibration": (val,), "calibration_tiles": 24},
                "dynamic, 3 heads": {
                    "dynamic_hw": True,
                    "heads": (Head.LOGITS, Head.PROBABILITIES, Head.CLASSES),
                },
            }
            for label, kw in setups.items():
                out = root / f"{n}-{label.split(',')[0]}"
                cfg = ExportConfig(
                    checkpoint=ckpt, out_dir=out, parity_tiles=6, validation=val, qgis_tools=tools, **kw
                )
                result = export_model(cfg, progress=False)
                for precision, path in result.onnx.items():
                    reference = ours(path, raster, root / "ours.tif")
                    files = [("as exported", path)] + [
                        (f"--for {t.value}", variant_path(path, t)) for t in tools
                    ]
                    for kind, file in files:
                        cells = []
                        for tool in ("deepness", "geodeep"):
                            if tool == "deepness":
                                note, got = deepness(file, raster, root / "deepness.npy")
                            else:
                                note, got = geodeep_map(file, raster)
                            if got is not None and got.shape == reference.shape:
                                note += f", agreement {(got == reference).mean():.2%}"
                            cells.append(note)
                        rows.append(
                            f"| {n}-band | {precision.value} | {label} | {kind} | {cells[0]} | {cells[1]} |"
                        )
                        print(rows[-1], flush=True)
    header = (
        "| model | precision | export | file | Deepness: loads, agreement | GeoDeep: loads, agreement |\n"
        "|---|---|---|---|---|---|\n"
    )
    table = header + "\n".join(rows) + "\n"
    if args.out is not None:
        args.out.write_text(table, encoding="utf-8")
    print(table)


if __name__ == "__main__":
    main()
