"""What a benchmark feeds the model: realistic tiles and the work (FLOP) each one costs.

Timings on all-zero inputs can flatter some runtimes and make parity meaningless, so tiles come from a
raster when one is given (:func:`raster_tiles`) and otherwise from the project's sample-world generator
(:func:`flair_deploy.sample.sample_tiles`: land-cover patches, buildings and roads with FLAIR-like
spectra and elevation).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import numpy.typing as npt

from flair_deploy.description import ModelDescription
from flair_deploy.errors import InputDataError

__all__ = ["UNET_RESNET34_GFLOP_512", "gflop_per_tile", "raster_tiles"]

#: Forward-pass cost of the FLAIR U-Net/ResNet-34 on one 512 x 512 tile (2 FLOP per multiply-add),
#: the figure the project's ceilings are drawn with. Counting with torch's FlopCounterMode gives 64.7.
UNET_RESNET34_GFLOP_512 = 64.4


def raster_tiles(path: Path, description: ModelDescription, count: int, tile: int) -> npt.NDArray[np.float32]:
    """Read *count* tiles of *tile* pixels from a raster, spread over its extent.

    The first ``in_channels`` bands are read in file order (the benchmark does not remap bands; detect
    does that for the end-to-end mode). Tiles repeat when the raster holds fewer than *count*.

    Raises:
        InputDataError: If the raster cannot be read, is smaller than one tile or has too few bands.
    """
    import rasterio
    from rasterio.errors import RasterioIOError
    from rasterio.windows import Window

    c = description.in_channels
    try:
        with rasterio.open(path) as src:
            if src.count < c:
                raise InputDataError(
                    f"{path} has {src.count} bands but the model takes {c} ({', '.join(description.bands)}); "
                    "give a raster with the model's bands"
                )
            if src.width < tile or src.height < tile:
                raise InputDataError(
                    f"{path} is {src.width}x{src.height} px, smaller than one {tile}-px tile; "
                    "give a larger raster or a smaller --tile"
                )
            per_row = src.width // tile
            available = per_row * (src.height // tile)
            picks = np.linspace(0, available - 1, num=min(count, available)).round().astype(int)
            tiles = [
                src.read(
                    list(range(1, c + 1)),
                    window=Window((k % per_row) * tile, (k // per_row) * tile, tile, tile),
                )
                for k in picks
            ]
    except RasterioIOError as exc:
        raise InputDataError(f"cannot read raster {path}: {exc}; give a GeoTIFF or VRT") from None
    stack = np.stack(tiles).astype(np.float32)
    reps = math.ceil(count / len(stack))
    return np.ascontiguousarray(np.concatenate([stack] * reps)[:count])


@functools.cache
def _count_gflop(description_json: str, tile: int) -> float | None:
    try:
        import torch
        from torch.utils.flop_counter import FlopCounterMode

        from flair_deploy.models import build_model
    except ImportError:  # the runtime install has no torch: the rows say the cost is unknown
        return None

    desc = ModelDescription.from_json(description_json)
    try:
        # On the meta device nothing is allocated or computed: only shapes flow, which is all FLOP counting needs.
        with torch.device("meta"):
            model = build_model(desc).eval()
            image = torch.empty(1, desc.in_channels, tile, tile)
            metadata = torch.empty(1, desc.metadata.dim) if desc.metadata is not None else None
            with FlopCounterMode(display=False) as counter, torch.no_grad():
                model(image, metadata)
    except Exception:  # noqa: BLE001  (counting is best effort; the caller falls back to the table)
        return None
    return float(counter.get_total_flops()) / 1e9


def gflop_per_tile(description: ModelDescription, tile: int) -> float | None:
    """Return the forward-pass cost of one *tile*-px tile in GFLOP.

    The FLAIR U-Net/ResNet-34 uses the project's reference figure (64.4 GFLOP per 512² tile, scaled
    with the pixel count); other architectures are counted with ``torch.utils.flop_counter`` on the
    meta device (convolutions and matrix products, 2 FLOP per multiply-add).

    Returns:
        GFLOP per tile, or None when the network cannot be built for counting.
    """
    arch = description.architecture
    if arch.arch.lower() == "unet" and arch.encoder == "resnet34" and arch.encoder_depth == 5:
        return UNET_RESNET34_GFLOP_512 * (tile * tile) / (512 * 512)
    return _count_gflop(description.to_json(), tile)
