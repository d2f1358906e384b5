"""``export_model``: checkpoint → verified ONNX (FP32, FP16, INT8) → TensorRT engines, all or nothing.

Steps, each shown with its duration when ``progress`` is on:

1. load the checkpoint (ours, or IGN weights described by a preset or flags);
2. check every precondition and every input before any artifact is written: ``keep_fp32`` patterns,
   the output folder, existing artifacts, free space for the estimated output size, TensorRT and a
   GPU when asked, the parity tiles (validation CSV, else synthetic tiles) and the calibration tiles;
3. run PyTorch once on the parity tiles;
4. export FP32 ONNX, then FP16 and/or INT8 from it; after each, check parity against PyTorch and
   stamp the parity summary into the artifact's description;
5. write the QGIS Deepness / GeoDeep variant of every kept ONNX file asked for (``qgis_tools``)
   and check its argmax agreement against PyTorch under the same gate;
6. build a TensorRT engine (and sidecar) for every ONNX variant;
7. write ``<name>.parity.json`` and ``<name>.parity.md``.

Every artifact is written under a hidden temporary name (:class:`~flair_deploy.atomic.OutputSet`)
and they all appear together when the export succeeds. A failure of any step (a calibration error,
a full disk, an interrupt) leaves nothing in the output folder, so the fixed rerun needs no
``--overwrite``.

A variant that fails its parity gate fails the whole export (unless ``verify`` is off): *no* model
artifact is kept, not even the variants that passed, because a partial set would look like a
finished export and block the rerun. Only the parity reports are kept, as the explanation; they
never block a rerun (reports without their artifacts beside them are replaced), and the export
raises :class:`~flair_deploy.errors.ParityError`. With ``overwrite``, an earlier export in the
folder is left whole, reports included.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from flair_deploy.atomic import (
    OutputSet,
    check_destination,
    check_free_space,
    nearest_existing,
    output_error,
    remove_stale_temporaries,
)
from flair_deploy.checkpoints import LoadedModel, load_checkpoint
from flair_deploy.description import (
    ArchitectureSpec,
    ModelDescription,
    Normalization,
    Precision,
    class_preset,
)
from flair_deploy.errors import ConfigError, OutputError, ParityError
from flair_deploy.exports.calibration import TileSet, read_tiles, synthetic_tiles
from flair_deploy.exports.config import ExportConfig
from flair_deploy.exports.onnx import export_onnx, restamp_onnx
from flair_deploy.exports.parity import (
    ParityResult,
    compare_logits,
    onnx_logits,
    reference_logits,
    render_reports,
)
from flair_deploy.exports.precision import check_node_patterns, convert_fp16, quantize_int8
from flair_deploy.exports.qgis_tools import (
    QgisTool,
    check_supported,
    qgis_note,
    variant_agreement,
    variant_path,
    write_variant,
)
from flair_deploy.exports.tensorrt import EngineFacts, build_engine, gpu_compute_capability, sidecar_path
from flair_deploy.flair_format import FLAIR_BANDS, flair_statistics
from flair_deploy.models import FlairSegmenter

__all__ = [
    "ExportResult",
    "describe_from_flags",
    "estimated_output_bytes",
    "export_model",
    "planned_artifacts",
]


@dataclass(frozen=True)
class ExportResult:
    """What an export produced.

    Attributes:
        out_dir: The output folder.
        name: Artifact base name.
        onnx: Verified ONNX files by precision.
        engines: TensorRT engines by precision (their sidecars are ``<engine>.json``).
        engine_facts: Facts of each engine.
        parity: One result per checked variant.
        parity_json: The JSON report.
        parity_markdown: The Markdown report.
        description: The FP32 artifact's description.
        removed: Artifacts that were not kept (empty: an export that returns kept everything).
        qgis_variants: QGIS-tool variants by (precision, tool).
        qgis_agreement: Each variant's argmax agreement with PyTorch on the parity tiles.
        qgis_notes: Why artifacts without a Deepness variant would not map correctly in Deepness.
    """

    out_dir: Path
    name: str
    onnx: dict[Precision, Path]
    engines: dict[Precision, Path]
    engine_facts: dict[Precision, EngineFacts]
    parity: tuple[ParityResult, ...]
    parity_json: Path
    parity_markdown: Path
    description: ModelDescription
    removed: tuple[Path, ...] = field(default=())
    qgis_variants: dict[tuple[Precision, QgisTool], Path] = field(default_factory=dict)
    qgis_agreement: dict[tuple[Precision, QgisTool], float] = field(default_factory=dict)
    qgis_notes: tuple[str, ...] = field(default=())

    @property
    def passed(self) -> bool:
        """Whether every variant passed its parity gate."""
        return all(r.passed for r in self.parity)


class _Steps:
    """Prints one line per finished step (rich, on stderr) with a spinner while it runs."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._console = None
        if enabled:
            from rich.console import Console

            self._console = Console(stderr=True)

    @contextlib.contextmanager
    def step(self, text: str) -> Iterator[None]:
        if self._console is None:
            yield
            return
        start = time.perf_counter()
        with self._console.status(text + " …"):
            yield
        self._console.print(f"[green]✓[/green] {text} [dim]({time.perf_counter() - start:.1f} s)[/dim]")

    def note(self, text: str) -> None:
        if self._console is not None:
            self._console.print(text)


