"""The runtime install: `pip install flair-deploy` alone runs detect, inspect and benchmark on ONNX models.

Each check runs the real CLI in a fresh interpreter where PyTorch, Lightning, SMP, onnx, matplotlib...
cannot be imported (``sys.modules[name] = None``, which is what a missing package looks like to both
``import`` and ``importlib.util.find_spec``). `make runtime-check` does the same in a real bare venv.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

import flair_deploy
from flair_deploy._optional import EXTRAS
from flair_deploy.description import ArchitectureSpec, ModelDescription, class_preset

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parents[2]
# Everything the extras bring, including what they pull in without our code importing it.
BLOCKED = sorted(
    {m for modules in EXTRAS.values() for m in modules}
    | {"torchvision", "timm", "torchmetrics", "pytorch_lightning", "lightning_fabric"}
)

_RUNNER = """
import contextlib, io, json, sys, traceback
blocked, commands = json.loads(sys.argv[1]), json.loads(sys.argv[2])
for name in blocked:
    sys.modules[name] = None  # import raises ModuleNotFoundError, find_spec returns None
from flair_deploy.cli import main
results = []
for argv in commands:
    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        except BaseException:
            code = "traceback"
            err.write(traceback.format_exc())
    results.append({"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()})
print(json.dumps(results))
"""


def run_without_torch(*commands: list[str], cwd: Path) -> list[dict[str, object]]:
    """Run CLI *commands* in one interpreter that cannot import any module of the extras."""
    src = str(Path(flair_deploy.__file__).resolve().parents[1])
    proc = subprocess.run(
        [sys.executable, "-c", _RUNNER, json.dumps(BLOCKED), json.dumps(list(commands))],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={"PYTHONPATH": src, "PATH": "/usr/bin:/bin", "HOME": str(cwd), "COLUMNS": "200"},
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr  # the CLI itself imports without torch
    results: list[dict[str, object]] = json.loads(proc.stdout.splitlines()[-1])
    return results


def one_line_error(result: dict[str, object]) -> str:
    assert result["code"] == 1, result
    lines = str(result["stderr"]).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result["stderr"]
    return lines[0]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A tiny ONNX model (a 1x1 convolution, stamped with a description) and a 5-band GeoTIFF."""
    import rasterio
    from rasterio.transform import from_origin

    root = tmp_path_factory.mktemp("runtime")
    desc = ModelDescription(
        name="tiny",
        tile_size=64,
        overlap=16,
        architecture=ArchitectureSpec(arch="unet", encoder="resnet18", encoder_depth=5),
        classes=class_preset("flair15"),
    )
    rng = np.random.default_rng(0)
    weight = rng.normal(0, 0.05, (desc.num_classes, desc.in_channels, 1, 1)).astype(np.float32)
    h = onnx.helper
    graph = h.make_graph(
        [h.make_node("Conv", ["image", "weight"], ["logits"])],
        "tiny",
        [h.make_tensor_value_info("image", onnx.TensorProto.FLOAT, ["n", desc.in_channels, "h", "w"])],
        [h.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["n", desc.num_classes, "h", "w"])],
        [onnx.numpy_helper.from_array(weight, "weight")],
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    model.ir_version = 8
    h.set_model_props(model, desc.to_metadata_props())
    onnx.checker.check_model(model)
    onnx.save(model, str(root / "tiny.onnx"))
    (root / "tiny.ckpt").write_bytes(b"not read: the torch backend is refused before")

    data = rng.integers(0, 255, (5, 150, 170), dtype=np.uint8)
    profile = {"driver": "GTiff", "width": 170, "height": 150, "count": 5, "dtype": "uint8"}
    with rasterio.open(
        root / "ortho.tif", "w", crs="EPSG:2154", transform=from_origin(650000, 6860000, 0.2, 0.2), **profile
    ) as dst:
        dst.write(data)
    return root


# Every command of these tests, run in ONE torch-free interpreter (a fresh one costs seconds).
COMMANDS = {
    "detect": ["detect", "ortho.tif", "-m", "tiny.onnx", "-o", "map.tif", "--overwrite"],
    "bench": [
        "benchmark",
        "-m",
        "tiny.onnx",
        "--raster",
        "ortho.tif",
        "--batch",
        "1",
        "--json",
        "bench.json",
    ],
    "bench_synthetic": ["benchmark", "-m", "tiny.onnx", "--batch", "1"],
    "inspect": ["inspect", "tiny.onnx", "--json"],
    "train": ["train", "--sample-data", "--out", "runs"],
    "evaluate": ["evaluate", "tiny.ckpt", "--csv", "test.csv", "--out", "eval"],
    "export": ["export", "tiny.ckpt", "-o", "models"],
    "demo": ["demo", "--out", "demo"],
    "detect_ckpt": ["detect", "ortho.tif", "-m", "tiny.ckpt", "-o", "ckpt-map.tif"],
    "inspect_ckpt": ["inspect", "tiny.ckpt"],
    "plot": ["benchmark", "-m", "tiny.onnx", "--raster", "ortho.tif", "--json", "b.json", "--plot", "b.png"],
}


@pytest.fixture(scope="module")
def ran(world) -> dict[str, dict[str, object]]:
    return dict(zip(COMMANDS, run_without_torch(*COMMANDS.values(), cwd=world), strict=True))


def test_detect_and_benchmark_run_on_onnx_without_torch(world, ran):
    import rasterio

    detect, bench = ran["detect"], ran["bench"]
    assert detect["code"] == 0, detect
    with rasterio.open(world / "map.tif") as src:
        assert (src.count, src.height, src.width) == (1, 150, 170)
        assert src.crs.to_epsg() == 2154
        classes = src.read(1)
    active = {c.code for c in class_preset("flair15") if c.active}
    assert set(np.unique(classes)) <= active

    assert bench["code"] == 0, bench
    report = json.loads((world / "bench.json").read_text())
    rows = report["rows"]
    ran_rows = [r for r in rows if r["status"] == "ok"]
    assert ran_rows and all(r["backend"] == "onnxruntime" for r in ran_rows)
    torch_rows = [r for r in rows if r["backend"] == "torch"]
    assert torch_rows and all(r["status"] == "skipped" for r in torch_rows)
    assert report["fingerprint"]["versions"]["torch"] is None


def test_benchmark_on_synthetic_tiles_without_torch(ran):
    assert ran["bench_synthetic"]["code"] == 0, ran["bench_synthetic"]


def test_inspect_reads_onnx_without_torch(ran):
    inspect = ran["inspect"]
    assert inspect["code"] == 0, inspect
    assert "tiny" in str(inspect["stdout"])


def test_commands_that_need_an_extra_say_which_in_one_line(world, ran):
    assert "pip install 'flair-deploy[train]'" in one_line_error(ran["train"])
    assert "pip install 'flair-deploy[train]'" in one_line_error(ran["evaluate"])
    assert "pip install 'flair-deploy[export]'" in one_line_error(ran["export"])
    assert "pip install 'flair-deploy[export]'" in one_line_error(ran["demo"])
    assert "pip install 'flair-deploy[train]'" in one_line_error(ran["detect_ckpt"])
    assert "pip install 'flair-deploy[train]'" in one_line_error(ran["inspect_ckpt"])
    assert "--plot needs matplotlib" in one_line_error(ran["plot"])  # refused before measuring
    outputs = ("runs", "eval", "models", "demo", "ckpt-map.tif", "b.json", "b.png")
    assert not any((world / name).exists() for name in outputs)


def test_extras_table_matches_pyproject():
    """The modules named in the install errors are the distributions pyproject.toml lists."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = project["optional-dependencies"]

    def modules(requirements: list[str]) -> tuple[str, ...]:
        names = [r.split(">")[0].split("=")[0].split("[")[0].strip() for r in requirements]
        return tuple(n.replace("-", "_") for n in names if n != "flair-deploy")

    for extra, listed in EXTRAS.items():
        assert modules(extras[extra]) == listed, extra
    base = modules(project["dependencies"])
    assert "onnxruntime" in base
    assert not {"torch", "lightning", "onnx", "matplotlib"} & set(base)
