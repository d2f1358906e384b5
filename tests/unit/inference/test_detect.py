import json
import time

import numpy as np
import pytest
import rasterio

from flair_deploy.atomic import temporary_path
from flair_deploy.description import ArchitectureSpec, ModelDescription, class_preset
from flair_deploy.errors import ConfigError, InputDataError, OutputError
from flair_deploy.inference import DetectConfig, run_detection
from tests.fakes import ContextBackend, EchoBackend


@pytest.fixture
def desc(tiny_description):
    return tiny_description


def _raster(write_geotiff, h=150, w=133, seed=0, name="ortho.tif", nodata=None, **kw):
    rng = np.random.default_rng(seed)
    # Smooth-ish field so the classes form regions (and ties are rare).
    base = rng.integers(0, 256, (5, h // 8 + 2, w // 8 + 2)).astype(np.float32)
    data = np.kron(base, np.ones((8, 8), np.float32))[:, :h, :w]
    data = (data + rng.integers(0, 20, (5, h, w))).clip(0, 255).astype(np.uint8)
    return write_geotiff(data, name, nodata=nodata, **kw), data


def _cfg(src, out, **kw):
    kw.setdefault("overviews", False)
    kw.setdefault("block_size", 32)
    return DetectConfig(inputs=(src,), output=out, **kw)


def _read(path):
    with rasterio.open(path) as ds:
        return ds.read(1), ds.profile, ds.tags()


def _masked_argmax_codes(desc, logits):
    active = np.asarray(desc.active_mask)
    idx = np.flatnonzero(active)[logits[:, active].argmax(axis=1)]
    return np.array([c.code for c in desc.classes], np.uint8)[idx]


# ---------------------------------------------------------------------- IGN reference (Appendix A)
def ign_reference(backend, image, P, m, pad_mode="reflect"):
    """Straightforward re-implementation of flair-detect's loops in integer pixels.

    x: outer loop from the west, y: inner loop from the south; patch origins start at -m every P-2m,
    a patch ending past edge+m is shifted to end there; the core [m:P-m] is written in loop order
    (last write wins); output 0-based indices (here converted to codes for comparison).
    """
    h, w = image.shape[1:]
    mode = "reflect" if pad_mode == "reflect" else "constant"
    big = np.pad(image.astype(np.float32), ((0, 0), (P, P), (P, P)), mode=mode)
    out = np.full((h, w), 255, np.uint8)
    step = P - 2 * m
    for x in range(-m, w + m, step):
        if x + P > w + m:
            x = w + m - P
        for u in range(-m, h + m, step):  # u: distance of the patch's south edge from the raster's
            if u + P > h + m:
                u = h + m - P
            top = h - u - P  # pixel row of the patch's north edge
            patch = big[:, top + P : top + 2 * P, x + P : x + 2 * P]
            logits = backend.infer(np.ascontiguousarray(patch[None]))
            cls = _masked_argmax_codes(backend.description, logits)[0]
            r0, r1 = max(top + m, 0), min(top + P - m, h)
            c0, c1 = max(x + m, 0), min(x + P - m, w)
            out[r0:r1, c0:c1] = cls[r0 - top : r1 - top, c0 - x : c1 - x]
    return out


@pytest.mark.parametrize(
    ("h", "w", "pad_mode"), [(150, 133, "reflect"), (97, 170, "constant"), (20, 30, "reflect")]
)
def test_crop_mode_reproduces_ign_grid_pixel_for_pixel(write_geotiff, tmp_path, desc, h, w, pad_mode):
    src, data = _raster(write_geotiff, h, w)
    out = tmp_path / "crop.tif"
    with ContextBackend(desc) as b:
        run_detection(b, _cfg(src, out, stitching="crop", margin=16, pad_mode=pad_mode, batch_size=3))
        ref = ign_reference(b, data, 64, 16, pad_mode)
    got, *_ = _read(out)
    assert (got == ref).all(), f"{(got != ref).sum()} pixels differ"


def test_blend_has_no_seams_with_a_position_independent_model(write_geotiff, tmp_path, desc):
    src, data = _raster(write_geotiff, 150, 133)
    out = tmp_path / "blend.tif"
    with EchoBackend(desc) as b:
        summary = run_detection(b, _cfg(src, out, tile_size=64, overlap=24, confidence=True))
        whole = b.predict_probabilities(data[None].astype(np.float32))[0]
    got, *_ = _read(out)
    expect = _masked_argmax_codes(desc, whole[None])[0]
    assert (got == expect).all()
    conf, *_ = _read(tmp_path / "blend_confidence.tif")
    np.testing.assert_allclose(conf, np.rint(whole.max(axis=0) * 255), atol=1)
    assert summary.tiles_inferred == summary.tiles > 1


def test_raster_smaller_than_a_tile_is_reflect_padded_not_zero_padded(write_geotiff, tmp_path, desc):
    src, data = _raster(write_geotiff, 21, 40)
    out = tmp_path / "small.tif"
    with EchoBackend(desc) as b:
        run_detection(b, _cfg(src, out))
        expect = b.value_to_class(data[0])
    got, *_ = _read(out)
    assert (got == np.array([c.code for c in desc.classes], np.uint8)[expect]).all()


def test_nodata_becomes_255_and_all_nodata_tiles_are_skipped(write_geotiff, tmp_path, desc):
    rng = np.random.default_rng(1)
    data = rng.integers(1, 256, (5, 200, 180)).astype(np.uint8)
    data[:, :100, :] = 0  # top half nodata: whole tile rows skipped
    data[:, 150:160, 20:30] = 0
    src = write_geotiff(data, nodata=0)
    out = tmp_path / "nd.tif"
    with EchoBackend(desc) as b:
        s = run_detection(b, _cfg(src, out, probabilities=True))
    got, prof, *_ = _read(out)
    invalid = (data == 0).all(axis=0)
    assert (got[invalid] == 255).all() and (got[~invalid] != 255).all()
    assert prof["nodata"] == 255
    assert s.tiles_skipped >= 4 and s.tiles_inferred + s.tiles_skipped == s.tiles
    with rasterio.open(tmp_path / "nd_proba.tif") as ds:
        assert (ds.read_masks(1)[invalid] == 0).all()


def test_output_georeferencing_colour_table_and_tags(write_geotiff, tmp_path, desc):
    src, _ = _raster(write_geotiff, 300, 260, crs="EPSG:32631", res=0.2, origin=(500123.4, 4800321.0))
    out = tmp_path / "geo.tif"
    with EchoBackend(desc) as b:
        run_detection(b, _cfg(src, out, overviews=True), model_sha256="ab" * 32)
    with rasterio.open(src) as a, rasterio.open(out) as o:
        assert o.crs == a.crs and o.transform == a.transform and (o.width, o.height) == (a.width, a.height)
        assert o.dtypes[0] == "uint8" and o.nodata == 255
        assert o.colormap(1)[1][:3] == desc.classes[0].rgb()
        assert o.overviews(1) == [2, 4, 8]  # down to one 32-px block
        assert o.tags(ns="rio_overview")["resampling"] == "mode"
        tags = o.tags()
        assert tags["MODEL_SHA256"] == "ab" * 32 and tags["STITCHING"].startswith("blend")
        assert tags["CLASS_1"] == "building"
        assert o.profile["tiled"] and o.profile["compress"] == "deflate"


def test_indices_write_zero_based_logit_indices(write_geotiff, tmp_path, desc):
    src, data = _raster(write_geotiff, 70, 70)
    out = tmp_path / "idx.tif"
    with EchoBackend(desc) as b:
        run_detection(b, _cfg(src, out, indices=True))
        expect = b.value_to_class(data[0])
    got, _, tags = _read(out)
    assert (got == expect).all()
    assert tags["CLASS_VALUES"] == "logit indices"


def test_band_mapping_reorders_raster_bands(write_geotiff, tmp_path, desc):
    src, data = _raster(write_geotiff, 64, 64)
    out = tmp_path / "bands.tif"
    with EchoBackend(desc) as b:
        run_detection(b, _cfg(src, out, bands=(3, 1, 2, 4, 5)))
        expect = b.value_to_class(data[2])  # model band 0 = raster band 3
    got, *_ = _read(out)
    assert (got == np.array([c.code for c in desc.classes], np.uint8)[expect]).all()


def test_existing_output_needs_overwrite(write_geotiff, tmp_path, desc):
    src, _ = _raster(write_geotiff, 40, 40)
    out = tmp_path / "o.tif"
    out.write_bytes(b"precious")
    with EchoBackend(desc) as b, pytest.raises(OutputError, match="--overwrite"):
        run_detection(b, _cfg(src, out))
    assert out.read_bytes() == b"precious"
    with EchoBackend(desc) as b:
        run_detection(b, _cfg(src, out, overwrite=True))
    assert _read(out)[0].shape == (40, 40)


def test_resume_skips_finished_rasters(write_geotiff, tmp_path, desc):
    a, _ = _raster(write_geotiff, 40, 40, name="a.tif")
    b_, _ = _raster(write_geotiff, 40, 40, name="b.tif", seed=2)
    outdir = tmp_path / "maps"
    cfg = DetectConfig(inputs=(a,), output=outdir, overviews=False)
    with EchoBackend(desc) as b:
        run_detection(b, cfg)
        done = (outdir / "a_classes.tif").stat().st_mtime_ns
        time.sleep(0.01)
        cfg2 = DetectConfig(inputs=(a, b_), output=outdir, overviews=False, resume=True)
        s = run_detection(b, cfg2)
    assert s.resumed == (a,) and s.rasters == 1
    assert (outdir / "a_classes.tif").stat().st_mtime_ns == done
    assert (outdir / "b_classes.tif").exists()


def test_a_failing_run_leaves_no_output_and_no_temp_file(write_geotiff, tmp_path, desc):
    src, _ = _raster(write_geotiff, 200, 200)
    out = tmp_path / "fail.tif"
    with ContextBackend(desc, fail_on_call=3) as b, pytest.raises(RuntimeError, match="simulated"):
        run_detection(b, _cfg(src, out, probabilities=True, batch_size=1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ortho.tif"]
    assert not temporary_path(out).exists()


def test_bad_inputs_raise_one_line_errors_before_any_output(write_geotiff, tmp_path, desc):
    three = write_geotiff(np.zeros((3, 40, 40), np.uint8), "rgb.tif")
    f64 = write_geotiff(np.zeros((5, 40, 40), np.float64), "f64.tif")
    nocrs = write_geotiff(np.zeros((5, 40, 40), np.uint8), "nocrs.tif", crs=None)
    coarse = write_geotiff(np.zeros((5, 40, 40), np.uint8), "coarse.tif", res=1.0)
    text = tmp_path / "notes.tif"
    text.write_text("not a raster")
    cases = [
        (three, {}, InputDataError, "3 band"),
        (f64, {}, InputDataError, "data type"),
        (nocrs, {}, InputDataError, "no CRS"),
        (coarse, {}, InputDataError, "ground sampling"),
        (text, {}, InputDataError, "not a raster"),
        (tmp_path / "missing.tif", {}, InputDataError, "does not exist"),
        (three, {"bands": (1, 2, 3)}, InputDataError, "--bands"),
        (three, {"bands": (1, 2, 3, 4, 5)}, InputDataError, "band"),
        (three, {"tile_size": 60}, ConfigError, "output stride"),
    ]
    for src, kw, err, match in cases:
        out = tmp_path / "out" / "x.tif"
        with EchoBackend(desc) as b, pytest.raises(err, match=match) as exc:
            run_detection(b, _cfg(src, out, **kw))
        assert "\n" not in str(exc.value)
        assert not (tmp_path / "out").exists()


def test_assume_crs_and_gsd_override_let_a_run_proceed(write_geotiff, tmp_path, desc):
    nocrs = write_geotiff(np.full((5, 40, 40), 10, np.uint8), "nocrs.tif", crs=None, res=0.5)
    out = tmp_path / "ok.tif"
    with EchoBackend(desc) as b:
        run_detection(b, _cfg(nocrs, out, assume_crs="EPSG:2154", allow_gsd_mismatch=True))
    with rasterio.open(out) as o:
        assert o.crs.to_epsg() == 2154


def test_geographic_crs_gsd_is_checked_in_metres(write_geotiff, tmp_path, desc):
    deg = 0.2 / 111_320 / np.cos(np.radians(45.0))  # ~0.2 m east-west at 45°N
    ok = write_geotiff(
        np.full((5, 40, 40), 10, np.uint8), "geo.tif", crs="EPSG:4326", res=deg, origin=(2.0, 45.0)
    )
    with EchoBackend(desc) as b:
        with pytest.raises(InputDataError, match="ground sampling"):
            # North-south pixel size is deg * 111 km ~ 0.28 m: outside the 10 % tolerance.
            run_detection(b, _cfg(ok, tmp_path / "g.tif"))
        run_detection(b, _cfg(ok, tmp_path / "g.tif", allow_gsd_mismatch=True))


def test_metadata_model_gets_one_vector_per_tile_from_its_centre(write_geotiff, tmp_path):
    from flair_deploy.aerial import aerial_spec

    desc = ModelDescription(
        name="meta",
        tile_size=32,
        overlap=8,
        architecture=ArchitectureSpec(encoder_depth=5),
        classes=class_preset("flair19"),
        metadata=aerial_spec(),
    )
    src = write_geotiff(np.full((5, 70, 70), 100, np.uint8))
    out = tmp_path / "m.tif"
    seen = []

    class Spy(EchoBackend):
        def _infer(self, images, metadata):
            seen.append(metadata.copy())
            return super()._infer(images, metadata)

    with Spy(desc) as b:
        with pytest.raises(ConfigError, match="metadata"):
            run_detection(b, _cfg(src, out))
        sidecar = tmp_path / "meta.json"
        sidecar.write_text(
            json.dumps({"date": "2021-06-01", "time": "10h30", "camera": "UCE-M3", "altitude": 120})
        )
        run_detection(b, _cfg(src, out, metadata_json=sidecar))
    vectors = np.concatenate(seen)
    assert vectors.shape[1] == desc.metadata.dim
    # Different tile centres give different position encodings (x and y are the first two values).
    assert len({tuple(np.round(v[:2], 7)) for v in vectors}) == len(vectors) > 1


# ---------------------------------------------------------------------- concurrent jobs, resume, full disks
_SECOND_JOB = """
import sys
from pathlib import Path
from flair_deploy.description import ArchitectureSpec, ModelDescription, class_preset
from flair_deploy.inference import DetectConfig, run_detection
from tests.fakes import EchoBackend

desc = ModelDescription(
    name="tiny",
    tile_size=64,
    overlap=16,
    architecture=ArchitectureSpec(arch="unet", encoder="resnet18", encoder_depth=5),
    classes=class_preset("flair15"),
)
cfg = DetectConfig(
    inputs=(Path(sys.argv[1]),), output=Path(sys.argv[2]), overviews=False, block_size=32, batch_size=1
)
with EchoBackend(desc, delay=float(sys.argv[3])) as b:
    run_detection(b, cfg)
"""


def _wait_for_lock(out, pid, proc, timeout=60.0):
    from flair_deploy.atomic import lock_holder

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        holder = lock_holder(out)
        if holder is not None and holder.pid == pid:
            return holder
        assert proc.poll() is None, "the first job ended before it was seen writing"
        time.sleep(0.02)
    raise AssertionError("the first job never locked its output")


def test_a_second_job_writing_the_same_output_is_refused_and_the_first_map_is_intact(
    write_geotiff, tmp_path, desc
):
    import subprocess
    import sys
    from pathlib import Path

    src, _ = _raster(write_geotiff, 200, 200)
    out = tmp_path / "maps" / "map.tif"
    repo = Path(__file__).resolve().parents[3]
    # About 16 one-tile batches at 0.3 s: the first job is mid-write for seconds, even on a busy machine.
    first = subprocess.Popen([sys.executable, "-c", _SECOND_JOB, str(src), str(out), "0.3"], cwd=repo)
    try:
        _wait_for_lock(out, first.pid, first)
        part = temporary_path(out, pid=first.pid)
        # The lock is taken before the temporary is created: on a busy machine the first job may be
        # between the two when it is first seen.
        deadline = time.monotonic() + 60.0
        while not part.exists() and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.02)
        assert part.exists(), "the first job never created its temporary"
        for kw in ({}, {"overwrite": True}, {"overwrite": True, "resume": True}):
            with EchoBackend(desc) as b, pytest.raises(OutputError) as exc:
                run_detection(b, _cfg(src, out, batch_size=1, **kw))
            msg = str(exc.value)
            assert "\n" not in msg
            assert msg.startswith(f"{out} is being written by another flair-deploy job (pid {first.pid} on ")
            assert msg.endswith("; wait for it to finish or choose another --out")
            assert part.exists(), "the refused job deleted the first job's temporary"
    finally:
        assert first.wait(120) == 0
    clean = tmp_path / "clean.tif"
    with EchoBackend(desc) as b:
        run_detection(b, _cfg(src, clean, batch_size=1))
    got, _, tags = _read(out)
    expect, _, clean_tags = _read(clean)
    assert (got == expect).all()
    assert tags["JOB_SETTINGS"] == clean_tags["JOB_SETTINGS"]
    # The map and its sidecars (QGIS style, GDAL categories): no .part, no .lock.
    assert sorted(p.name for p in out.parent.iterdir()) == ["map.qml", "map.tif", "map.tif.aux.xml"]


def test_two_threads_writing_one_output_one_is_refused(write_geotiff, tmp_path, desc):
    import threading

    src, _ = _raster(write_geotiff, 120, 120)
    out = tmp_path / "t.tif"
    errors: list[BaseException] = []
    writing = threading.Event()

    class Slow(EchoBackend):
        def _infer(self, images, metadata):
            writing.set()
            return super()._infer(images, metadata)

    def first_job():
        try:
            with Slow(desc, delay=0.1) as b:
                run_detection(b, _cfg(src, out, batch_size=1))
        except BaseException as exc:  # noqa: BLE001  (handed to the test thread)
            errors.append(exc)

    t = threading.Thread(target=first_job)
    t.start()
    assert writing.wait(30)
    with (
        EchoBackend(desc) as b,
        pytest.raises(OutputError, match="is being written by another flair-deploy job"),
    ):
        run_detection(b, _cfg(src, out, overwrite=True))
    t.join()
    assert not errors
    with EchoBackend(desc) as b:
        run_detection(b, _cfg(src, tmp_path / "clean.tif"))
    assert (_read(out)[0] == _read(tmp_path / "clean.tif")[0]).all()


def test_resume_refuses_maps_made_with_other_settings(write_geotiff, tmp_path, desc):
    from flair_deploy.description import Precision

    src, _ = _raster(write_geotiff, 40, 40)
    out = tmp_path / "o.tif"
    with EchoBackend(desc) as b:
        b.precision = Precision.INT8  # as an int8 engine would report
        run_detection(b, _cfg(src, out))
    assert _read(out)[2]["PRECISION"] == "int8"
    made = out.stat().st_mtime_ns
    # The first differing setting is named, even when later ones differ too.
    for kw in ({}, {"indices": True}):
        with EchoBackend(desc) as b, pytest.raises(OutputError) as exc:
            run_detection(b, _cfg(src, out, resume=True, **kw))
        assert (
            str(exc.value)
            == f"{out} was made with precision int8, this run is fp32; use --overwrite to recompute it"
        )
    assert out.stat().st_mtime_ns == made
    # A matching run skips it; a mismatching one with --overwrite recomputes it.
    with EchoBackend(desc) as b:
        b.precision = Precision.INT8
        assert run_detection(b, _cfg(src, out, resume=True)).resumed == (src,)
        b.precision = Precision.FP32
        s = run_detection(b, _cfg(src, out, resume=True, overwrite=True))
    assert s.resumed == () and s.rasters == 1 and _read(out)[2]["PRECISION"] == "fp32"


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        ({"indices": True}, {}, "class values logit indices, this run is FLAIR class codes"),
        ({}, {"stitching": "crop", "margin": 16}, "stitching blend tile=64 overlap=16 border=2"),
        ({}, {"tile_size": 32}, "tile size 64, this run is 32"),
        ({}, {"bands": (3, 1, 2, 4, 5)}, "bands 1,2,3,4,5, this run is 3,1,2,4,5"),
        ({}, {"block_size": 64}, "block size 32, this run is 64"),
    ],
)
def test_resume_names_the_differing_setting(write_geotiff, tmp_path, desc, first, second, expected):
    src, _ = _raster(write_geotiff, 40, 40)
    out = tmp_path / "o.tif"
    with EchoBackend(desc) as b:
        run_detection(b, _cfg(src, out, **first))
        with pytest.raises(OutputError) as exc:
            run_detection(b, _cfg(src, out, resume=True, **second))
    msg = str(exc.value)
    assert msg.startswith(f"{out} was made with {expected}") and "\n" not in msg
    assert msg.endswith("; use --overwrite to recompute it")


def test_resume_refuses_another_model_and_a_map_flair_deploy_did_not_make(write_geotiff, tmp_path, desc):
    src, data = _raster(write_geotiff, 40, 40)
    out = tmp_path / "o.tif"
    with EchoBackend(desc) as b:
        run_detection(b, _cfg(src, out), model_sha256="ab" * 32)
        with pytest.raises(
            OutputError, match=r"was made with model SHA-256 abababababab…, this run is cdcdcd"
        ):
            run_detection(b, _cfg(src, out, resume=True), model_sha256="cd" * 32)
    foreign = write_geotiff(data[:1], "foreign.tif")
    with EchoBackend(desc) as b, pytest.raises(OutputError) as exc:
        run_detection(b, _cfg(src, foreign, resume=True))
    assert str(exc.value) == (
        f"{foreign} has no flair-deploy job tags (MODEL_SHA256, PRECISION, STITCHING, CLASS_VALUES), so "
        "--resume cannot tell how it was made; use --overwrite to recompute it"
    )


def test_maps_carry_their_job_settings(write_geotiff, tmp_path, desc):
    from flair_deploy.ledger import JobSettings

    src, _ = _raster(write_geotiff, 40, 40)
    out = tmp_path / "o.tif"
    with EchoBackend(desc) as b:
        run_detection(b, _cfg(src, out, confidence=True, bands=(5, 4, 3, 2, 1)), model_sha256="ab" * 32)
    for path in (out, tmp_path / "o_confidence.tif"):
        settings = JobSettings.from_tags(_read(path)[2])
        assert settings == JobSettings(
            model_sha256="ab" * 32,
            model_name="tiny",
            precision="fp32",
            stitching="blend tile=64 overlap=16 border=2",
            class_values="FLAIR class codes",
            tile=64,
            bands=(5, 4, 3, 2, 1),
            pad_mode="reflect",
            outputs=("classes", "confidence"),
            block=32,
        )


def test_a_full_disk_while_writing_a_map_is_one_line_and_leaves_nothing(
    write_geotiff, tmp_path, desc, monkeypatch
):
    import errno
    import os

    from rasterio.io import DatasetWriter

    src, _ = _raster(write_geotiff, 100, 100)
    out = tmp_path / "maps" / "full.tif"

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(DatasetWriter, "write", full)
    with EchoBackend(desc) as b, pytest.raises(OutputError) as exc:
        run_detection(b, _cfg(src, out, confidence=True))
    assert str(exc.value) == (
        f"cannot write {out}: No space left on device; free some space or choose another output folder"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ortho.tif"]  # no map, .part, .lock or folder


def test_a_full_disk_when_renaming_the_maps_is_one_line(write_geotiff, tmp_path, desc, monkeypatch):
    import errno
    import os

    from flair_deploy import atomic

    src, _ = _raster(write_geotiff, 40, 40)
    out = tmp_path / "full.tif"

    def full(a, b):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(a))

    monkeypatch.setattr(atomic.os, "replace", full)
    with EchoBackend(desc) as b, pytest.raises(OutputError, match=r"^cannot write .*full.tif: No space left"):
        run_detection(b, _cfg(src, out))
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ortho.tif"]