def describe_from_flags(cfg: ExportConfig) -> ModelDescription | None:
    """Build a description from ``bands`` / ``classes_preset`` / ``arch`` / ``encoder`` / ``hf_model``.

    Returns:
        None when no such flag is given.

    Raises:
        ConfigError: For a band without FLAIR statistics.
    """
    flags = (cfg.bands, cfg.classes_preset, cfg.arch, cfg.encoder, cfg.hf_model)
    if all(f is None for f in flags):
        return None
    bands = cfg.bands or FLAIR_BANDS
    unknown = [b for b in bands if b not in FLAIR_BANDS]
    if unknown:
        raise ConfigError(
            f"band(s) {unknown} have no FLAIR statistics; use names from {', '.join(FLAIR_BANDS)} "
            "or export from a self-describing checkpoint"
        )
    mean, std = flair_statistics(bands)
    if cfg.hf_model is not None:
        from flair_deploy.hf_models import hf_architecture

        arch = hf_architecture(cfg.hf_model, source="--hf-model")
    else:
        arch = ArchitectureSpec(arch=cfg.arch or "unet", encoder=cfg.encoder or "resnet34")
    classes = class_preset(cfg.classes_preset or "flair19")
    return ModelDescription(
        name=f"flair-{arch.arch}-{arch.encoder}-{''.join(b.lower()[0] for b in bands)}-{len(classes)}cl",
        bands=tuple(bands),
        normalization=Normalization(mean=mean, std=std),
        classes=classes,
        architecture=arch,
    )


def _load(cfg: ExportConfig) -> LoadedModel:
    flags = describe_from_flags(cfg)
    return load_checkpoint(cfg.checkpoint, description=flags, preset=cfg.describer())


def _artifact_name(cfg: ExportConfig, description: ModelDescription) -> str:
    if cfg.name:
        return cfg.name
    return re.sub(r"[^A-Za-z0-9_.+-]+", "-", description.name).strip("-.") or "model"


def planned_artifacts(cfg: ExportConfig, name: str) -> list[Path]:
    """Return every file an export with *cfg* writes into ``cfg.out_dir`` (models, then reports)."""
    return _model_artifacts(cfg, name) + list(_report_paths(cfg, name))


def _model_artifacts(cfg: ExportConfig, name: str) -> list[Path]:
    precisions = [Precision.FP32] + [Precision.FP16] * cfg.fp16 + [Precision.INT8] * cfg.int8
    onnx = [cfg.out_dir / f"{name}.{p.value}.onnx" for p in precisions]
    out = onnx + [variant_path(path, tool) for path in onnx for tool in cfg.qgis_tools]
    if cfg.tensorrt:
        for p in precisions:
            engine = cfg.out_dir / f"{name}.{p.value}.engine"
            out += [engine, sidecar_path(engine)]
    return out


