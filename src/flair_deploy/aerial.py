"""FLAIR aerial metadata: parsing and the ``flair-aerial-v1`` encoding.

FLAIR #1 ships, beside its patches, a JSON file keyed by image stem (``"IMG_002993"``) whose records
describe the acquisition: ``patch_centroid_x`` / ``patch_centroid_y`` (Lambert-93, EPSG:2154, metres),
``patch_centroid_z`` (altitude, metres), ``camera`` (e.g. ``"UCE-M3-f120-s06"``), ``date``
(``"YYYY-MM-DD"``) and ``time`` (``"HHhMM"``). :func:`encode_aerial` turns one record into a fixed-length
float32 vector, the second input of metadata models.

The ``flair-aerial-v1`` vector has :data:`AERIAL_DIM` = 40 components, in this order:

===================  ====  =================================================================================
component            n     value
===================  ====  =================================================================================
``x_norm, y_norm``   2     position in France's Lambert-93 extent, ``(x - 100 km) / 1150 km`` and
                           ``(y - 6040 km) / 1080 km``: about 0 to 1 over metropolitan France and Corsica.
``x_sin_<λ>`` ...    28    ``sin`` and ``cos`` of ``2π·x/λ`` and ``2π·y/λ`` for the wavelengths λ = 1000,
                           300, 100, 30, 10, 3 and 1 km, ordered x-sin, x-cos, y-sin, y-cos per λ. The long
                           wavelengths say the region, the short ones the neighbourhood.
``altitude_km``      1     ``z / 1000``: altitude in kilometres (about -0.01 to 4.8 in France).
``camera_uce``,      2     one-hot camera family: ``UCE`` in the camera name (IGN's UltraCam Eagle), or any
``camera_other``           other sensor.
``year``             1     ``(year - 2020) / 5``: continuous, so any year works (IGN's one-hot crashed
                           outside 2018-2021).
``month_sin/cos``    2     ``sin/cos(2π·(month - 1) / 12)``: proper cyclical month (IGN's was constant).
``doy_sin/cos``      2     ``sin/cos(2π·(day_of_year - 1) / days_in_year)``: season at daily resolution.
``time_sin/cos``     2     ``sin/cos(2π·seconds_since_midnight / 86400)``: time of day (sun elevation).
===================  ====  =================================================================================

Sines and cosines stay in ``[-1, 1]``; nothing is clipped, so coordinates outside France or altitudes
above Mont Blanc still encode (they only fall outside the range seen in training).

Why not IGN's encoding: its month term is constant for every month (an operator-precedence bug), its
coordinate term divides by 1e8 so it barely varies over France, and years outside 2018-2021 raise.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from flair_deploy.description import MetadataSpec
from flair_deploy.errors import InputDataError

__all__ = [
    "AERIAL_DIM",
    "AERIAL_ENCODING",
    "AERIAL_FIELDS",
    "LAMBERT93",
    "AerialRecord",
    "aerial_spec",
    "encode_aerial",
    "encode_aerials",
    "load_aerial_json",
    "to_lambert93",
]

AERIAL_ENCODING = "flair-aerial-v1"
LAMBERT93 = "EPSG:2154"

# France's Lambert-93 extent (metropolitan France + Corsica, with a margin), in metres.
_X_MIN, _X_SPAN = 100_000.0, 1_150_000.0
_Y_MIN, _Y_SPAN = 6_040_000.0, 1_080_000.0
# Wavelengths of the sinusoidal position features, in kilometres (region → neighbourhood).
_WAVELENGTHS_KM: tuple[int, ...] = (1000, 300, 100, 30, 10, 3, 1)
_YEAR_CENTRE, _YEAR_SCALE = 2020.0, 5.0

AERIAL_FIELDS: tuple[str, ...] = (
    "x_norm",
    "y_norm",
    *(f"{axis}_{fn}_{wl}km" for wl in _WAVELENGTHS_KM for axis in ("x", "y") for fn in ("sin", "cos")),
    "altitude_km",
    "camera_uce",
    "camera_other",
    "year",
    "month_sin",
    "month_cos",
    "doy_sin",
    "doy_cos",
    "time_sin",
    "time_cos",
)
AERIAL_DIM = len(AERIAL_FIELDS)

_TIME_RE = re.compile(r"^\s*(\d{1,2})\s*[hH:]\s*(\d{1,2})(?:\s*[:m]\s*(\d{1,2}))?\s*$")


class AerialRecord(BaseModel):
    """One patch's acquisition metadata.

    Attributes:
        x: Easting of the patch centre, Lambert-93 metres.
        y: Northing of the patch centre, Lambert-93 metres.
        z: Altitude of the patch centre, metres.
        camera: Camera name, e.g. ``"UCE-M3-f120-s06"``.
        date: Acquisition date.
        time: Acquisition time of day.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    x: float
    y: float
    z: float
    camera: str
    date: dt.date
    time: dt.time

    @classmethod
    def from_flair(cls, mapping: Mapping[str, Any], *, source: str = "aerial metadata") -> AerialRecord:
        """Parse one record of a FLAIR metadata JSON.

        Args:
            mapping: The record, with FLAIR's keys ``patch_centroid_x``, ``patch_centroid_y``,
                ``patch_centroid_z``, ``camera``, ``date`` (``YYYY-MM-DD``) and ``time`` (``HHhMM``).
                Further keys are ignored.
            source: What the record is (file and stem), for error messages.

        Returns:
            The parsed record.

        Raises:
            InputDataError: If a key is missing or a value cannot be parsed; the message names both.
        """
        if not isinstance(mapping, Mapping):
            raise InputDataError(
                f"{source}: expected a JSON object with patch_centroid_x/y/z, camera, date, time; "
                f"got {type(mapping).__name__}"
            )

        def get(key: str) -> Any:
            if key not in mapping:
                raise InputDataError(
                    f"{source}: missing key {key!r} (have {sorted(mapping)}); FLAIR aerial records need "
                    "patch_centroid_x, patch_centroid_y, patch_centroid_z, camera, date, time"
                )
            return mapping[key]

        def number(key: str) -> float:
            value = get(key)
            try:
                out = float(value)
            except (TypeError, ValueError):
                raise InputDataError(f"{source}: {key}={value!r} is not a number") from None
            if not math.isfinite(out):
                raise InputDataError(f"{source}: {key}={value!r} is not a finite number")
            return out

        x, y, z = number("patch_centroid_x"), number("patch_centroid_y"), number("patch_centroid_z")
        camera = get("camera")
        if not isinstance(camera, str):
            raise InputDataError(f"{source}: camera={camera!r} is not a string (e.g. 'UCE-M3-f120-s06')")
        raw_date = get("date")
        try:
            date = dt.date.fromisoformat(str(raw_date).strip())
        except ValueError:
            raise InputDataError(f"{source}: date={raw_date!r} is not a date in YYYY-MM-DD form") from None
        raw_time = get("time")
        match = _TIME_RE.match(str(raw_time))
        try:
            if match is None:
                raise ValueError
            time = dt.time(int(match[1]), int(match[2]), int(match[3] or 0))
        except ValueError:
            raise InputDataError(
                f"{source}: time={raw_time!r} is not a time of day in FLAIR's HHhMM form (e.g. '10h32')"
            ) from None
        return cls(x=x, y=y, z=z, camera=camera, date=date, time=time)


