"""Capacity planning: the planned counts are detect's, from headers only, with honest wall times."""

import importlib
import json
import subprocess
import sys

import numpy as np
import pytest
import rasterio

from flair_deploy.benchmarking.fingerprint import collect_fingerprint
from flair_deploy.benchmarking.report import BenchmarkReport, Mode, Row, Status, write_json
from flair_deploy.description import Precision
from flair_deploy.errors import ConfigError, InputDataError
from flair_deploy.inference import DetectConfig, capacity, run_detection
from flair_deploy.inference.capacity import (
    Throughput,
    format_duration,
    plan_capacity,
    throughput_from_report,
)
from tests.fakes import EchoBackend

# The module, not the function the package re-exports under the same name.
detect_module = importlib.import_module("flair_deploy.inference.detect")


def _ortho(write_geotiff, h, w, name, seed=0, **kw):
    data = np.random.default_rng(seed).integers(0, 256, (5, h, w)).astype(np.uint8)
    return write_geotiff(data, name, **kw)


@pytest.fixture
def chunk_count(monkeypatch):
    """Record the chunks detect cuts each raster into (RasterRun.chunks of every run_raster call)."""
    seen: list[int] = []
    real = detect_module.run_raster

    def spy(*args, **kwargs):
        run = real(*args, **kwargs)
        seen.append(run.chunks)
        return run

    monkeypatch.setattr(detect_module, "run_raster", spy)
    return seen


@pytest.mark.parametrize(
    ("tiling", "chunk_mb"),
    [
        ({"stitching": "blend"}, 2),  # 256-px strips: several chunks, duplicated boundary tiles
        ({"stitching": "blend", "tile": 32, "overlap": 8}, 256),  # one chunk per raster
        ({"stitching": "crop", "margin": 16}, 1),  # IGN's grid, several chunks
    ],
    ids=["blend-strips", "blend-one-chunk", "crop-strips"],
)
def test_planned_tiles_and_chunks_are_what_detect_computes(
    tiling, chunk_mb, tiny_description, write_geotiff, tmp_path, chunk_count
):
    _ortho(write_geotiff, 70, 2000, "a.tif", seed=1)
    _ortho(write_geotiff, 150, 700, "b.tif", seed=2)
    folder = tmp_path
    plan = plan_capacity([folder], tiny_description, chunk_mb=chunk_mb, **tiling)

    cfg = DetectConfig(
        inputs=(folder,),
        output=tmp_path / "maps",
        overviews=False,
        chunk_mb=chunk_mb,
        tile_size=tiling.get("tile"),
        overlap=tiling.get("overlap"),
        margin=tiling.get("margin"),
        stitching=tiling["stitching"],
    )
    with EchoBackend(tiny_description) as backend:
        summary = run_detection(backend, cfg)

    assert summary.tiles_skipped == 0  # no nodata: every planned tile is computed
    assert plan.tiles == summary.tiles_inferred
    assert plan.grid_tiles == summary.tiles
    assert plan.chunks == sum(chunk_count)
    assert [r.chunks for r in plan.rasters] == chunk_count
    assert plan.pixels == summary.pixels and len(plan.rasters) == summary.rasters == 2
    assert plan.km2 == pytest.approx(summary.km2)
    assert plan.stitching == summary.stitching


def test_chunk_boundary_duplicates_are_the_overhead(tiny_description, write_geotiff):
    src = _ortho(write_geotiff, 100, 1000, "wide.tif")
    strips = plan_capacity([src], tiny_description, chunk_mb=2)
    whole = plan_capacity([src], tiny_description)
    assert strips.chunks > 1 and whole.chunks == 1
    assert strips.grid_tiles == whole.grid_tiles == whole.tiles
    assert strips.tiles > strips.grid_tiles
    assert strips.overhead == pytest.approx(strips.tiles / strips.grid_tiles - 1) and whole.overhead == 0


def test_headers_only_and_one_grid_per_raster_size(tiny_description, write_geotiff, tmp_path, monkeypatch):
    for i in range(4):
        _ortho(write_geotiff, 90, 130, f"tile_{i}.tif", origin=(650000.0 + 26 * i, 6860000.0))
    _ortho(write_geotiff, 64, 64, "small.tif")
    grids = []
    real = capacity.make_grid

    def counting(*args, **kwargs):
        grids.append(args[:2])
        return real(*args, **kwargs)

    def no_pixels(*args, **kwargs):
        raise AssertionError("plan read pixels")

    monkeypatch.setattr(capacity, "make_grid", counting)
    monkeypatch.setattr(rasterio.io.DatasetReader, "read", no_pixels)
    monkeypatch.setattr(rasterio.io.DatasetReader, "read_masks", no_pixels)
    plan = plan_capacity([tmp_path], tiny_description)
    assert len(plan.rasters) == 5 and sorted(grids) == [(64, 64), (130, 90)]
    assert len({(r.grid_tiles, r.tiles, r.chunks) for r in plan.rasters if r.path.name != "small.tif"}) == 1


