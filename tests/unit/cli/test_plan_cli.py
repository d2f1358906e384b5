"""`flair-deploy plan`: the table, wall times from a rate or a benchmark report, JSON, one-line errors."""

import json

import numpy as np
import pytest

from flair_deploy.artifacts import save_sidecar
from flair_deploy.benchmarking.fingerprint import collect_fingerprint
from flair_deploy.benchmarking.report import BenchmarkReport, Mode, Row, Status, write_json
from flair_deploy.cli import main
from flair_deploy.description import Precision
from flair_deploy.inference.capacity import plan_capacity


@pytest.fixture
def engine(tmp_path, tiny_description):
    """A self-describing model that needs no runtime to describe: an engine and its JSON sidecar."""
    path = tmp_path / "model" / "tiny.fp16.engine"
    path.parent.mkdir()
    path.write_bytes(b"serialised plan")
    save_sidecar(path, tiny_description)
    return path


@pytest.fixture
def rasters(tmp_path, write_geotiff):
    folder = tmp_path / "tiles"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(150, 1000), (150, 1000), (90, 80)]):
        write_geotiff(rng.integers(0, 256, (5, h, w)).astype(np.uint8), f"tiles/t{i}.tif")
    return folder


def _run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    cap = capsys.readouterr()
    return exc.value.code, cap.out, cap.err


def _line(out, label):
    return next(line for line in out.splitlines() if line.strip().startswith(label))


def test_plan_prints_the_counts_and_says_how_to_get_wall_times(rasters, engine, tiny_description, capsys):
    code, out, err = _run(["plan", str(rasters), "-m", str(engine), "--chunk-mb", "2"], capsys)
    assert code == 0, err
    plan = plan_capacity([rasters], tiny_description, chunk_mb=2)
    assert plan.chunks > len(plan.rasters)  # the wide rasters are cut: boundary tiles are duplicated
    assert _line(out, "rasters").split() == ["rasters", "3"]
    assert _line(out, "grid tiles").split()[-1] == f"{plan.grid_tiles:,}"
    assert f"{plan.tiles:,} (+{100 * plan.overhead:.1f} %" in _line(out, "tiles computed")
    assert _line(out, "chunks").split()[1] == str(plan.chunks) and "within 2 MiB" in _line(out, "chunks")
    assert "km²" in _line(out, "area") and "KiB (class maps" in _line(out, "output")
    assert "blend tile=64 overlap=16" in out
    assert "--tiles-per-s N" in out and "--benchmark FILE" in out
    assert err == ""


def test_wall_times_per_worker_count_and_json(rasters, engine, tiny_description, tmp_path, capsys):
    path = tmp_path / "plan.json"
    code, out, err = _run(
        [
            "plan",
            str(rasters),
            "-m",
            str(engine),
            "--stitching",
            "crop",
            "--margin",
            "16",
            "--tiles-per-s",
            "0.01",
            "--workers",
            "4,1",
            "--workers",
            "16",
            "--json",
            str(path),
        ],
        capsys,
    )
    assert code == 0, err
    data = json.loads(path.read_text(encoding="utf-8"))
    plan = plan_capacity([rasters], tiny_description, stitching="crop", margin=16)
    assert data["tiles"] == plan.tiles and data["chunks"] == plan.chunks and data["rasters"] == 3
    assert [w["workers"] for w in data["wall_times"]] == [1, 4, 16]
    assert data["wall_times"][0]["seconds"] == pytest.approx(plan.tiles / 0.01)
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert [r[0] for r in rows] == ["1", "4", "16"]
    assert " ".join(rows[0][2:]) == data["wall_times"][0]["eta"]
    assert "h" in rows[0] and "min" in rows[0]
    assert "crop tile=64 margin=16" in out and f"wrote {path}" in out
    assert "16 workers but" in err  # more workers than chunks: said, on stderr


def _bench(tmp_path, rows):
    path = tmp_path / "bench.json"
    report = BenchmarkReport(fingerprint=collect_fingerprint("cpu"), ceilings=[], settings={}, rows=rows)
    write_json(report, path)
    return path


def _row(mode, tiles_per_s, tile=64):
    return Row(
        mode=mode,
        model="tiny.fp32.onnx",
        backend="onnxruntime",
        precision=Precision.FP32,
        variant="cpu",
        device="cpu",
        batch=1,
        tile=tile,
        status=Status.OK,
        tiles_per_s=tiles_per_s,
    )


def test_the_benchmark_report_gives_the_rate_and_says_which_row(rasters, engine, tmp_path, capsys):
    bench = _bench(tmp_path, [_row(Mode.MODEL_ONLY, 40.0), _row(Mode.END_TO_END, 25.0)])
    code, out, err = _run(["plan", str(rasters), "-m", str(engine), "--benchmark", str(bench)], capsys)
    assert code == 0, err
    assert "at 25.0 tiles/s per worker (best end-to-end row of bench.json" in out
    model_only = _bench(tmp_path, [_row(Mode.MODEL_ONLY, 40.0, tile=512)])
    code, out, err = _run(["plan", str(rasters), "-m", str(engine), "--benchmark", str(model_only)], capsys)
    assert code == 0 and "best model-only row" in out
    assert "model-only throughput" in err and "measured on 512-px tiles" in err


def test_a_preset_alone_gives_the_tiling(rasters, capsys):
    code, out, err = _run(["plan", str(rasters), "--preset", "flair-inc-rgbie-15cl-resnet34-unet"], capsys)
    assert code == 0, err
    assert "blend tile=512 overlap=128 border=16" in out


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ([], "no model given"),
        (["--preset", "nope"], "unknown preset 'nope'"),
        (
            ["--preset", "flair-inc-rgbie-15cl-resnet34-unet", "--tiles-per-s", "5", "--benchmark", "b.json"],
            "not both",
        ),
        (["--preset", "flair-inc-rgbie-15cl-resnet34-unet", "--tiles-per-s", "0"], "--tiles-per-s 0"),
        (["--preset", "flair-inc-rgbie-15cl-resnet34-unet", "--workers", "2,x"], "--workers '2,x'"),
        (["--preset", "flair-inc-rgbie-15cl-resnet34-unet", "--tile", "500"], "output stride"),
        (
            ["--preset", "flair-inc-rgbie-15cl-resnet34-unet", "--benchmark", "missing.json"],
            "cannot read benchmark report",
        ),
    ],
)
def test_user_errors_are_one_line_and_exit_1(extra, match, rasters, capsys):
    code, _, err = _run(["plan", str(rasters), *extra], capsys)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], err


def test_a_missing_raster_is_one_line(tmp_path, capsys):
    code, _, err = _run(
        ["plan", str(tmp_path / "nope.tif"), "--preset", "flair-inc-rgb-12cl-resnet34-unet"], capsys
    )
    assert code == 1 and err.startswith("error: ") and "does not exist" in err