def encode_aerial(record: AerialRecord) -> np.ndarray:
    """Encode one record as the ``flair-aerial-v1`` vector (see the module docstring).

    Args:
        record: The acquisition metadata of one patch or tile.

    Returns:
        A float32 array of shape ``(AERIAL_DIM,)``.
    """
    out: list[float] = [(record.x - _X_MIN) / _X_SPAN, (record.y - _Y_MIN) / _Y_SPAN]
    for wl in _WAVELENGTHS_KM:
        # Phases are computed in float64: x/λ reaches ~1000 for λ = 1 km, where float32 loses the decimals.
        for coord in (record.x, record.y):
            phase = 2.0 * math.pi * coord / (wl * 1000.0)
            out += [math.sin(phase), math.cos(phase)]
    out.append(record.z / 1000.0)
    uce = "UCE" in record.camera.upper()
    out += [1.0 if uce else 0.0, 0.0 if uce else 1.0]
    out.append((record.date.year - _YEAR_CENTRE) / _YEAR_SCALE)
    month = 2.0 * math.pi * (record.date.month - 1) / 12.0
    days = 366 if _is_leap(record.date.year) else 365
    doy = 2.0 * math.pi * (record.date.timetuple().tm_yday - 1) / days
    t = record.time
    tod = 2.0 * math.pi * (t.hour * 3600 + t.minute * 60 + t.second) / 86400.0
    out += [math.sin(month), math.cos(month), math.sin(doy), math.cos(doy), math.sin(tod), math.cos(tod)]
    return np.asarray(out, dtype=np.float32)


