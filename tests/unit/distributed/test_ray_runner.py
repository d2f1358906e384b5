"""``detect --workers``: chunks on a local Ray instance (``distributed/ray_runner.py``).

One local Ray instance serves the module (it takes seconds to start). The backends are the fakes of
``tests/fakes.py``, built inside each worker; the context-dependent one makes a chunking or assembly
error visible as a changed pixel.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio

from flair_deploy.inference.config import DetectConfig
from flair_deploy.inference.detect import run_detection
from tests.fakes import BackendFactory, ContextBackend, CrashOnceBackend
from tests.gis_helpers import gdal_report

ray = pytest.importorskip("ray", reason="the distributed extra (ray) is not installed")

from flair_deploy.distributed import run_distributed


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


def _ortho(write_geotiff, h=200, w=600, seed=1):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (5, h // 8 + 1, w // 8 + 1)).astype(np.float32)
    data = (np.kron(base, np.ones((8, 8), np.float32))[:, :h, :w] + rng.integers(0, 30, (5, h, w))).clip(
        0, 255
    )
    return write_geotiff(data.astype(np.uint8), "ortho.tif")


def _cfg(src, out, **kw):
    base = {
        "allow_gsd_mismatch": True,
        "overwrite": True,
        "chunk_mb": 1,
        "block_size": 32,
        "overviews": False,
    }
    return DetectConfig(inputs=(src,), output=out, **(base | kw))


def _strips(grid, *, block, **_):
    """160-px strips: several chunks whatever the mode's memory budget."""
    from flair_deploy.inference.chunks import plan_chunks

    return plan_chunks(
        grid, chunk_width=5 * block, chunk_height=-(-grid.height // block) * block, block=block
    )


def _read(path):
    with rasterio.open(path) as ds:
        return ds.read()


@pytest.mark.parametrize(
    ("stitching", "extra"), [("blend", {"confidence": True, "probabilities": True}), ("crop", {})]
)
def test_two_workers_map_exactly_what_one_process_maps(
    write_geotiff, tmp_path, tiny_description, stitching, extra, monkeypatch
):
    from flair_deploy.distributed import ray_runner
    from flair_deploy.inference.chunks import plan_chunks

    def strips(grid, *, block, **_):  # 160-px strips: several chunks whatever the mode's budget
        return plan_chunks(
            grid, chunk_width=5 * block, chunk_height=-(-grid.height // block) * block, block=block
        )

    monkeypatch.setattr(ray_runner, "default_chunk_plan", strips)
    src = _ortho(write_geotiff)
    with ContextBackend(tiny_description) as b:
        run_detection(b, _cfg(src, tmp_path / "one.tif", stitching=stitching, **extra))
    cfg = _cfg(src, tmp_path / "ray.tif", stitching=stitching, **extra)
    job = run_distributed(
        cfg,
        workers=2,
        backend_factory=BackendFactory(ContextBackend, tiny_description),
        description=tiny_description,
    )
    assert job.ok and job.committed == job.chunks > 2  # several chunks, shared by both workers
    assert sum(w.chunks for w in job.workers) == job.chunks and all(w.chunks for w in job.workers)
    for suffix in ("", "_proba", "_confidence"):
        one, many = tmp_path / f"one{suffix}.tif", tmp_path / f"ray{suffix}.tif"
        assert one.exists() == many.exists()
        if one.exists():
            np.testing.assert_array_equal(_read(one), _read(many))
    assert not list(tmp_path.glob(".ray*.chunks"))  # chunk files are gone once assembled


def test_a_worker_killed_mid_chunk_is_retried_elsewhere_and_the_map_is_unchanged(
    write_geotiff, tmp_path, tiny_description
):
    src = _ortho(write_geotiff, seed=2)
    with ContextBackend(tiny_description) as b:
        run_detection(b, _cfg(src, tmp_path / "one.tif"))
    factory = BackendFactory(CrashOnceBackend, tiny_description, marker=str(tmp_path / "crashed"))
    job = run_distributed(
        _cfg(src, tmp_path / "ray.tif"), workers=2, backend_factory=factory, description=tiny_description
    )
    assert (tmp_path / "crashed").exists()  # a worker did die mid-chunk
    assert job.ok and job.retries >= 1 and sum(w.lost for w in job.workers) == job.retries
    np.testing.assert_array_equal(_read(tmp_path / "one.tif"), _read(tmp_path / "ray.tif"))


def test_a_chunk_that_cannot_be_read_fails_with_its_reason_while_the_others_finish(
    write_geotiff, tmp_path, tiny_description, monkeypatch
):
    from flair_deploy.distributed import ray_runner

    monkeypatch.setattr(ray_runner, "default_chunk_plan", _strips)
    # A VRT over two halves; one half is missing: its chunks cannot be read, the others can.
    from xml.sax.saxutils import escape

    from tests.unit.inference.test_raster_input import _vrt_xml

    left = write_geotiff(np.full((5, 160, 320), 90, np.uint8), "left.tif")
    with rasterio.open(left) as ds:
        transform, wkt = ds.transform, escape(ds.crs.to_wkt())
    vrt = tmp_path / "m.vrt"
    vrt.write_text(
        _vrt_xml([(left, 0, 320, 160), (tmp_path / "right.tif", 320, 160, 160)], 480, 160, transform, wkt)
    )
    job = run_distributed(
        _cfg(vrt, tmp_path / "map.tif"),
        workers=2,
        backend_factory=BackendFactory(ContextBackend, tiny_description),
        description=tiny_description,
    )
    assert not job.ok and 0 < job.committed < job.chunks
    assert all("cannot read" in why and "m.vrt" in why and "window" in why for _, _, why in job.failed)
    assert not (tmp_path / "map.tif").exists()  # never a partial map
    assert json.loads(json.dumps(job.as_dict()))["failed"][0]["chunk"].startswith("r")


def test_a_rerun_computes_only_what_was_not_committed_and_other_settings_are_refused(
    write_geotiff, tmp_path, tiny_description, monkeypatch
):
    from flair_deploy.distributed import ray_runner
    from flair_deploy.errors import OutputError
    from flair_deploy.ledger import Ledger, ledger_path

    monkeypatch.setattr(ray_runner, "default_chunk_plan", _strips)
    src = _ortho(write_geotiff, seed=3)
    with ContextBackend(tiny_description) as b:
        run_detection(b, _cfg(src, tmp_path / "one.tif"))
    factory = BackendFactory(ContextBackend, tiny_description)
    cfg = _cfg(src, tmp_path / "ray.tif", overwrite=False)
    first = run_distributed(cfg, workers=2, backend_factory=factory, description=tiny_description)
    # The driver "died" after committing: the map is gone, one chunk file too; the ledger remembers.
    (tmp_path / "ray.tif").unlink()
    folder = tmp_path / ".ray.chunks"
    assert not folder.exists()  # assembled maps drop their chunk files...
    with Ledger.open(
        ledger_path(tmp_path / "ray.tif"), _settings(cfg, tiny_description), overwrite=False
    ) as led:
        assert led.summary().complete  # ...but the ledger keeps the record
    again = run_distributed(cfg, workers=2, backend_factory=factory, description=tiny_description)
    assert first.committed == first.chunks and again.committed == again.chunks  # files gone: recomputed
    np.testing.assert_array_equal(_read(tmp_path / "one.tif"), _read(tmp_path / "ray.tif"))
    # Other settings on the same job are refused with the setting named, unless --overwrite.
    (tmp_path / "ray.tif").unlink()
    with pytest.raises(OutputError, match="stitching"):
        run_distributed(
            _cfg(src, tmp_path / "ray.tif", overwrite=False, stitching="crop"),
            workers=1,
            backend_factory=factory,
            description=tiny_description,
        )


def test_committed_chunks_are_not_computed_again(write_geotiff, tmp_path, tiny_description, monkeypatch):
    from flair_deploy.distributed import ray_runner

    monkeypatch.setattr(ray_runner, "default_chunk_plan", _strips)
    src = _ortho(write_geotiff, seed=4)
    factory = BackendFactory(ContextBackend, tiny_description)
    cfg = _cfg(src, tmp_path / "ray.tif", overwrite=False)
    # A first run whose assembly never happened (the driver died): keep the chunk files.
    monkeypatch.setattr(ray_runner._Job, "assemble", lambda self, summary: None)
    first = run_distributed(cfg, workers=2, backend_factory=factory, description=tiny_description)
    assert first.committed == first.chunks and not (tmp_path / "ray.tif").exists()
    monkeypatch.undo()
    monkeypatch.setattr(ray_runner, "default_chunk_plan", _strips)
    again = run_distributed(cfg, workers=2, backend_factory=factory, description=tiny_description)
    assert again.resumed == again.chunks and again.committed == 0 and again.tiles == 0
    with ContextBackend(tiny_description) as b:
        run_detection(b, _cfg(src, tmp_path / "one.tif"))
    np.testing.assert_array_equal(_read(tmp_path / "one.tif"), _read(tmp_path / "ray.tif"))


def _settings(cfg, desc):
    from flair_deploy.inference.detect import job_settings

    return job_settings(cfg, desc, cfg.resolve_tiling(desc), precision="fp32", model_sha256=None)


def test_a_folder_of_tiles_is_one_job_with_a_mosaic_vrt_and_a_merged_cog(
    write_geotiff, tmp_path, tiny_description
):
    rng = np.random.default_rng(5)
    tiles = tmp_path / "tiles"
    tiles.mkdir()
    # Two neighbouring tiles of one product (same CRS and pixel size), as BD ORTHO ships them.
    for i, name in enumerate(("a.tif", "b.tif")):
        path = write_geotiff(
            rng.integers(0, 255, (5, 96, 128)).astype(np.uint8), name, origin=(650000.0 + i * 25.6, 6860000.0)
        )
        path.rename(tiles / name)
    out = tmp_path / "maps"
    cfg = DetectConfig(
        inputs=(tiles,),
        output=out,
        allow_gsd_mismatch=True,
        overviews=False,
        block_size=32,
        workers=2,
        merge=True,
    )
    job = run_distributed(
        cfg,
        workers=2,
        backend_factory=BackendFactory(ContextBackend, tiny_description),
        description=tiny_description,
    )
    assert job.ok and (out / "mosaic.vrt") in job.outputs and (out / "mosaic.tif") in job.outputs
    with rasterio.open(out / "mosaic.vrt") as vrt, rasterio.open(out / "mosaic.tif") as cog:
        assert (vrt.width, vrt.height) == (256, 96) == (cog.width, cog.height)
        mosaic = vrt.read(1)
        np.testing.assert_array_equal(cog.read(1), mosaic)
        assert cog.colormap(1) == vrt.colormap(1) and cog.overviews(1)  # colours and overviews kept
    for path in (out / "mosaic.vrt", out / "mosaic.tif"):  # names too, and one QGIS style for both
        assert gdal_report(path)[0]["rat_rows"][4][:3] == ["5", "5", "water"]
    assert 'label="water"' in (out / "mosaic.qml").read_text()
    np.testing.assert_array_equal(mosaic[:, :128], _read(out / "a_classes.tif")[0])
    np.testing.assert_array_equal(mosaic[:, 128:], _read(out / "b_classes.tif")[0])