def _report_paths(cfg: ExportConfig, name: str) -> tuple[Path, Path]:
    return cfg.out_dir / f"{name}.parity.json", cfg.out_dir / f"{name}.parity.md"


def estimated_output_bytes(cfg: ExportConfig, model: FlairSegmenter) -> int:
    """Estimate the disk space an export needs at its peak, temporaries included.

    The FP32 graph holds every weight in 4 bytes, FP16 in 2 and INT8 in about 1; an engine is about
    the size of its ONNX graph. INT8 quantization briefly keeps two scratch graphs, and re-stamping a
    variant's description briefly holds a second copy of it.
    """
    weights = sum(t.numel() for t in model.parameters()) + sum(t.numel() for t in model.buffers())
    fp32 = 4 * weights
    onnx = fp32 * (1.0 + 0.5 * cfg.fp16 + 0.25 * cfg.int8) * (1 + len(cfg.qgis_tools))
    engines = onnx if cfg.tensorrt else 0.0
    scratch = 2 * fp32 if cfg.int8 else 0
    return int(onnx + engines + scratch + fp32) + (1 << 20)


def _check_outputs(cfg: ExportConfig, name: str, model: FlairSegmenter) -> None:
    folder = nearest_existing(cfg.out_dir)
    if not folder.is_dir():
        raise OutputError(
            f"cannot create output folder {cfg.out_dir}: {folder} is a file; choose another --out"
        )
    models = _model_artifacts(cfg, name)
    existing = [p for p in models if p.exists()]
    if existing and not cfg.overwrite:
        raise OutputError(
            f"{existing[0]} exists ({len(existing)} artifact(s) in the way) and won't be overwritten; "
            "add --overwrite or choose another --out / --name"
        )
    for path in planned_artifacts(cfg, name):
        # Reports without their artifacts are a failed attempt's explanation: always replaced.
        check_destination(path, overwrite=True, what="export artifact")
        # Temporaries of a killed export (never of a running one) only take space.
        remove_stale_temporaries(path)
    check_free_space(cfg.out_dir, estimated_output_bytes(cfg, model), what=f"the {name} export")


def _with_tile(description: ModelDescription, tile: int | None) -> ModelDescription:
    if tile is None or tile == description.tile_size:
        return description
    # The suggested overlap keeps its share of the tile (an IGN description's 128 of 512 is 16 of 64).
    overlap = description.overlap * tile // description.tile_size
    try:
        return ModelDescription.model_validate(
            {**description.model_dump(), "tile_size": tile, "overlap": overlap}
        )
    except ValidationError as exc:
        raise ConfigError(f"--tile {tile} does not fit the model: {exc.errors()[0]['msg']}") from None


