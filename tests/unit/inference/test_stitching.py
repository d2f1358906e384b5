"""Row-band stitching (``inference/stitching.py``) against references written from the definitions.

The stitcher runs on the backend's device through the array API; every comparison below runs it on
numpy arrays and on torch CPU tensors (the code path of CUDA runs), fed with logits as a backend's
:meth:`run` returns them. The tile logits come from :class:`tests.fakes.ContextBackend`, whose output at a pixel depends on
the pixel's neighbourhood and on its position inside the tile: overlapping tiles *disagree* on the
pixels they share. With such a model a wrong blend weight, a missing ramp, an off-by-one in a keep
interval or a lost partition of unity changes the stitched map, and the comparisons below fail (a
per-pixel model would give every tile the same answer and hide all of them).

The blend reference is the definition itself, in float64: at every pixel, ``sum over the tiles that
cover it of w·p`` divided by ``sum of w``, with ``w`` the product of two 1-D windows built here from the
documented rule (0 over the border of an inner side, a sin² ramp over the rest of the overlap, 1
elsewhere and on raster edges).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flair_deploy.errors import ConfigError
from flair_deploy.inference.device import HOST, ArrayDevice, TorchDevice
from flair_deploy.inference.stitching import (
    NO_CLASS,
    OutputBand,
    OutputChunk,
    RowBandStitcher,
    blend_window,
)
from flair_deploy.inference.tiling import Tile, TileGrid, TilingPlan, blend_axis, make_grid
from tests.fakes import ContextBackend

U8_STEP = 1  # uint8 planes are round(255·p): one step of rounding/float32 accumulation is allowed


# ---------------------------------------------------------------------- references and helpers
def ref_window(size: int, overlap: int, border: int, *, inner_start: bool, inner_stop: bool) -> np.ndarray:
    """1-D blend weights from the definition, pixel by pixel (float64)."""
    ramp = overlap - 2 * border

    def side(d: int) -> float:  # d: distance of the pixel from a tapered side
        if d < border:
            return 0.0
        if d < border + ramp:
            return math.sin(0.5 * math.pi * (d - border + 0.5) / ramp) ** 2
        return 1.0

    return np.array(
        [(side(i) if inner_start else 1.0) * (side(size - 1 - i) if inner_stop else 1.0) for i in range(size)]
    )


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Five smooth-ish bands over ``[0, 255]`` (regions of classes, few ties)."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0, 255, (5, h // 8 + 2, w // 8 + 2)).astype(np.float32)
    data = np.kron(base, np.ones((8, 8), np.float32))[:, :h, :w]
    return (data + rng.uniform(0, 20, (5, h, w))).clip(0, 255).astype(np.float32)


def _tile_input(image: np.ndarray, valid: np.ndarray, tile: Tile) -> tuple[np.ndarray, np.ndarray]:
    """What the reader gives for a tile: reflect padding outside the raster, validity False there."""
    h, w = image.shape[1:]
    c0, r0, cw, rh = tile.read_window(w, h)
    pad = tile.padding(w, h)
    data = np.pad(image[:, r0 : r0 + rh, c0 : c0 + cw], ((0, 0), *pad), mode="reflect")
    ok = np.pad(valid[r0 : r0 + rh, c0 : c0 + cw], pad, mode="constant")
    return data, ok


@dataclass(frozen=True)
class Pred:
    """One tile as the stitcher is fed: its logits, plus the probabilities the references use."""

    tile: Tile
    valid: np.ndarray
    logits: np.ndarray
    probabilities: np.ndarray


def _predict(backend, image, valid, grid: TileGrid) -> list[Pred]:
    preds = []
    for tile in grid:
        data, ok = _tile_input(image, valid, tile)
        logits = backend.infer(data[None])[0]
        probs = backend.predict_probabilities(data[None])[0]
        preds.append(Pred(tile, ok, logits, probs))
    return preds


DEVICES = ["numpy", "torch"]


def _plan(mode: str, tile: int, *, overlap: int, border: int, margin: int) -> TilingPlan:
    """The blend or crop plan of a test parametrised over both modes."""
    return TilingPlan.blend(tile, overlap, border) if mode == "blend" else TilingPlan.crop(tile, margin)


def _device(name: str) -> ArrayDevice:
    return HOST if name == "numpy" else TorchDevice("cpu")


def _stitch(stitcher: RowBandStitcher, preds, batch: int = 3) -> dict[str, np.ndarray | None]:
    """Feed the tiles in batches of logits on the stitcher's device; return full-raster planes."""
    dev = stitcher.device
    rows = []
    for i in range(0, len(preds), batch):
        part = preds[i : i + batch]
        logits = dev.upload(np.ascontiguousarray(np.stack([p.logits for p in part])))
        masks = [None if p.valid.all() else p.valid for p in part]
        rows += stitcher.add([p.tile for p in part], logits, masks)
    rows += stitcher.finish()
    chunks: list[OutputChunk] = [r.result() for r in rows]
    assert all(isinstance(c.classes, np.ndarray) and c.classes.dtype == np.uint8 for c in chunks)
    grid = stitcher.grid
    # Rows come once each, top to bottom, with nothing missing.
    assert [c.row for c in chunks] == list(np.cumsum([0] + [c.rows for c in chunks[:-1]]))
    assert sum(c.rows for c in chunks) == grid.height
    out: dict[str, np.ndarray | None] = {"classes": np.concatenate([c.classes for c in chunks])}
    out["confidence"] = (
        np.concatenate([c.confidence for c in chunks]) if chunks[0].confidence is not None else None
    )
    out["probabilities"] = (
        np.concatenate([c.probabilities for c in chunks], axis=1)
        if chunks[0].probabilities is not None
        else None
    )
    return out


