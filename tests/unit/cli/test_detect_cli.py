import numpy as np
import pytest
import rasterio

from flair_deploy.cli import main
from flair_deploy.inference import backends
from tests.fakes import EchoBackend


@pytest.fixture
def fake_backend(monkeypatch, tiny_description):
    """Replace model loading by an EchoBackend and record what detect asked for."""
    asked = {}

    def create(name, artifact, *, device="cpu", precision=None, options=None, preset=None):
        asked.update(name=name, artifact=artifact, device=device, preset=preset, options=options)
        return EchoBackend(tiny_description)

    monkeypatch.setattr(backends, "create_backend", create)
    return asked


@pytest.fixture
def model_file(tmp_path):
    p = tmp_path / "model.onnx"
    p.write_bytes(b"fake model")
    return p


def _run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    cap = capsys.readouterr()
    return exc.value.code, cap.out, cap.err


def _ok(argv, capsys):
    try:
        main(argv)
    except SystemExit as exc:  # standalone mode: success is SystemExit(0)
        if exc.code not in (0, None):
            raise AssertionError(capsys.readouterr().err) from exc
    return capsys.readouterr()


def test_detect_writes_a_map_and_reports_a_summary(write_geotiff, tmp_path, model_file, fake_backend, capsys):
    src = write_geotiff(np.random.default_rng(0).integers(0, 256, (5, 90, 80)).astype(np.uint8))
    out = tmp_path / "map.tif"
    cap = _ok(
        [
            "detect",
            str(src),
            "-m",
            str(model_file),
            "-o",
            str(out),
            "--quiet",
            "--backend-option",
            "threads=2",
            "--confidence",
        ],
        capsys,
    )
    assert out.exists() and (tmp_path / "map_confidence.tif").exists()
    assert "Mpx/s" in cap.out and "km²" in cap.out and "peak RSS" in cap.out
    assert fake_backend["options"] == {"threads": 2}
    with rasterio.open(out) as ds:
        assert ds.colormap(1)[1][:3] == (0xDB, 0x0E, 0x9A)


def test_help_teaches_with_examples(capsys):
    code, out, _ = _run(["detect", "--help"], capsys)
    assert code in (0, None)
    for text in ("--stitching", "--indices", "--resume", "flair-deploy detect", "docs/detect.md"):
        assert text in out


def _bad_cases(write_geotiff, tmp_path):
    three = write_geotiff(np.zeros((3, 40, 40), np.uint8), "rgb.tif")
    good = write_geotiff(np.zeros((5, 40, 40), np.uint8), "good.tif")
    f64 = write_geotiff(np.zeros((5, 40, 40), np.float64), "f64.tif")
    nocrs = write_geotiff(np.zeros((5, 40, 40), np.uint8), "nocrs.tif", crs=None)
    text = tmp_path / "notes.tif"
    text.write_text("not a raster")
    # A "folder" that is a file: unwritable even for root (tests may run as root in CI).
    locked = tmp_path / "locked"
    locked.write_text("a file, not a folder")
    return {
        "not a raster": ([str(text)], "not a raster"),
        "missing file": ([str(tmp_path / "nope.tif")], "does not exist"),
        "wrong band count": ([str(three)], "band"),
        "unsupported dtype": ([str(f64)], "data type"),
        "bands mismatch": ([str(good), "--bands", "1,2"], "--bands"),
        "bands not numbers": ([str(good), "--bands", "r,g"], "--bands"),
        "tile/overlap": ([str(good), "--tile", "64", "--overlap", "40"], "overlap"),
        "tile not multiple": ([str(good), "--tile", "70"], "stride"),
        "no crs": ([str(nocrs)], "no CRS"),
        "bad stitching": ([str(good), "--stitching", "average"], "stitching"),
        "unwritable": ([str(good), "-o", str(locked / "x.tif")], "not writable"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "not a raster",
        "missing file",
        "wrong band count",
        "unsupported dtype",
        "bands mismatch",
        "bands not numbers",
        "tile/overlap",
        "tile not multiple",
        "no crs",
        "bad stitching",
        "unwritable",
    ],
)
def test_bad_input_exits_1_with_one_line_and_no_output(
    case, write_geotiff, tmp_path, model_file, fake_backend, capsys
):
    args, match = _bad_cases(write_geotiff, tmp_path)[case]
    out = tmp_path / "outdir" / "map.tif"
    argv = ["detect", *args, "-m", str(model_file), "--quiet"]
    if "-o" not in args:
        argv += ["-o", str(out)]
    code, _, err = _run(argv, capsys)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and match in lines[0], err
    assert not (tmp_path / "outdir").exists()


def test_existing_output_needs_overwrite(write_geotiff, tmp_path, model_file, fake_backend, capsys):
    src = write_geotiff(np.zeros((5, 40, 40), np.uint8))
    out = tmp_path / "map.tif"
    out.write_bytes(b"x")
    code, _, err = _run(["detect", str(src), "-m", str(model_file), "-o", str(out), "-q"], capsys)
    assert code == 1 and "--overwrite" in err and out.read_bytes() == b"x"
    _ok(["detect", str(src), "-m", str(model_file), "-o", str(out), "-q", "--overwrite"], capsys)
    with rasterio.open(out) as ds:
        assert ds.width == 40


def test_ign_detect_config_is_accepted_as_is(write_geotiff, tmp_path, model_file, fake_backend, capsys):
    src = write_geotiff(np.random.default_rng(0).integers(0, 256, (5, 70, 70)).astype(np.uint8))
    cfg = tmp_path / "flair-1-config-detect.yaml"
    cfg.write_text(
        f"""
output_path: {tmp_path}/pred
output_name: zone_a
input_img_path: {src}
channels: [1, 2, 3, 4, 5]
img_pixels_detection: 64
margin: 16
output_type: "argmax"
n_classes: 19
model_weights: {model_file}
model_framework:
    model_provider: SegmentationModelsPytorch
    HuggingFace:
        org_model:
    SegmentationModelsPytorch:
        encoder_decoder: resnet34_unet
batch_size: 4
num_worker: 2
use_gpu: false
write_dataframe: false
norma_task:
  - norm_type: custom
    norm_means: [105.08, 110.87, 101.82, 106.38, 53.26]
    norm_stds: [52.17, 45.38, 44.0, 39.69, 79.3]
"""
    )
    cap = _ok(
        ["detect", "--config", str(cfg), "--preset", "flair-inc-rgbie-15cl-resnet34-unet", "-q"], capsys
    )
    out = tmp_path / "pred" / "zone_a.tif"
    assert out.exists()
    assert fake_backend["preset"] == "flair-inc-rgbie-15cl-resnet34-unet"
    # channels, n_classes, norma_task and model_framework describe the weights, and agree with the preset
    assert "model_framework" not in cap.err and "norma_task" not in cap.err
    with rasterio.open(out) as ds:
        tags = ds.tags()
        assert tags["CLASS_VALUES"] == "logit indices" and tags["STITCHING"] == "crop tile=64 margin=16"
        assert ds.read(1).max() < 19


def test_ign_config_with_an_unknown_key_is_an_error(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("input_img_path: a.tif\nimg_pixels_detection: 512\nbogus: 1\n")
    code, _, err = _run(["detect", "--config", str(cfg)], capsys)
    assert code == 1 and "bogus" in err and len(err.strip().splitlines()) == 1
