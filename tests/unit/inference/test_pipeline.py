"""The threaded read → infer → stitch → write pipeline (``inference/pipeline.py``), with fakes.

The rasters are real GeoTIFFs (the readers open their own handles); the backend and the writer are
fakes that record what reaches them and when, so order, skipping, back-pressure and abort are
observable without a network or an output file.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from flair_deploy.errors import ConfigError
from flair_deploy.inference.pipeline import run_raster
from flair_deploy.inference.raster import TileReader, inspect_raster
from flair_deploy.inference.stitching import NO_CLASS, FinishedRows, OutputChunk, RowBandStitcher
from flair_deploy.inference.tiling import TilingPlan, make_grid
from tests.fakes import ContextBackend, EchoBackend

TILE = 32
BLEND = TilingPlan.blend(TILE, overlap=8, border=1)


class RecordingWriter:
    """Stands in for :class:`OutputWriter`: keeps every chunk; can be slow or fail."""

    def __init__(
        self,
        *,
        block: int = 32,
        delay: float = 0.0,
        fail_on: int | None = None,
        backend=None,
        stall: bool = False,
    ):
        self.block = block
        self.delay = delay
        self.stall = stall
        self.fail_on = fail_on
        self.backend = backend
        self.chunks: list[OutputChunk] = []
        #: Backend calls made by the time each chunk arrived (back-pressure evidence).
        self.calls_seen: list[int] = []

    def write(self, chunk: OutputChunk) -> None:
        if self.stall and not self.chunks:
            # Hold the first write until the backend stops making progress (or has run every tile).
            last, deadline = -1, time.monotonic() + 10.0
            while self.backend.calls != last and time.monotonic() < deadline:
                last = self.backend.calls
                time.sleep(0.3)
        if self.backend is not None:
            self.calls_seen.append(self.backend.calls)
        if self.fail_on is not None and len(self.chunks) + 1 >= self.fail_on:
            raise OSError(28, "No space left on device")
        if self.delay:
            time.sleep(self.delay)
        self.chunks.append(chunk)

    def classes(self) -> np.ndarray:
        return np.concatenate([c.classes for c in self.chunks])


def _positions(h: int, w: int) -> np.ndarray:
    """Five float32 bands: band 0 = row, band 1 = column, so a tile's first pixel names the tile."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.stack([yy, xx, yy, xx, yy + xx])


@pytest.fixture
def desc(tiny_description):
    return tiny_description


def _info(write_geotiff, data, desc, **kw):
    return inspect_raster(write_geotiff(data, **kw), desc, allow_gsd_mismatch=True)


def _pipeline_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("detect-")]


def test_tiles_reach_the_backend_in_row_major_order_and_rows_are_written_once(write_geotiff, desc):
    h, w = 150, 133
    info = _info(write_geotiff, _positions(h, w), desc)
    grid = make_grid(w, h, BLEND)
    writer = RecordingWriter(block=32)
    with ContextBackend(desc) as backend:
        run = run_raster(backend, info, writer, BLEND, batch_size=3, readers=3, prefetch=5)
    seen = [(int(img[0, 0, 0]), int(img[1, 0, 0])) for batch in backend.batches for img in batch]
    assert seen == [(t.row.start, t.col.start) for t in grid]
    assert [len(b) for b in backend.batches[:-1]] == [3] * (len(backend.batches) - 1)
    assert (run.tiles, run.inferred, run.skipped, run.pixels) == (len(grid), len(grid), 0, h * w)
    # Rows arrive once each, top to bottom, in whole blocks (the last one may be partial).
    rows = [(c.row, c.rows) for c in writer.chunks]
    assert [r for r, _ in rows] == list(np.cumsum([0] + [n for _, n in rows[:-1]]))
    assert sum(n for _, n in rows) == h and all(n % 32 == 0 for _, n in rows[:-1])
    # Threads change nothing: the map equals a serial read → predict → stitch of the same tiles.
    reader = TileReader(info)
    stitcher = RowBandStitcher(grid, active=desc.active_mask)
    serial: list[FinishedRows] = []
    with ContextBackend(desc) as ref:
        for t in grid:
            image, valid = reader.read(t)
            serial += stitcher.add([t], ref.run(image[None]), [valid])
    reader.close()
    serial += stitcher.finish()
    assert (writer.classes() == np.concatenate([r.result().classes for r in serial])).all()
    assert run.seconds.wall > 0 and 0.0 <= run.seconds.busy <= 1.0
    assert not _pipeline_threads()


