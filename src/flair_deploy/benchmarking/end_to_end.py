"""End-to-end measurement: detect's real pipeline on a raster, with the backend the model-only row used.

Nothing is re-implemented here: :func:`~flair_deploy.inference.detect.run_detection` maps the raster
(reading, preprocessing, inference, stitching, writing, overlapped as in ``flair-deploy detect``) into a
temporary folder that is deleted afterwards, and every number of the row comes from its
:class:`~flair_deploy.inference.detect.DetectSummary`, which is also stored whole in the row, so the
benchmark and detect's own closing summary cannot disagree.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

from flair_deploy.benchmarking.fingerprint import Ceiling
from flair_deploy.benchmarking.report import Mode, Row, Status
from flair_deploy.benchmarking.timing import MemoryPeak
from flair_deploy.errors import FlairDeployError
from flair_deploy.inference.backends import Backend

__all__ = ["run_end_to_end"]


def run_end_to_end(
    backend: Backend,
    *,
    row: Row,
    raster: Path,
    ceiling: Ceiling | None,
    options: dict[str, Any] | None = None,
) -> Row:
    """Map *raster* with detect's pipeline on an active *backend* and return the end-to-end row.

    Args:
        backend: The active backend of the model-only row.
        row: The model-only row (backend, precision, variant, batch and tile are copied from it).
        raster: The raster to map.
        ceiling: The hardware ceiling at the row's precision, for the fraction reached.
        options: Further :class:`~flair_deploy.inference.config.DetectConfig` fields (e.g.
            ``{"stitching": "crop"}``); the default is detect's default (blend, overviews).

    Returns:
        The end-to-end row; a failed row with the error when detect refuses the raster.
    """
    from flair_deploy.inference.config import DetectConfig
    from flair_deploy.inference.detect import run_detection

    base = row.model_copy(
        update={
            "mode": Mode.END_TO_END,
            "raster": str(raster),
            "iterations": 1,
            "setup_s": None,
            "warmup_s": None,
            "p50_ms": None,
            "p90_ms": None,
            "p99_ms": None,
            "mean_ms": None,
            "argmax_agreement": None,
            "max_abs_dlogit": None,
            "peak_device_mib": None,
        }
    )
    with tempfile.TemporaryDirectory(prefix="flair-bench-") as tmp:
        try:
            cfg = DetectConfig(
                inputs=(raster,),
                output=Path(tmp) / "map.tif",
                tile_size=row.tile,
                batch_size=row.batch or 1,
                device=backend.device,
                # The benchmark measures speed: a raster at another GSD is still a valid workload.
                allow_gsd_mismatch=True,
                overwrite=True,
                **(options or {}),
            )
            with MemoryPeak(device=backend.device) as mem:
                summary = run_detection(backend, cfg)
        except FlairDeployError as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return base.model_copy(
                update={
                    "status": Status.FAILED,
                    "reason": reason,
                    "tiles_per_s": None,
                    "mpx_per_s": None,
                    "achieved_gflops": None,
                    "ceiling_fraction": None,
                    "stages": None,
                }
            )
    wall = summary.seconds.wall
    tps = summary.tiles_per_s
    achieved = tps * row.gflop_per_tile if row.gflop_per_tile is not None else None
    return base.model_copy(
        update={
            "tiles_per_s": tps,
            "mpx_per_s": summary.mpx_per_s,
            "km2_per_h": summary.km2 / wall * 3600.0 if wall > 0 else None,
            "compute_busy": summary.busy,
            "stages": dataclasses.asdict(summary.seconds),
            "achieved_gflops": achieved,
            "ceiling_fraction": achieved / ceiling.gflops if achieved is not None and ceiling else None,
            "peak_rss_mib": summary.peak_rss_mb,  # detect's own figure, as in its closing summary
            "peak_device_mib": mem.device_peak_mib,
            "detect": summary.as_dict(),
        }
    )