def reference_blend(preds, h: int, w: int, overlap: int, border: int) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(sum w·p / sum w, sum w)`` over the tiles covering each pixel (float64)."""
    k = preds[0].probabilities.shape[0]
    num = np.zeros((k, h, w))
    den = np.zeros((h, w))
    for p in preds:
        t = p.tile
        wr = ref_window(t.size, overlap, border, inner_start=t.row.inner_start, inner_stop=t.row.inner_stop)
        wc = ref_window(t.size, overlap, border, inner_start=t.col.inner_start, inner_stop=t.col.inner_stop)
        weight = np.outer(wr, wc) * p.valid
        c0, r0, cw, rh = t.read_window(w, h)
        ty, tx = r0 - t.row.start, c0 - t.col.start
        sl = (slice(ty, ty + rh), slice(tx, tx + cw))
        num[:, r0 : r0 + rh, c0 : c0 + cw] += weight[sl] * p.probabilities[:, sl[0], sl[1]]
        den[r0 : r0 + rh, c0 : c0 + cw] += weight[sl]
    mean = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    return mean, den


def _u8(p: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(p * 255.0), 0, 255).astype(np.int16)


def _decisive(mean: np.ndarray, active: np.ndarray, eps: float = 1e-4) -> np.ndarray:
    """Pixels whose two best active classes are more than *eps* apart (float32 cannot flip them)."""
    top2 = np.sort(mean[active], axis=0)[-2:]
    return (top2[1] - top2[0]) > eps


@pytest.fixture
def desc(tiny_description):
    return tiny_description


@pytest.fixture
def backend(desc):
    with ContextBackend(desc) as b:
        yield b


# ---------------------------------------------------------------------- blend window
@pytest.mark.parametrize(("tile", "overlap", "border"), [(64, 16, 2), (64, 24, 0), (32, 15, 3), (128, 32, 4)])
def test_facing_ramps_of_neighbours_form_a_partition_of_unity(tile, overlap, border):
    # Neighbours at the nominal stride: tile b starts where a's overlap starts.
    a = blend_window(tile, overlap, border, inner_start=False, inner_stop=True)
    b = blend_window(tile, overlap, border, inner_start=True, inner_stop=False)
    np.testing.assert_allclose(a[tile - overlap :] + b[:overlap], 1.0, atol=1e-6)
    assert (a[: tile - overlap] == 1.0).all() and (b[overlap:] == 1.0).all()


@pytest.mark.parametrize(("tile", "overlap", "border"), [(64, 16, 2), (64, 24, 0), (32, 15, 3)])
@pytest.mark.parametrize(
    ("inner_start", "inner_stop"), [(False, False), (True, False), (False, True), (True, True)]
)
def test_window_matches_its_definition(tile, overlap, border, inner_start, inner_stop):
    got = blend_window(tile, overlap, border, inner_start=inner_start, inner_stop=inner_stop)
    want = ref_window(tile, overlap, border, inner_start=inner_start, inner_stop=inner_stop)
    assert got.dtype == np.float32 and got.shape == (tile,)
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_window_is_zero_on_inner_borders_and_untapered_on_raster_edges():
    tile, overlap, border = 64, 16, 3
    both = blend_window(tile, overlap, border, inner_start=True, inner_stop=True)
    assert (both[:border] == 0).all() and (both[tile - border :] == 0).all()
    assert (both[border : overlap - border] > 0).all() and (
        both[overlap - border : tile - overlap] == 1
    ).all()
    assert (np.diff(both[: tile // 2]) >= 0).all()  # the ramp rises monotonically
    np.testing.assert_allclose(both, both[::-1], atol=1e-7)
    edge = blend_window(tile, overlap, border, inner_start=False, inner_stop=False)
    assert (edge == 1.0).all()  # a raster edge keeps full weight: no tile covers beyond it


@settings(max_examples=200, deadline=None)
@given(length=st.integers(1, 600), tile=st.sampled_from([32, 64]), frac=st.floats(0, 0.45))
def test_blend_weights_are_positive_wherever_a_pixel_is_covered(length, tile, frac):
    overlap = int(tile * frac)
    border = overlap // 8
    wsum = np.zeros(length)
    for t in blend_axis(length, tile, overlap):
        w = blend_window(tile, overlap, border, inner_start=t.inner_start, inner_stop=t.inner_stop)
        lo, hi = t.keep_start, t.keep_stop
        wsum[lo:hi] += w[lo - t.start : hi - t.start]
    assert wsum.min() > 0


# ---------------------------------------------------------------------- blend stitching
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    ("h", "w", "tile", "overlap", "border", "batch"),
    [
        (150, 133, 64, 24, 3, 3),  # shifted last tiles on both axes
        (112, 208, 64, 16, 0, 1),  # nominal stride only, no border
        (64, 64, 64, 16, 2, 2),  # one tile
        (40, 150, 64, 20, 2, 4),  # rows: one reflect-padded tile; columns: three tiles
        (200, 70, 32, 15, 3, 5),  # odd overlap, many rows, batches across tile rows
    ],
)
def test_blend_matches_the_reference_blend(backend, desc, device, h, w, tile, overlap, border, batch):
    image, valid = _image(h, w), np.ones((h, w), bool)
    grid = make_grid(w, h, TilingPlan.blend(tile, overlap, border))
    preds = _predict(backend, image, valid, grid)
    st_ = RowBandStitcher(
        grid,
        active=desc.active_mask,
        confidence=True,
        probabilities=True,
        device=_device(device),
    )
    got = _stitch(st_, preds, batch)
    mean, den = reference_blend(preds, h, w, overlap, border)
    active = np.asarray(desc.active_mask)
    assert (den > 0).all()
    # Probabilities: every logit's plane within one uint8 step of the reference (inactive ones are 0).
    diff = np.abs(got["probabilities"].astype(np.int16) - _u8(mean))
    assert diff.max() <= U8_STEP, f"{(diff > U8_STEP).sum()} probability values off the reference blend"
    assert (got["probabilities"][~active] == 0).all()
    # Classes: the reference's masked argmax wherever float32 accumulation cannot flip it.
    ref_cls = np.flatnonzero(active)[mean[active].argmax(axis=0)]
    decisive = _decisive(mean, active)
    assert decisive.mean() > 0.99
    bad = (got["classes"] != ref_cls) & decisive
    assert not bad.any(), (
        f"{bad.sum()} pixels differ from the reference blend, first at {np.argwhere(bad)[0]}"
    )
    # Confidence: the blended probability of the chosen class.
    top = np.take_along_axis(mean, got["classes"][None].astype(np.intp), axis=0)[0]
    assert np.abs(got["confidence"].astype(np.int16) - _u8(top)).max() <= U8_STEP


def test_the_fake_makes_overlapping_tiles_disagree(backend, desc):
    # Guard for the test above: it can see a seam only if tiles disagree where they overlap.
    h, w, tile, overlap = 64, 112, 64, 16
    image = _image(h, w)
    grid = make_grid(w, h, TilingPlan.blend(tile, overlap))
    a, b = _predict(backend, image, np.ones((h, w), bool), grid)
    shared = slice(b.tile.col.start, a.tile.col.start + tile)
    pa = a.probabilities[:, :, shared]
    pb = b.probabilities[:, :, shared.start - b.tile.col.start : shared.stop - b.tile.col.start]
    assert np.abs(pa - pb).max() > 0.3
    assert (pa.argmax(axis=0) != pb.argmax(axis=0)).mean() > 0.1


def _max_jump(planes: np.ndarray) -> float:
    """Largest probability step between horizontally or vertically adjacent pixels."""
    p = planes.astype(np.float64) / 255.0
    return max(np.abs(np.diff(p, axis=1)).max(), np.abs(np.diff(p, axis=2)).max())


def test_blend_is_seamless_where_crop_shows_the_tile_grid(backend, desc):
    # Constant input: all spatial variation comes from the position inside the tile (the fake's ramp),
    # so a tile boundary is the only place where the stitched field can jump.
    h = w = 150
    image, valid = np.full((5, h, w), 120.0, np.float32), np.ones((h, w), bool)
    maps = {}
    for mode, plan in (("blend", TilingPlan.blend(64, 30, 4)), ("crop", TilingPlan.crop(64, 16))):
        grid = make_grid(w, h, plan)
        st_ = RowBandStitcher(grid, active=desc.active_mask, probabilities=True)
        maps[mode] = _stitch(st_, _predict(backend, image, valid, grid))["probabilities"]
    # Inside a tile the fake's field changes by a few hundredths per pixel; at crop seams far more.
    assert _max_jump(maps["crop"]) > 0.15
    assert _max_jump(maps["blend"]) < 0.06


# ---------------------------------------------------------------------- crop stitching
def reference_crop(preds, h: int, w: int, active: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each pixel from the tile whose keep rectangle holds it; also how many tiles wrote each pixel."""
    cls = np.full((h, w), NO_CLASS, np.uint8)
    conf = np.zeros((h, w))
    writes = np.zeros((h, w), int)
    idx = np.flatnonzero(active)
    for p in preds:
        r, c = p.tile.row, p.tile.col
        rows, cols = slice(r.keep_start, r.keep_stop), slice(c.keep_start, c.keep_stop)
        sub = p.probabilities[active][:, r.keep_start - r.start : r.keep_stop - r.start][
            :, :, c.keep_start - c.start : c.keep_stop - c.start
        ]
        cls[rows, cols] = idx[sub.argmax(axis=0)]
        conf[rows, cols] = sub.max(axis=0)
        writes[rows, cols] += 1
    return cls, conf, writes


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("h", "w", "margin", "batch"), [(150, 133, 16, 3), (97, 170, 8, 1), (20, 30, 16, 2)])
def test_crop_takes_each_pixel_from_the_one_tile_that_keeps_it(backend, desc, device, h, w, margin, batch):
    image, valid = _image(h, w, seed=3), np.ones((h, w), bool)
    grid = make_grid(w, h, TilingPlan.crop(64, margin))
    preds = _predict(backend, image, valid, grid)
    active = np.asarray(desc.active_mask)
    ref_cls, ref_conf, writes = reference_crop(preds, h, w, active)
    assert (writes == 1).all()  # the keep rectangles partition the raster
    dev = _device(device)
    got = _stitch(
        RowBandStitcher(grid, active=desc.active_mask, confidence=True, probabilities=True, device=dev),
        preds,
        batch,
    )
    assert (got["classes"] == ref_cls).all(), f"{(got['classes'] != ref_cls).sum()} pixels differ"
    assert np.abs(got["confidence"].astype(np.int16) - _u8(ref_conf)).max() <= U8_STEP
    assert got["probabilities"].shape == (desc.num_classes, h, w)
    # The same map without probabilities (the cheaper path: argmax and confidence from the logits).
    got2 = _stitch(RowBandStitcher(grid, active=desc.active_mask, confidence=True, device=dev), preds, batch)
    assert (got2["classes"] == ref_cls).all()
    assert np.abs(got2["confidence"].astype(np.int16) - _u8(ref_conf)).max() <= U8_STEP