def test_inputs_are_expanded_as_detect_does(tiny_description, write_geotiff, tmp_path):
    a = _ortho(write_geotiff, 64, 64, "a.tif")
    b = _ortho(write_geotiff, 64, 64, "b.tif")
    (tmp_path / ".a.tif.123.part").write_bytes(b"temporary of a running detect")
    vrt = tmp_path / "mosaic.vrt"
    from rasterio.shutil import copy

    copy(a, vrt, driver="VRT")
    plan = plan_capacity([tmp_path, vrt], tiny_description)
    assert [r.path.name for r in plan.rasters] == ["a.tif", "b.tif", "mosaic.vrt", "mosaic.vrt"]
    assert plan.rasters[0].path == a and plan.rasters[1].path == b


def test_area_and_output_size_come_from_the_header(tiny_description, write_geotiff):
    src = _ortho(write_geotiff, 500, 400, "o.tif", res=0.2)
    plan = plan_capacity([src], tiny_description)
    assert plan.km2 == pytest.approx(500 * 400 * 0.04 / 1e6)
    both = plan_capacity([src], tiny_description, probabilities=True, confidence=True)
    assert 0 < plan.output_bytes < both.output_bytes
    assert both.probabilities and both.confidence and not plan.probabilities


def test_wall_times_scale_linearly_with_workers(tiny_description, write_geotiff):
    src = _ortho(write_geotiff, 300, 300, "o.tif")
    plan = plan_capacity([src], tiny_description, throughput=Throughput(2.0, "test"), workers=(1, 4))
    assert [w.workers for w in plan.wall_times] == [1, 4]
    assert plan.wall_times[0].seconds == pytest.approx(plan.tiles / 2.0)
    assert plan.wall_times[1].seconds == pytest.approx(plan.tiles / 8.0)
    assert not plan_capacity([src], tiny_description).wall_times  # no throughput: counts only


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.2, "< 1 s"),
        (42.4, "42 s"),
        (45 * 60, "45 min"),
        (26 * 3600 + 3 * 60 + 10, "26 h 03 min"),
        (111 * 3600 + 5 * 60, "111 h 05 min (4.6 days)"),
    ],
)
def test_durations_read_in_hours_and_minutes(seconds, text):
    assert format_duration(seconds) == text


def test_notes_flag_what_detect_treats_apart(tiny_description, write_geotiff):
    ok = _ortho(write_geotiff, 64, 64, "ok.tif")
    no_crs = _ortho(write_geotiff, 64, 64, "nocrs.tif", crs=None)
    coarse = _ortho(write_geotiff, 64, 64, "coarse.tif", res=0.5)
    holes = _ortho(write_geotiff, 64, 64, "holes.tif", nodata=0)
    rgb = write_geotiff(np.zeros((3, 64, 64), np.uint8), "rgb.tif")
    plan = plan_capacity(
        [ok, no_crs, coarse, holes, rgb],
        tiny_description,
        throughput=Throughput(5.0, "bench", tile=512, end_to_end=False),
        workers=(1, 100),
    )
    text = "\n".join(plan.notes)
    for expected in (
        "1 raster(s) have no CRS",
        "1 raster(s) are not at the model's 0.2 m GSD",
        "1 raster(s) have nodata",
        "1 raster(s) have fewer bands than the model's 5",
        "measured on 512-px tiles but the plan uses 64-px",
        "model-only throughput",
        "100 workers but 5 chunk(s)",
    ):
        assert expected in text, text
    assert plan.rasters[1].km2 == 0 and plan.rasters[0].km2 > 0
    assert not plan_capacity([ok], tiny_description).notes