def encode_aerials(records: Iterable[AerialRecord]) -> np.ndarray:
    """Encode several records as a float32 ``(N, AERIAL_DIM)`` array (N may be 0)."""
    rows = [encode_aerial(r) for r in records]
    if not rows:
        return np.zeros((0, AERIAL_DIM), dtype=np.float32)
    return np.stack(rows)


def aerial_spec(hidden: tuple[int, ...] = (64, 128)) -> MetadataSpec:
    """Return the :class:`MetadataSpec` of this encoding, for a metadata model's description.

    Args:
        hidden: Hidden widths of the metadata MLP.
    """
    return MetadataSpec(encoding=AERIAL_ENCODING, dim=AERIAL_DIM, fields=AERIAL_FIELDS, hidden=hidden)


def load_aerial_json(path: Path) -> dict[str, AerialRecord]:
    """Read a FLAIR aerial metadata JSON file.

    Args:
        path: JSON object keyed by image stem (``"IMG_002993"``), one FLAIR record per patch.

    Returns:
        The parsed records, keyed by stem.

    Raises:
        InputDataError: If the file is missing, is not JSON, is not an object, or holds an invalid record.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise InputDataError(
            f"cannot read aerial metadata {path}: {exc.strerror or exc}; give the FLAIR metadata JSON "
            "(e.g. flair-1_metadata_aerial.json)"
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputDataError(
            f"aerial metadata {path} is not valid JSON: {exc.msg} at line {exc.lineno}"
        ) from None
    if not isinstance(data, dict):
        raise InputDataError(
            f"aerial metadata {path}: expected a JSON object keyed by image stem (e.g. 'IMG_002993'), "
            f"got a JSON {type(data).__name__}"
        )
    return {
        str(stem): AerialRecord.from_flair(rec, source=f"aerial metadata {path} [{stem!r}]")
        for stem, rec in data.items()
    }


def to_lambert93(x: float, y: float, crs: Any) -> tuple[float, float]:
    """Return the Lambert-93 (EPSG:2154) coordinates of a point given in *crs*.

    Inference knows tile centres in the raster's CRS; the metadata encoding needs Lambert-93.

    Args:
        x: Easting (or longitude) in *crs*.
        y: Northing (or latitude) in *crs*.
        crs: Anything :class:`rasterio.crs.CRS` understands (``"EPSG:2154"``, a ``CRS``, WKT).

    Returns:
        ``(x, y)`` in Lambert-93 metres; unchanged when *crs* already is Lambert-93.

    Raises:
        InputDataError: If *crs* is missing or cannot be understood.
    """
    from rasterio.crs import CRS
    from rasterio.errors import CRSError
    from rasterio.warp import transform

    if crs is None:
        raise InputDataError(
            "the raster has no CRS, so its position cannot be encoded as Lambert-93 metadata; "
            "georeference it (e.g. gdal_edit.py -a_srs EPSG:2154)"
        )
    try:
        src = crs if isinstance(crs, CRS) else CRS.from_user_input(crs)
    except (CRSError, ValueError) as exc:
        raise InputDataError(f"cannot understand CRS {crs!r}: {exc}; give e.g. 'EPSG:2154'") from None
    if src.to_epsg() == 2154:
        return float(x), float(y)
    xs, ys = transform(src, CRS.from_epsg(2154), [x], [y])
    return float(xs[0]), float(ys[0])


def _is_leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
