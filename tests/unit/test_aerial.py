"""Aerial metadata parsing and the flair-aerial-v1 encoding."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest

from flair_deploy.aerial import (
    AERIAL_DIM,
    AERIAL_ENCODING,
    AERIAL_FIELDS,
    AerialRecord,
    aerial_spec,
    encode_aerial,
    encode_aerials,
    load_aerial_json,
    to_lambert93,
)
from flair_deploy.description import ModelDescription
from flair_deploy.errors import InputDataError

FLAIR_RECORD = {
    "patch_centroid_x": 650000.4,
    "patch_centroid_y": 6860000.2,
    "patch_centroid_z": 120.5,
    "camera": "UCE-M3-f120-s06",
    "date": "2021-06-15",
    "time": "10h32",
    "domain": "D075_2021",  # extra keys in the real files are ignored
}


def record(**updates) -> AerialRecord:
    return AerialRecord.from_flair({**FLAIR_RECORD, **updates})


def field(vec: np.ndarray, name: str) -> float:
    return float(vec[AERIAL_FIELDS.index(name)])


def test_from_flair_parses_every_field():
    r = record()
    assert (r.x, r.y, r.z) == (650000.4, 6860000.2, 120.5)
    assert r.camera == "UCE-M3-f120-s06"
    assert r.date == dt.date(2021, 6, 15)
    assert r.time == dt.time(10, 32)


@pytest.mark.parametrize(
    ("updates", "needle"),
    [
        ({"date": "15/06/2021"}, "date='15/06/2021'"),
        ({"time": "25h99"}, "time='25h99'"),
        ({"patch_centroid_x": "east"}, "patch_centroid_x='east'"),
        ({"camera": 3}, "camera=3"),
    ],
)
def test_from_flair_names_bad_value(updates, needle):
    with pytest.raises(InputDataError, match=needle.replace("(", r"\(")):
        record(**updates)


def test_from_flair_names_missing_key():
    rec = {k: v for k, v in FLAIR_RECORD.items() if k != "patch_centroid_z"}
    with pytest.raises(InputDataError, match="missing key 'patch_centroid_z'"):
        AerialRecord.from_flair(rec)


def test_encoding_shape_dtype_and_spec():
    vec = encode_aerial(record())
    assert vec.shape == (AERIAL_DIM,) and vec.dtype == np.float32
    assert len(AERIAL_FIELDS) == AERIAL_DIM == len(set(AERIAL_FIELDS))
    spec = aerial_spec()
    assert (spec.dim, spec.fields, spec.encoding) == (AERIAL_DIM, AERIAL_FIELDS, AERIAL_ENCODING)
    # The spec is accepted in a description and survives its JSON round trip.
    desc = ModelDescription(metadata=spec)
    assert ModelDescription.from_json(desc.to_json()).metadata == spec


def test_months_encode_differently():
    # IGN's month term is constant (precedence bug); every month must differ here.
    vecs = [encode_aerial(record(date=f"2021-{m:02d}-15")) for m in range(1, 13)]
    pairs = {(round(field(v, "month_sin"), 4), round(field(v, "month_cos"), 4)) for v in vecs}
    assert len(pairs) == 12
    # Cyclical: December is as close to January as February is.
    dec, jan, feb = vecs[11], vecs[0], vecs[1]

    def d(a, b):
        return np.hypot(
            field(a, "month_sin") - field(b, "month_sin"), field(a, "month_cos") - field(b, "month_cos")
        )

    assert d(dec, jan) == pytest.approx(d(jan, feb), abs=1e-6)


@pytest.mark.parametrize("year", [1995, 2017, 2022, 2031])
def test_any_year_encodes(year):
    vec = encode_aerial(record(date=f"{year}-02-29" if year % 4 == 0 else f"{year}-03-01"))
    assert np.isfinite(vec).all()
    assert field(vec, "year") == pytest.approx((year - 2020) / 5)


def test_coordinates_vary_across_france():
    brest = encode_aerial(record(patch_centroid_x=145_000, patch_centroid_y=6_837_000))
    strasbourg = encode_aerial(record(patch_centroid_x=1_050_000, patch_centroid_y=6_840_000))
    nice = encode_aerial(record(patch_centroid_x=1_045_000, patch_centroid_y=6_300_000))
    assert field(strasbourg, "x_norm") - field(brest, "x_norm") > 0.7
    assert field(strasbourg, "y_norm") - field(nice, "y_norm") > 0.4
    coords = [i for i, f in enumerate(AERIAL_FIELDS) if f.startswith(("x_", "y_"))]
    # Unlike IGN's /1e8 encoding, the position features move by O(1), not O(1e-3).
    assert np.abs(brest[coords] - strasbourg[coords]).max() > 0.5
    # Neighbours 300 m apart still differ (1 km wavelength), despite float32 outputs.
    near = encode_aerial(record(patch_centroid_x=145_300, patch_centroid_y=6_837_000))
    moved = np.hypot(
        field(near, "x_sin_1km") - field(brest, "x_sin_1km"),
        field(near, "x_cos_1km") - field(brest, "x_cos_1km"),
    )
    assert moved == pytest.approx(2 * np.sin(np.pi * 0.3), abs=1e-4)  # chord of a 0.3-turn arc


def test_camera_time_and_season():
    uce = encode_aerial(record())
    other = encode_aerial(record(camera="CAMERA#030"))
    assert (field(uce, "camera_uce"), field(uce, "camera_other")) == (1.0, 0.0)
    assert (field(other, "camera_uce"), field(other, "camera_other")) == (0.0, 1.0)
    noon = encode_aerial(record(time="12h00"))
    assert field(noon, "time_sin") == pytest.approx(0.0, abs=1e-6)
    assert field(noon, "time_cos") == pytest.approx(-1.0)
    assert field(encode_aerial(record(date="2021-01-01")), "doy_cos") == pytest.approx(1.0)


def test_encode_many_and_empty():
    assert encode_aerials([]).shape == (0, AERIAL_DIM)
    both = encode_aerials([record(), record(time="08h00")])
    assert both.shape == (2, AERIAL_DIM)
    np.testing.assert_array_equal(both[0], encode_aerial(record()))


def test_load_aerial_json_round_trip(tmp_path):
    path = tmp_path / "meta.json"
    path.write_text(json.dumps({"IMG_000001": FLAIR_RECORD, "IMG_000002": {**FLAIR_RECORD, "time": "09h05"}}))
    records = load_aerial_json(path)
    assert set(records) == {"IMG_000001", "IMG_000002"}
    assert records["IMG_000002"].time == dt.time(9, 5)
    np.testing.assert_array_equal(encode_aerial(records["IMG_000001"]), encode_aerial(record()))


def test_load_aerial_json_errors(tmp_path):
    with pytest.raises(InputDataError, match="cannot read aerial metadata"):
        load_aerial_json(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputDataError, match="not valid JSON"):
        load_aerial_json(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(InputDataError, match="keyed by image stem"):
        load_aerial_json(bad)
    bad.write_text(json.dumps({"IMG_7": {**FLAIR_RECORD, "date": "yesterday"}}))
    with pytest.raises(InputDataError, match=r"IMG_7.*date='yesterday'"):
        load_aerial_json(bad)


def test_to_lambert93():
    assert to_lambert93(650_000.0, 6_860_000.0, "EPSG:2154") == (650_000.0, 6_860_000.0)
    # Lambert-93's projection origin (3°E, 46.5°N) is defined as (700 000, 6 600 000).
    x, y = to_lambert93(3.0, 46.5, "EPSG:4326")
    assert (x, y) == (pytest.approx(700_000, abs=0.01), pytest.approx(6_600_000, abs=0.01))
    with pytest.raises(InputDataError, match="no CRS"):
        to_lambert93(0.0, 0.0, None)
    with pytest.raises(InputDataError, match="cannot understand CRS"):
        to_lambert93(0.0, 0.0, "EPSG:not-a-code")