def test_the_plan_is_json(tiny_description, write_geotiff):
    src = _ortho(write_geotiff, 64, 64, "o.tif")
    data = json.loads(
        json.dumps(plan_capacity([src], tiny_description, throughput=Throughput(1.0, "t")).as_dict())
    )
    assert data["tiles"] == data["per_raster"][0]["tiles"] and data["wall_times"][0]["workers"] == 1
    assert data["throughput"]["tiles_per_s"] == 1.0 and data["stitching"].startswith("blend tile=64")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"workers": (0, 4)}, "worker counts"),
        ({"workers": ()}, "worker counts"),
        ({"chunk_mb": 0}, "--chunk-mb"),
        ({"tile": 70}, "output stride"),
        ({"stitching": "crop", "overlap": 8}, "overlap applies to stitching='blend' only"),
        ({"stitching": "average"}, "blend, crop"),
        ({"block": 40}, "multiple of 16"),
    ],
)
def test_bad_options_are_one_line_config_errors(kwargs, match, tiny_description, write_geotiff):
    src = _ortho(write_geotiff, 64, 64, "o.tif")
    with pytest.raises(ConfigError, match=match) as exc:
        plan_capacity([src], tiny_description, **kwargs)
    assert "\n" not in str(exc.value)


def test_bad_inputs_are_input_errors(tiny_description, tmp_path):
    with pytest.raises(InputDataError, match="does not exist"):
        plan_capacity([tmp_path / "missing.tif"], tiny_description)
    with pytest.raises(InputDataError, match="holds no raster"):
        plan_capacity([tmp_path], tiny_description)
    fake = tmp_path / "fake.tif"
    fake.write_text("not a raster")
    with pytest.raises(InputDataError, match="not a raster GDAL can read"):
        plan_capacity([fake], tiny_description)


def test_a_throughput_must_be_positive():
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="positive"):
            Throughput(bad, "test")


# ---------------------------------------------------------------------- benchmark reports
def _row(mode, tiles_per_s, *, backend="onnxruntime", status=Status.OK, tile=64):
    return Row(
        mode=mode,
        model="tiny.fp32.onnx",
        backend=backend,
        precision=Precision.FP32,
        variant="cpu",
        device="cpu",
        batch=4,
        tile=tile,
        status=status,
        tiles_per_s=tiles_per_s,
    )


@pytest.fixture(scope="module")
def fingerprint():
    return collect_fingerprint("cpu")


def _report(tmp_path, fingerprint, rows):
    path = tmp_path / "bench.json"
    write_json(BenchmarkReport(fingerprint=fingerprint, ceilings=[], settings={}, rows=rows), path)
    return path


def test_the_best_end_to_end_row_sets_the_throughput(tmp_path, fingerprint):
    path = _report(
        tmp_path,
        fingerprint,
        [
            _row(Mode.MODEL_ONLY, 500.0),
            _row(Mode.END_TO_END, 90.0),
            _row(Mode.END_TO_END, 120.0, tile=32),
            _row(Mode.END_TO_END, 1e5, backend="null"),  # no network: the host ceiling, never a job's rate
            _row(Mode.END_TO_END, 1e6, status=Status.FAILED),
        ],
    )
    tp = throughput_from_report(path)
    assert tp.tiles_per_s == 120.0 and tp.end_to_end and tp.tile == 32
    assert tp.source.startswith("best end-to-end row of bench.json: onnxruntime fp32 cpu")


def test_without_end_to_end_rows_the_best_model_only_row_is_used(tmp_path, fingerprint):
    path = _report(tmp_path, fingerprint, [_row(Mode.MODEL_ONLY, 50.0), _row(Mode.MODEL_ONLY, 80.0)])
    tp = throughput_from_report(path)
    assert tp.tiles_per_s == 80.0 and not tp.end_to_end and "model-only" in tp.source


def test_unusable_reports_are_one_line_input_errors(tmp_path, fingerprint):
    empty = _report(tmp_path, fingerprint, [_row(Mode.END_TO_END, None, status=Status.SKIPPED)])
    not_json = tmp_path / "broken.json"
    not_json.write_text("{", encoding="utf-8")
    other = tmp_path / "other.json"
    other.write_text('{"rows": 3}', encoding="utf-8")
    for path, match in (
        (empty, "no measured row"),
        (not_json, "not valid JSON"),
        (other, "not a flair-deploy benchmark report"),
        (tmp_path / "missing.json", "cannot read benchmark report"),
    ):
        with pytest.raises(InputDataError, match=match) as exc:
            throughput_from_report(path)
        assert "\n" not in str(exc.value)


def test_planning_imports_no_deep_learning_runtime():
    code = (
        "import sys, flair_deploy.inference.capacity, flair_deploy.cli.plan;"
        "print(sorted(m for m in ('torch', 'onnxruntime', 'tensorrt') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]"