def export_model(cfg: ExportConfig, *, progress: bool = True) -> ExportResult:
    """Run the whole export described by *cfg*.

    Args:
        cfg: The validated export configuration.
        progress: Show each step and its duration on stderr.

    Returns:
        The artifacts and parity results.

    Raises:
        CheckpointError: Unknown layout, class-count mismatch, unreadable checkpoint.
        ConfigError: Inconsistent options (tile size, ``keep_fp32`` patterns).
        InputDataError: Too few calibration tiles, rasters with the wrong bands.
        MissingDependencyError: TensorRT asked for but not installed.
        ExportError: No GPU for TensorRT, exporter or converter failure.
        OutputError: Unwritable output folder, existing artifacts without ``overwrite``, not enough
            free space, or a write failing (disk full); nothing is left in the output folder.
        ParityError: A variant failed its gate: no artifact was kept, only the parity reports.
    """
    steps = _Steps(progress)
    with steps.step(f"Loading {cfg.checkpoint.name}"):
        loaded = _load(cfg)
    base = _with_tile(loaded.description, cfg.tile_size)
    tile = base.tile_size
    name = _artifact_name(cfg, base)
    model = loaded.model
    # Every input is checked before the first artifact: a typo must not cost minutes of export work.
    check_node_patterns(cfg.keep_fp32)
    check_supported(base, cfg.qgis_tools)
    _check_outputs(cfg, name, model)
    if cfg.tensorrt:
        from flair_deploy._optional import require

        require("tensorrt", purpose="building TensorRT engines (--tensorrt)")
        gpu_compute_capability()
    with steps.step(f"Reading {cfg.parity_tiles} parity tiles"):
        if cfg.validation is not None:
            tiles: TileSet = read_tiles(
                [cfg.validation],
                base,
                count=cfg.parity_tiles,
                seed=cfg.seed,
                with_masks=True,
                purpose="parity",
            )
        else:
            tiles = synthetic_tiles(base, cfg.parity_tiles, seed=cfg.seed)
    calib: TileSet | None = None
    if cfg.int8:
        with steps.step(f"Reading {cfg.calibration_tiles} calibration tiles"):
            calib = read_tiles(
                cfg.calibration, base, count=cfg.calibration_tiles, tile_size=tile, seed=cfg.seed
            )
    with steps.step("Running PyTorch on the parity tiles"):
        reference = reference_logits(model, tiles)

    results: list[ParityResult] = []
    onnx_paths: dict[Precision, Path] = {}
    descriptions: dict[Precision, ModelDescription] = {}
    rejected: list[Path] = []
    outputs = OutputSet(overwrite=cfg.overwrite)

    def check(precision: Precision, final: Path, description: ModelDescription) -> None:
        tmp = outputs.temporary(final)
        with steps.step(f"Checking {precision.value} parity on {len(tiles)} tiles"):
            candidate = onnx_logits(tmp, tiles)
            result = compare_logits(
                reference,
                candidate,
                base,
                cfg.gates.for_precision(precision),
                variant=precision.value,
                artifact=final.name,
                masks=tiles.masks,
            )
        results.append(result)
        if not result.passed and cfg.verify:
            rejected.append(final)
            steps.note(f"[red]✗[/red] {precision.value}: {'; '.join(result.failures)}")
            return
        stamped = description.with_provenance(parity=result.summary())
        restamp_onnx(tmp, stamped)
        onnx_paths[precision] = final
        descriptions[precision] = stamped

    json_path, md_path = _report_paths(cfg, name)
    with outputs:
        fp32_path = cfg.out_dir / f"{name}.fp32.onnx"
        with steps.step(f"Exporting FP32 ONNX ({cfg.exporter.value}, opset {cfg.opset}) → {fp32_path.name}"):
            d32 = export_onnx(
                model,
                base,
                outputs.path(fp32_path),
                heads=cfg.all_heads(),
                tile_size=tile,
                dynamic_hw=cfg.dynamic_hw,
                opset=cfg.opset,
                exporter=cfg.exporter,
                slim=cfg.slim,
            )
        check(Precision.FP32, fp32_path, d32)
        if Precision.FP32 in onnx_paths:
            # FP16 and INT8 are derived from the FP32 graph, never from a failed one.
            fp32_tmp = outputs.temporary(fp32_path)
            if cfg.fp16:
                path = cfg.out_dir / f"{name}.fp16.onnx"
                with steps.step(f"Converting to FP16 → {path.name}"):
                    d16 = convert_fp16(fp32_tmp, outputs.path(path), d32)
                check(Precision.FP16, path, d16)
            if calib is not None:
                path = cfg.out_dir / f"{name}.int8.onnx"
                with steps.step(
                    f"Quantizing to INT8 ({cfg.calibration_method.value}, {cfg.resolved_int8_scheme.value}) "
                    f"→ {path.name}"
                ):
                    d8 = quantize_int8(
                        fp32_tmp,
                        outputs.path(path),
                        d32,
                        calib,
                        method=cfg.calibration_method,
                        scheme=cfg.resolved_int8_scheme,
                        keep_fp32=cfg.keep_fp32,
                        preprocess=cfg.quant_preprocess,
                    )
                check(Precision.INT8, path, d8)
        variants: dict[tuple[Precision, QgisTool], Path] = {}
        agreement: dict[tuple[Precision, QgisTool], float] = {}
        for precision, path in list(onnx_paths.items()):
            for tool in cfg.qgis_tools:
                final = variant_path(path, tool)
                with steps.step(f"Writing the {tool.value} variant → {final.name}"):
                    write_variant(outputs.temporary(path), outputs.path(final), descriptions[precision], tool)
                    agreement[(precision, tool)] = variant_agreement(
                        outputs.temporary(final), tiles, reference, base, tool
                    )
                gate = cfg.gates.for_precision(precision).min_agreement
                if agreement[(precision, tool)] < gate and cfg.verify:
                    raise ParityError(
                        f"the {tool.value} variant of {path.name} agrees with PyTorch on "
                        f"{agreement[(precision, tool)]:.4%} of pixels, below the {precision.value} gate "
                        f"{gate:.2%}; nothing was kept; rerun without --for {tool.value}, or with --no-verify"
                    )
                variants[(precision, tool)] = final
        notes = tuple(
            note
            for path in onnx_paths.values()
            if (note := qgis_note(outputs.temporary(path), cfg.qgis_tools, artifact=path)) is not None
        )
        failed = [r for r in results if not r.passed]
        engines: dict[Precision, Path] = {}
        facts: dict[Precision, EngineFacts] = {}
        # Engines of an export that will not be kept are minutes of work for nothing.
        if cfg.tensorrt and not (failed and cfg.verify):
            for precision, path in onnx_paths.items():
                engine = cfg.out_dir / f"{name}.{precision.value}.engine"
                with steps.step(f"Building TensorRT {precision.value} engine → {engine.name}"):
                    facts[precision] = _build_engine(
                        outputs, outputs.temporary(path), engine, descriptions[precision], cfg, tile
                    )
                engines[precision] = engine
        json_text, md_text = render_reports(name, tiles.origin, results)
        outputs.path(json_path, overwrite=True).write_text(json_text, encoding="utf-8")
        outputs.path(md_path, overwrite=True).write_text(md_text, encoding="utf-8")
        where = f"see {md_path}"
        if failed and cfg.verify:
            rejected = [p for p in outputs.finals if p not in (json_path, md_path)]
            for path in rejected:
                outputs.discard(path)
            if any(p.exists() for p in _model_artifacts(cfg, name)):
                # With --overwrite, an earlier export is left whole: its reports still describe it.
                outputs.discard(json_path)
                outputs.discard(md_path)
                where = f"the earlier export in {cfg.out_dir} is untouched"
    if failed and cfg.verify:
        first = failed[0]
        raise ParityError(
            f"{', '.join(r.variant for r in failed)} failed parity ({first.variant}: {'; '.join(first.failures)}); "
            f"no artifact was kept, {where}; fix and rerun, or rerun with --no-verify to keep them"
        )
    return ExportResult(
        out_dir=cfg.out_dir,
        name=name,
        onnx=onnx_paths,
        engines=engines,
        engine_facts=facts,
        parity=tuple(results),
        parity_json=json_path,
        parity_markdown=md_path,
        description=descriptions.get(Precision.FP32, d32),
        removed=tuple(rejected),
        qgis_variants=variants,
        qgis_agreement=agreement,
        qgis_notes=notes,
    )


def _build_engine(
    outputs: OutputSet,
    onnx_tmp: Path,
    engine: Path,
    description: ModelDescription,
    cfg: ExportConfig,
    tile: int,
) -> EngineFacts:
    """Build *engine* and its sidecar into the temporaries of *outputs*."""
    engine_tmp = outputs.path(engine)
    sidecar_tmp = outputs.path(sidecar_path(engine))
    # build_engine writes the sidecar beside the engine it is given: move it to its reserved name.
    written = sidecar_path(engine_tmp)
    try:
        facts = build_engine(
            onnx_tmp, engine_tmp, description, options=cfg.trt, tile_size=tile, dynamic_hw=cfg.dynamic_hw
        )
        try:
            os.replace(written, sidecar_tmp)
        except OSError as exc:
            raise output_error(sidecar_path(engine), exc) from None
    finally:
        written.unlink(missing_ok=True)
    return facts