# ---------------------------------------------------------------------- classes, nodata, contract
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["blend", "crop"])
def test_inactive_classes_are_never_chosen(desc, mode, device):
    active = np.asarray(desc.active_mask)
    assert not active.all()
    h, w = 90, 100
    grid = make_grid(w, h, _plan(mode, 64, overlap=16, border=2, margin=8))
    rng = np.random.default_rng(0)
    preds = []
    for t in grid:
        logits = rng.uniform(0, 1, (desc.num_classes, 64, 64)).astype(np.float32)
        logits[~active] = 50.0  # inactive logits far above the rest: they must still never win
        preds.append(Pred(t, np.ones((64, 64), bool), logits, logits))
    st_ = RowBandStitcher(grid, active=desc.active_mask, probabilities=True, device=_device(device))
    got = _stitch(st_, preds)
    assert np.isin(got["classes"], np.flatnonzero(active)).all()
    if mode == "blend":
        assert (got["probabilities"][~active] == 0).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["blend", "crop"])
def test_nodata_pixels_get_no_class_and_zero_confidence(backend, desc, mode, device):
    h, w = 130, 120
    image = _image(h, w)
    valid = np.ones((h, w), bool)
    valid[10:30, 5:90] = False  # a hole across tile boundaries
    valid[:, 115:] = False  # a nodata strip on the raster edge
    grid = make_grid(w, h, _plan(mode, 64, overlap=24, border=3, margin=16))
    st_ = RowBandStitcher(grid, active=desc.active_mask, confidence=True, device=_device(device))
    got = _stitch(st_, _predict(backend, image, valid, grid))
    assert (got["classes"][~valid] == NO_CLASS).all()
    assert (got["classes"][valid] != NO_CLASS).all()
    assert (got["confidence"][~valid] == 0).all() and (got["confidence"][valid] > 0).all()


