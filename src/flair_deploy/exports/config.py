"""The export run configuration: what to export, at which precisions, and how it is verified.

:class:`ExportConfig` is a frozen pydantic model (unknown keys are errors, values are never repaired).
The CLI builds one with :func:`load_export_config` (flags > ``--set`` > YAML > defaults); library
users build one directly::

    cfg = ExportConfig(checkpoint=Path("best.ckpt"), out_dir=Path("models"), fp16=True)
    result = export_model(cfg)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Self

from pydantic import Field, model_validator

from flair_deploy.choices import CalibrationMethod, Exporter, Head, Int8Scheme, QgisTool
from flair_deploy.config import DescribesWeights, FrozenConfig, Loaded, load_config
from flair_deploy.description import Precision

__all__ = [
    "CalibrationMethod",
    "ExportConfig",
    "Exporter",
    "Head",
    "Int8Scheme",
    "ParityGate",
    "ParityGates",
    "QgisTool",
    "TensorRTOptions",
    "load_export_config",
]


class ParityGate(FrozenConfig):
    """Thresholds one exported variant must meet against PyTorch.

    Attributes:
        min_agreement: Minimal fraction of pixels whose (active-class) argmax equals PyTorch's.
        max_abs_logit: Maximal ``|Δlogit|`` anywhere, or None for no bound.
        max_delta_miou: Maximal mIoU loss in points (0-100), checked only when masks exist.
    """

    min_agreement: Annotated[float, Field(ge=0.0, le=1.0)]
    max_abs_logit: Annotated[float, Field(ge=0.0)] | None = None
    max_delta_miou: Annotated[float, Field(ge=0.0)] | None = None


class ParityGates(FrozenConfig):
    """The one table of default gates (issue 3): FP32 99.99 %, FP16 99.9 %, INT8 99 % and 1 mIoU point."""

    fp32: ParityGate = ParityGate(min_agreement=0.9999, max_abs_logit=1e-2)
    fp16: ParityGate = ParityGate(min_agreement=0.999)
    int8: ParityGate = ParityGate(min_agreement=0.99, max_delta_miou=1.0)

    def for_precision(self, precision: Precision) -> ParityGate:
        """Return the gate of *precision* (bf16 shares the fp16 gate)."""
        if precision is Precision.FP32:
            return self.fp32
        if precision is Precision.INT8:
            return self.int8
        return self.fp16


class TensorRTOptions(FrozenConfig):
    """Engine-build options.

    Attributes:
        min_batch: Smallest batch of the optimisation profile.
        opt_batch: Batch TensorRT tunes for (the deploy batch).
        max_batch: Largest batch the engine accepts.
        min_tile: Smallest tile edge (dynamic-H/W exports only; else the export tile size).
        max_tile: Largest tile edge (dynamic-H/W exports only; else the export tile size).
        workspace_gib: Builder workspace limit.
        cache_dir: Engine and timing cache folder; None uses ``~/.cache/flair-deploy/tensorrt``.
        use_cache: Reuse a cached engine whose key (ONNX SHA-256, TensorRT version, GPU compute
            capability, precision, profile) matches.
    """

    min_batch: Annotated[int, Field(ge=1)] = 1
    opt_batch: Annotated[int, Field(ge=1)] = 16
    max_batch: Annotated[int, Field(ge=1)] = 32
    min_tile: Annotated[int, Field(gt=0)] | None = None
    max_tile: Annotated[int, Field(gt=0)] | None = None
    workspace_gib: Annotated[float, Field(gt=0)] = 4.0
    cache_dir: Path | None = None
    use_cache: bool = True

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if not self.min_batch <= self.opt_batch <= self.max_batch:
            raise ValueError(
                f"TensorRT batches must satisfy min <= opt <= max, got {self.min_batch}/{self.opt_batch}/"
                f"{self.max_batch}"
            )
        if self.min_tile is not None and self.max_tile is not None and self.min_tile > self.max_tile:
            raise ValueError(f"TensorRT min_tile {self.min_tile} is larger than max_tile {self.max_tile}")
        return self


class ExportConfig(DescribesWeights):
    """Everything ``flair-deploy export`` does, validated once.

    Attributes:
        checkpoint: Our Lightning checkpoint, or IGN weights (``.pth``/``.ckpt``/``.safetensors``).
        out_dir: Folder for the artifacts (created if missing).
        name: Artifact base name; None uses the description's name.
        preset, ign_config: What describes weights that carry none (see
            :class:`~flair_deploy.config.DescribesWeights`).
        bands: Band names for IGN weights without a preset (e.g. ``R,G,B,NIR,E``).
        classes_preset: Nomenclature for IGN weights without a preset (``flair19/15/12/13``).
        arch: SMP architecture for IGN weights without a preset.
        encoder: SMP encoder for IGN weights without a preset.
        hf_model: HuggingFace ``org_model`` for IGN HF weights without a preset (e.g.
            ``openmmlab/upernet-swin-small``; replaces ``arch``/``encoder``).
        tile_size: Tile edge of the exported graph (and of the parity tiles); None keeps the
            description's.
        dynamic_hw: Export dynamic height and width (multiples of the output stride).
        heads: Graph outputs; ``logits`` is always included.
        opset: ONNX opset (17 or newer).
        exporter: The ``torch.onnx`` exporter.
        slim: Simplify the graph with onnxslim.
        fp16: Also export an FP16 graph (FP32 inputs and outputs).
        int8: Also export a Q/DQ INT8 graph (needs ``calibration``).
        calibration: Calibration sources: a FLAIR CSV, GeoTIFFs, or folders of GeoTIFFs.
        calibration_tiles: Number of calibration tiles; fewer available is an error.
        calibration_method: Activation-range calibration method.
        int8_scheme: Integer types of activations/weights; None = u8s8 (fastest on CPUs), or s8s8
            when ``tensorrt`` is set (see :class:`Int8Scheme`).
        keep_fp32: Node-name patterns (``fnmatch``) left unquantized; ``stem`` and ``head`` name the
            first convolution and the segmentation head.
        quant_preprocess: Run onnxruntime's ``quant_pre_process`` (shape inference, fusions) first.
        tensorrt: Also build TensorRT engines for every exported ONNX variant.
        qgis_tools: Also write, per precision, a variant for each of these QGIS-side tools
            (``<name>.<precision>.<tool>.onnx``, see :mod:`flair_deploy.exports.qgis_tools`).
        trt: Engine-build options.
        parity_tiles: Number of tiles the parity report compares on.
        validation: FLAIR CSV of validation tiles (with masks: ΔmIoU is then reported); None uses
            synthetic sample tiles.
        gates: Parity gates.
        verify: Enforce the gates (failed variants are removed and the export fails).
        overwrite: Replace existing artifacts.
        seed: Seed for tile sampling, so that the calibration-set hash is reproducible.
    """

    checkpoint: Path
    out_dir: Path
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")] | None = None
    bands: tuple[str, ...] | None = None
    classes_preset: str | None = None
    arch: str | None = None
    encoder: str | None = None
    hf_model: str | None = None
    tile_size: Annotated[int, Field(gt=0)] | None = None
    dynamic_hw: bool = False
    heads: tuple[Head, ...] = (Head.LOGITS,)
    opset: Annotated[int, Field(ge=17, le=21)] = 17
    exporter: Exporter = Exporter.TORCHSCRIPT
    slim: bool = True
    fp16: bool = False
    int8: bool = False
    calibration: tuple[Path, ...] = ()
    calibration_tiles: Annotated[int, Field(ge=1)] = 100
    calibration_method: CalibrationMethod = CalibrationMethod.PERCENTILE
    int8_scheme: Int8Scheme | None = None
    keep_fp32: tuple[str, ...] = ()
    quant_preprocess: bool = True
    tensorrt: bool = False
    qgis_tools: tuple[QgisTool, ...] = ()
    trt: TensorRTOptions = TensorRTOptions()
    parity_tiles: Annotated[int, Field(ge=1)] = 16
    validation: Path | None = None
    gates: ParityGates = ParityGates()
    verify: bool = True
    overwrite: bool = False
    seed: int = 0

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if Head.LOGITS not in self.heads:
            raise ValueError(
                f"heads {[h.value for h in self.heads]} lack 'logits', which is always exported; "
                "add it, e.g. --heads logits,classes"
            )
        if len(set(self.heads)) != len(self.heads):
            raise ValueError(f"heads {[h.value for h in self.heads]} repeat a head; name each once")
        if self.int8 and not self.calibration:
            raise ValueError(
                "int8 needs calibration data from the deployment domain: give --calibration with a "
                "FLAIR CSV, GeoTIFFs or a folder of GeoTIFFs"
            )
        if self.calibration and not self.int8:
            raise ValueError("calibration data is only used for INT8; add --int8 or drop --calibration")
        if self.int8 and self.tensorrt and self.int8_scheme is Int8Scheme.U8S8:
            raise ValueError(
                "TensorRT accepts only symmetric signed INT8 (s8s8); drop --tensorrt or use --int8-scheme s8s8"
            )
        flags = {"bands": self.bands, "classes_preset": self.classes_preset, "arch": self.arch}
        given = [k for k, v in flags.items() if v is not None] + (["encoder"] if self.encoder else [])
        if self.hf_model is not None:
            if self.arch is not None or self.encoder is not None:
                raise ValueError(
                    f"--hf-model {self.hf_model} names the architecture; drop --arch/--encoder (SMP only)"
                )
            given.append("hf_model")
        if (self.preset is not None or self.ign_config is not None) and given:
            raise ValueError(
                f"give either a preset or IGN config, or description flags ({', '.join(given)}), not both"
            )
        return self

    @property
    def resolved_int8_scheme(self) -> Int8Scheme:
        """The INT8 scheme to use: the configured one, else u8s8 (CPU) or s8s8 (with TensorRT)."""
        if self.int8_scheme is not None:
            return self.int8_scheme
        return Int8Scheme.S8S8 if self.tensorrt else Int8Scheme.U8S8

    def all_heads(self) -> tuple[Head, ...]:
        """Return the heads in graph-output order (logits first)."""
        return tuple(h for h in Head if h in self.heads)


def load_export_config(
    path: Path | None = None,
    overrides: Sequence[str] = (),
    flags: Mapping[str, Any] | None = None,
    *,
    flag_names: Mapping[str, str] | None = None,
) -> Loaded[ExportConfig]:
    """Build an :class:`ExportConfig`: *flags* > *overrides* (``--set key=value``) > YAML > defaults.

    Args:
        path: Optional YAML file with :class:`ExportConfig` keys (relative paths: from its folder).
        overrides: ``key=value`` strings (values parsed as YAML), e.g. ``trt.workspace_gib=8``.
        flags: Dotted key → value from command-line options (None: not given).
        flag_names: Dotted key → the option that sets it, for messages.

    Raises:
        ConfigError: One line naming the option or key, the value and what is allowed.
    """
    from flair_deploy.ign import weights_config

    ign = weights_config(path, command="export")
    if ign is not None:
        cfg = load_config(ExportConfig, None, overrides, flags, base=ign.values, flag_names=flag_names)
        return Loaded(cfg, ign.notes)
    keys = ("checkpoint", "out_dir", "calibration", "validation", "trt.cache_dir")
    return Loaded(load_config(ExportConfig, path, overrides, flags, flag_names=flag_names, path_keys=keys))
