from __future__ import annotations

import json

import pytest

from flair_deploy.cli import main

FAST = ["--min-time", "0", "--min-iters", "2", "--warmup", "1", "--parity-tiles", "1"]


def _run(argv, capsys):
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def _one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--model", "missing.onnx"], "does not exist"),
        (["--model", "model.txt"], "suffix"),
        (["--model", "m.onnx", "--batch", "1,x"], "--batch"),
        (["--model", "m.onnx", "--backends", "openvino"], "backends"),
        (["--model", "m.onnx", "--json", "no/such/folder/b.json"], "does not exist"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = _run(["benchmark", *argv], capsys)
    assert code == 1
    assert needle in _one_line_error(err)
    assert not (tmp_path / "no").exists()


def test_nothing_measurable_exits_1_with_the_reasons(tiny_artifacts, capsys, tmp_path):
    _, onnx_path = tiny_artifacts
    out = tmp_path / "b.json"
    code, stdout, err = _run(
        ["benchmark", "-m", str(onnx_path), "--backends", "tensorrt", "--json", str(out), *FAST], capsys
    )
    assert code == 1
    assert "nothing could be measured" in _one_line_error(err)
    assert not out.exists()
    assert "flair-deploy[tensorrt]" in stdout  # the reason is printed as text, not eaten as rich markup


def test_writes_json_markdown_and_plot(tiny_artifacts, capsys, tmp_path):
    _, onnx_path = tiny_artifacts
    paths = {ext: tmp_path / f"bench.{ext}" for ext in ("json", "md", "png")}
    code, stdout, err = _run(
        [
            "benchmark",
            "-m",
            str(onnx_path),
            "--backends",
            "onnxruntime,torch",
            "--precisions",
            "fp32",
            "--batch",
            "1",
            "--json",
            str(paths["json"]),
            "--markdown",
            str(paths["md"]),
            "--plot",
            str(paths["png"]),
            "--peak-gflops",
            "205",
            *FAST,
        ],
        capsys,
    )
    assert code == 0, err
    assert "onnxruntime" in stdout and "tiles/s" in stdout
    report = json.loads(paths["json"].read_text())
    ok = [r for r in report["rows"] if r["status"] == "ok"]
    assert [(r["backend"], r["batch"]) for r in ok] == [("onnxruntime", 1)]
    assert report["ceilings"][0]["gflops"] == 205.0
    skipped = [r for r in report["rows"] if r["status"] == "skipped"]
    assert skipped and all(r["reason"] for r in skipped)  # torch: no checkpoint given
    assert "| onnxruntime | fp32 | cpu | 1 | 64 |" in paths["md"].read_text()
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"


def test_help_teaches_with_examples(capsys):
    code, out, _ = _run(["benchmark", "--help"], capsys)
    assert code == 0
    assert "flair-deploy benchmark --model" in out and "--raster" in out


def test_null_backend_row_measures_the_host_ceiling_and_is_never_a_default(tiny_artifacts, capsys, tmp_path):
    from flair_deploy.sample import make_sample_ortho

    _, onnx_path = tiny_artifacts
    raster = make_sample_ortho(tmp_path / "o.tif", width=256, height=256, seed=0)
    out = tmp_path / "b.json"
    argv = ["benchmark", "-m", str(onnx_path), "--backends", "null", "--raster", str(raster)]
    code, _, err = _run([*argv, "--batch", "2", "--json", str(out), *FAST], capsys)
    assert code == 0, err
    rows = json.loads(out.read_text())["rows"]
    e2e = [r for r in rows if r["mode"] == "end-to-end"]
    assert [r["backend"] for r in rows] == ["null", "null"] and e2e[0]["status"] == "ok"
    assert e2e[0]["stages"]["stitch_cpu"] > 0 and e2e[0]["argmax_agreement"] is None
    assert rows[0]["achieved_gflops"] is None  # no network: no FLOPs to claim
    from flair_deploy.benchmarking.plan import BenchmarkConfig

    assert "null" not in BenchmarkConfig(models=(onnx_path,)).backends