def test_tiles_must_come_in_row_major_order(backend, desc):
    grid = make_grid(150, 150, TilingPlan.blend(64, 16, 2))
    st_ = RowBandStitcher(grid, active=desc.active_mask)
    tiles = list(grid)
    st_.advance(tiles[len(grid.cols)])  # first tile of the second row
    with pytest.raises(ValueError, match="row-major"):
        st_.advance(tiles[0])


def test_blend_needs_a_ramp_and_one_logit_plane_per_tile(desc):
    with pytest.raises(ConfigError, match="border"):
        TilingPlan.blend(64, 16, 8)
    grid = make_grid(100, 100, TilingPlan.blend(64, 16, 2))
    st_ = RowBandStitcher(grid, active=desc.active_mask)
    logits = np.zeros((2, desc.num_classes, 64, 64), np.float32)
    with pytest.raises(ValueError, match="1 tiles, 2 logits"):
        st_.add([grid.tile(0)], logits, [None])


@pytest.mark.parametrize("mode", ["blend", "crop"])
def test_torch_tensors_and_numpy_give_the_same_map(backend, desc, mode):
    # The device path (torch tensors, as on CUDA) and the host path are one implementation: they agree.
    h, w = 140, 150
    image, valid = _image(h, w, seed=5), np.ones((h, w), bool)
    valid[50:60, 20:120] = False
    grid = make_grid(w, h, _plan(mode, 64, overlap=24, border=3, margin=16))
    preds = _predict(backend, image, valid, grid)
    maps = []
    for device in DEVICES:
        st_ = RowBandStitcher(
            grid,
            active=desc.active_mask,
            confidence=True,
            probabilities=True,
            device=_device(device),
        )
        maps.append(_stitch(st_, preds, batch=4))
    a, b = maps
    assert (a["classes"] != b["classes"]).mean() <= 1e-4  # float rounding may flip exact ties only
    for key in ("confidence", "probabilities"):
        assert np.abs(a[key].astype(np.int16) - b[key].astype(np.int16)).max() <= U8_STEP