def test_all_nodata_tiles_are_skipped_and_their_pixels_get_no_class(write_geotiff, desc):
    h, w = 160, 96
    data = np.random.default_rng(0).integers(1, 255, (5, h, w)).astype(np.uint8)
    data[:, :64] = 0  # the first tile rows are entirely nodata
    data[:, 100:140, 30:70] = 0  # a hole spanning tiles, none of them entirely inside it
    info = _info(write_geotiff, data, desc, nodata=0)
    plan = TilingPlan.crop(TILE)
    grid = make_grid(w, h, plan)
    invalid = (data == 0).all(axis=0)
    empty = [
        t for t in grid if invalid[t.row.start : t.row.start + TILE, t.col.start : t.col.start + TILE].all()
    ]
    assert empty
    writer = RecordingWriter(block=32)
    with EchoBackend(desc) as backend:
        run = run_raster(backend, info, writer, plan, batch_size=2)
    assert run.skipped == len(empty) and run.inferred == len(grid) - len(empty)
    assert sum(shape[0] for shape in backend.calls) == run.inferred  # never sent to the network
    classes = writer.classes()
    assert (classes[invalid] == NO_CLASS).all()
    assert (classes[~invalid] == backend.value_to_class(data[0])[~invalid]).all()


def test_a_failing_writer_stops_the_run_and_its_error_propagates(write_geotiff, desc):
    h, w = 1280, 64  # 40 tile rows: far more work than the queues hold
    info = _info(write_geotiff, _positions(h, w), desc)
    with ContextBackend(desc, delay=0.002) as backend:
        writer = RecordingWriter(block=32, fail_on=2, backend=backend)
        with pytest.raises(OSError, match="No space left"):
            run_raster(backend, info, writer, BLEND, batch_size=1, prefetch=4)
    total = len(make_grid(w, h, BLEND))
    assert backend.calls < total // 2  # inference stopped soon after the failure, not at the end
    assert not _pipeline_threads()  # every stage thread and reader has ended


def test_a_failing_backend_stops_the_run_and_its_error_propagates(write_geotiff, desc):
    info = _info(write_geotiff, _positions(640, 64), desc)
    writer = RecordingWriter(block=32)
    with ContextBackend(desc, fail_on_call=5) as backend, pytest.raises(RuntimeError, match="simulated"):
        run_raster(backend, info, writer, BLEND, batch_size=1)
    assert backend.calls == 5
    assert not _pipeline_threads()


def test_a_slow_writer_holds_inference_back(write_geotiff, desc):
    # Bounded queues: the backend may run only a bounded number of tiles ahead of the written rows.
    h, w = 1280, 64
    info = _info(write_geotiff, _positions(h, w), desc)
    grid = make_grid(w, h, BLEND)
    with ContextBackend(desc) as backend:
        writer = RecordingWriter(block=32, delay=0.01, backend=backend, stall=True)
        run_raster(backend, info, writer, BLEND, batch_size=1, prefetch=4)
    # Rows the backend had covered when each chunk reached the writer, minus the rows written by then.
    cols, stride = len(grid.cols), TILE - BLEND.overlap
    ahead = [
        (calls // cols) * stride - (c.row + c.rows)
        for calls, c in zip(writer.calls_seen, writer.chunks, strict=True)
    ]
    # Bounded by the queues (4 chunks, 4 batches), one item per stage and the row band: ~8 blocks.
    assert max(ahead) <= 10 * writer.block
    # While the first write was held, inference stalled well before the end of the raster.
    assert writer.calls_seen[0] < len(grid) // 2


def test_progress_reports_every_tile_once_and_ends_at_the_raster_size(write_geotiff, desc):
    h, w = 150, 133
    data = _positions(h, w)
    data[:, :40] = 0
    info = _info(write_geotiff, data.astype(np.uint8), desc, nodata=0)
    calls: list[tuple[int, int, int]] = []
    with EchoBackend(desc) as backend:
        run = run_raster(
            backend, info, RecordingWriter(), BLEND, batch_size=4, progress=lambda *a: calls.append(a)
        )
    done = [c[0] for c in calls]
    assert done == sorted(done) and len(set(done)) == len(done)
    assert {c[1] for c in calls} == {run.tiles}
    assert calls[-1][:2] == (run.tiles, run.tiles)  # skipped tiles count as done
    assert calls[-1][2] == h * w
    pixels = [c[2] for c in calls]
    assert pixels == sorted(pixels)


@pytest.mark.parametrize(
    ("backend_kw", "batch_size", "match"),
    [
        ({"fixed_hw": (64, 64)}, 1, "--tile 64"),
        ({"max_batch": 2}, 4, "--batch-size 2"),
    ],
)
def test_a_backend_that_cannot_take_the_tile_or_batch_is_refused_before_any_write(
    write_geotiff, desc, backend_kw, batch_size, match
):
    info = _info(write_geotiff, _positions(64, 64), desc)
    writer = RecordingWriter()
    with EchoBackend(desc, **backend_kw) as backend, pytest.raises(ConfigError, match=match) as exc:
        run_raster(backend, info, writer, BLEND, batch_size=batch_size)
    assert "\n" not in str(exc.value)
    assert not writer.chunks and not backend.calls
