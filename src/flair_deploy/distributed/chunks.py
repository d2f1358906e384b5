"""One chunk of a map as a unit of work: computed into its own GeoTIFFs, then assembled.

A worker maps one :class:`~flair_deploy.inference.chunks.Chunk` of a raster with its backend through
detect's own pipeline (:func:`~flair_deploy.inference.pipeline.run_raster` with ``chunks=[chunk]``),
writing the chunk's output box into small GeoTIFFs of their own (written atomically: hidden temporary,
then rename; tags and colour table as detect's maps). The chunk files carry logit indices (255 where
there is no prediction), so that assembling them is :class:`~flair_deploy.inference.raster.OutputWriter`'s
ordinary work: the assembled map, its tags, colours, overviews and COG option are those of a
single-process ``detect``, pixel for pixel (chunk boxes are aligned with output blocks, and a pixel's
value does not depend on the chunking).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import rasterio
from affine import Affine

from flair_deploy.description import ModelDescription, file_sha256
from flair_deploy.errors import InputDataError
from flair_deploy.inference.chunks import Box, Chunk
from flair_deploy.inference.config import DetectConfig
from flair_deploy.inference.pipeline import MetadataFn, StageSeconds, run_raster
from flair_deploy.inference.raster import OutputPaths, OutputWriter, RasterInfo
from flair_deploy.inference.stitching import NO_CLASS, OutputChunk
from flair_deploy.inference.tiling import TilingPlan

__all__ = ["ChunkResult", "assemble", "chunk_paths", "map_chunk"]


@dataclass(frozen=True, slots=True)
class ChunkResult:
    """What mapping one chunk did.

    Attributes:
        chunk_id: The chunk's id (``r0003c0012``).
        raster: The input raster.
        checksum: SHA-256 of the chunk's class file.
        tiles: Tiles the chunk computed.
        seconds: Per-stage seconds.
    """

    chunk_id: str
    raster: str
    checksum: str
    tiles: int
    seconds: StageSeconds


def chunk_paths(folder: Path, chunk: Chunk, final: OutputPaths) -> OutputPaths:
    """The chunk files of *chunk* in *folder*, one per output of *final*."""
    stem = chunk.id
    return OutputPaths(
        final.source,
        folder / f"{stem}_classes.tif",
        folder / f"{stem}_proba.tif" if final.probabilities is not None else None,
        folder / f"{stem}_confidence.tif" if final.confidence is not None else None,
    )


def _window_info(info: RasterInfo, box: Box) -> RasterInfo:
    transform = info.transform * Affine.translation(box.col0, box.row0)
    return dataclasses.replace(info, width=box.width, height=box.height, transform=transform)


class _Shifted:
    """The writer of a chunk's own files, fed rows in raster coordinates."""

    def __init__(self, writer: OutputWriter, box: Box) -> None:
        self._writer, self._box = writer, box
        self.block = writer.block

    def write(self, rows: OutputChunk) -> None:
        self._writer.write(
            dataclasses.replace(rows, row=rows.row - self._box.row0, col=rows.col - self._box.col0)
        )


def map_chunk(
    backend: Any,
    info: RasterInfo,
    plan: TilingPlan,
    chunk: Chunk,
    paths: OutputPaths,
    cfg: DetectConfig,
    *,
    batch_size: int,
    tags: Mapping[str, str],
    metadata_fn: MetadataFn | None = None,
) -> ChunkResult:
    """Map one chunk into its own files with an active backend.

    Raises:
        FlairDeployError: Bad input (an unreadable window names the file and the window), full disk.
    """
    # Logit indices with 255 for "no prediction" (never an index): assembly maps them to codes and the
    # model's nodata exactly as detect's writer does.
    raw = backend.description.model_copy(update={"nodata": NO_CLASS})
    writer = OutputWriter(
        _window_info(info, chunk.output),
        paths,
        raw,
        indices=True,
        sidecars=False,  # intermediate files: the assembled map gets the QGIS style and categories
        block=cfg.block_size,
        compress=cfg.compress,
        overviews=False,
        tags=dict(tags),
    )
    # A bounded GDAL block cache, as detect's (GDAL's default, 5 % of RAM per worker, grows with the job).
    with rasterio.Env(GDAL_CACHEMAX=cfg.gdal_cache_mb * 2**20), writer:
        run = run_raster(
            backend,
            info,
            _Shifted(writer, chunk.output),  # type: ignore[arg-type]
            plan,
            chunks=[chunk],
            batch_size=batch_size,
            readers=cfg.reader_threads()[0],
            prefetch=cfg.reader_threads()[1],
            pad_mode=cfg.pad_mode,
            metadata_fn=metadata_fn,
            probabilities=cfg.probabilities,
            confidence=cfg.confidence,
        )
    return ChunkResult(chunk.id, str(info.path), file_sha256(paths.classes), run.inferred, run.seconds)


def assemble(
    info: RasterInfo,
    description: ModelDescription,
    final: OutputPaths,
    parts: Sequence[tuple[Chunk, OutputPaths]],
    cfg: DetectConfig,
    *,
    tags: Mapping[str, str],
) -> None:
    """Write a raster's final outputs from its committed chunk files (detect's writer, atomically).

    Raises:
        InputDataError: If a chunk file is missing or unreadable (the ledger and the files disagree).
        OutputError: If the outputs cannot be written.
    """
    from flair_deploy.inference.detect import map_writer

    with map_writer(cfg, info, final, description, tags) as writer:
        for chunk, files in parts:
            box = chunk.output
            try:
                with rasterio.open(files.classes) as ds:
                    classes = ds.read(1)
                probs = conf = None
                if files.probabilities is not None:
                    with rasterio.open(files.probabilities) as ds:
                        probs = ds.read()
                if files.confidence is not None:
                    with rasterio.open(files.confidence) as ds:
                        conf = ds.read(1)
            except rasterio.errors.RasterioError as exc:
                raise InputDataError(
                    f"chunk {chunk.id} of {info.path.name} cannot be read back from {files.classes.parent}: "
                    f"{str(exc).splitlines()[0]}; rerun the job to recompute it"
                ) from None
            for a in range(0, box.height, cfg.block_size):
                b = min(a + cfg.block_size, box.height)
                writer.write(
                    OutputChunk(
                        box.row0 + a,
                        classes[a:b],
                        None if conf is None else conf[a:b],
                        None if probs is None else probs[:, a:b],
                        box.col0,
                    )
                )