def test_batching_does_not_change_the_map(backend, desc):
    h, w = 130, 170
    image, valid = _image(h, w, seed=7), np.ones((h, w), bool)
    grid = make_grid(w, h, TilingPlan.blend(64, 24, 3))
    preds = _predict(backend, image, valid, grid)
    maps = [
        _stitch(RowBandStitcher(grid, active=desc.active_mask, probabilities=True), preds, b)
        for b in (1, 4, len(preds))
    ]
    for other in maps[1:]:
        assert (other["classes"] == maps[0]["classes"]).all()
        assert (other["probabilities"] == maps[0]["probabilities"]).all()


def test_output_band_releases_whole_blocks_once():
    band = OutputBand(height=100, block=32)
    got = []
    row = 0
    for n in (10, 30, 25, 35):
        chunk = OutputChunk(row, np.full((n, 7), row % 250, np.uint8), None, None)
        row += n
        got += band.push(chunk)
    got += band.finish()
    rows = [(c.row, c.rows) for c in got]
    assert all(r % 32 == 0 for r, _ in rows)
    assert all(n % 32 == 0 for _, n in rows[:-1])
    assert sum(n for _, n in rows) == 100
    assert [r for r, _ in rows] == sorted({r for r, _ in rows})  # each row written once, in order
    # The rows come out in their original order, each exactly once.
    values = np.concatenate([c.classes[:, 0] for c in got])
    assert (values == np.repeat([0, 10, 40, 65], [10, 30, 25, 35]) % 250).all()
