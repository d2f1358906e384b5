"""`flair-deploy export`: checkpoint → verified ONNX (FP32/FP16/INT8) and TensorRT engines."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flair_deploy._optional import require_extra
from flair_deploy.choices import CalibrationMethod, Exporter, Head, Int8Scheme, QgisTool
from flair_deploy.cli._options import (
    ConfigOption,
    SetOption,
    VersionOption,
    choices,
    echo_notes,
    given_flags,
    split_list,
)

__all__ = ["command"]

CONFIG_MODEL = "flair_deploy.exports.config:ExportConfig"

#: Option → ExportConfig key (see cli._options).
FLAGS = {
    "checkpoint": "checkpoint",
    "out": "out_dir",
    "name": "name",
    "fp16": "fp16",
    "int8": "int8",
    "calibration": "calibration",
    "calibration_tiles": "calibration_tiles",
    "calibration_method": "calibration_method",
    "int8_scheme": "int8_scheme",
    "keep_fp32": "keep_fp32",
    "tensorrt": "tensorrt",
    "for_": "qgis_tools",
    "min_batch": "trt.min_batch",
    "opt_batch": "trt.opt_batch",
    "max_batch": "trt.max_batch",
    "engine_cache": "trt.cache_dir",
    "preset": "preset",
    "bands": "bands",
    "classes_preset": "classes_preset",
    "arch": "arch",
    "encoder": "encoder",
    "hf_model": "hf_model",
    "tile": "tile_size",
    "dynamic_hw": "dynamic_hw",
    "heads": "heads",
    "opset": "opset",
    "exporter": "exporter",
    "parity_tiles": "parity_tiles",
    "validation": "validation",
    "no_verify": "verify",
    "overwrite": "overwrite",
}

EXAMPLES = (
    "flair-deploy export runs/best.ckpt --out models --fp16",
    (
        "flair-deploy export runs/best.ckpt --out models --int8 \\\n"
        "    --calibration data/val.csv --heads logits,classes"
    ),
    (
        "flair-deploy export FLAIR-INC_rgbie_15cl_resnet34-unet_weights.pth \\\n"
        "    --preset flair-inc-rgbie-15cl-resnet34-unet --out models"
    ),
    (
        "flair-deploy export weights.pth --bands R,G,B --classes-preset flair12 \\\n"
        "    --encoder resnet34 --out models --tensorrt"
    ),
)


def _on(flag: bool) -> bool | None:
    return True if flag else None


def command(
    checkpoint: Annotated[
        Path | None,
        typer.Argument(
            metavar="CHECKPOINT",
            help="Our Lightning checkpoint (self-describing) or IGN weights (.pth/.ckpt/.safetensors).",
            show_default=False,
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", metavar="FOLDER", help="Output folder (created if missing). Required."),
    ] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
    name: Annotated[
        str | None, typer.Option(metavar="NAME", help="Artifact base name (default: the model's name).")
    ] = None,
    fp16: Annotated[
        bool, typer.Option("--fp16", help="Also export FP16 ONNX (FP32 inputs/outputs).")
    ] = False,
    int8: Annotated[
        bool, typer.Option("--int8", help="Also export Q/DQ INT8 ONNX; needs --calibration.")
    ] = False,
    calibration: Annotated[
        list[Path] | None,
        typer.Option(
            metavar="SOURCE",
            help="INT8 calibration data: a FLAIR CSV, GeoTIFFs or folders of them; repeatable.",
        ),
    ] = None,
    calibration_tiles: Annotated[
        int | None,
        typer.Option(
            metavar="N", help="Calibration tiles, spread over all inputs; fewer available is an error."
        ),
    ] = None,
    calibration_method: Annotated[
        CalibrationMethod | None,
        typer.Option(metavar=choices(CalibrationMethod), help="How INT8 activation ranges are chosen."),
    ] = None,
    int8_scheme: Annotated[
        Int8Scheme | None,
        typer.Option(
            metavar=choices(Int8Scheme),
            help="u8s8 (fastest on CPUs; the default) or s8s8 (symmetric; what TensorRT needs, and the "
            "default with --tensorrt).",
        ),
    ] = None,
    keep_fp32: Annotated[
        str | None,
        typer.Option(metavar="NODES", help="Comma-separated nodes left unquantized: stem, head, or globs."),
    ] = None,
    tensorrt: Annotated[
        bool, typer.Option("--tensorrt", help="Also build a TensorRT engine per variant (needs a GPU).")
    ] = False,
    min_batch: Annotated[
        int | None, typer.Option(metavar="N", help="TensorRT profile: smallest batch.")
    ] = None,
    opt_batch: Annotated[
        int | None, typer.Option(metavar="N", help="TensorRT profile: batch to tune for.")
    ] = None,
    max_batch: Annotated[
        int | None, typer.Option(metavar="N", help="TensorRT profile: largest batch.")
    ] = None,
    engine_cache: Annotated[
        Path | None,
        typer.Option(
            metavar="FOLDER", help="TensorRT engine/timing cache (default: ~/.cache/flair-deploy/tensorrt)."
        ),
    ] = None,
    preset: Annotated[
        str | None,
        typer.Option(
            metavar="NAME",
            help="Describe IGN weights with a preset, e.g. flair-inc-rgbie-15cl-resnet34-unet.",
        ),
    ] = None,
    bands: Annotated[
        str | None,
        typer.Option(metavar="NAMES", help="IGN weights without a preset: bands, e.g. R,G,B,NIR,E."),
    ] = None,
    classes_preset: Annotated[
        str | None,
        typer.Option(
            metavar="NAME", help="IGN weights without a preset: flair19, flair15, flair12 or flair13."
        ),
    ] = None,
    arch: Annotated[
        str | None,
        typer.Option(metavar="ARCH", help="IGN weights without a preset: SMP architecture (unet)."),
    ] = None,
    encoder: Annotated[
        str | None,
        typer.Option(metavar="ENCODER", help="IGN weights without a preset: SMP encoder (resnet34)."),
    ] = None,
    hf_model: Annotated[
        str | None,
        typer.Option(
            metavar="ORG_MODEL",
            help="IGN HuggingFace weights (model_provider: HuggingFace): their org_model, e.g. "
            "openmmlab/upernet-swin-small or nvidia/mit-b0 (built offline; instead of --arch/--encoder).",
        ),
    ] = None,
    tile: Annotated[
        int | None,
        typer.Option(metavar="PX", help="Tile edge of the graph (multiple of 32; default: the model's)."),
    ] = None,
    dynamic_hw: Annotated[
        bool, typer.Option("--dynamic-hw", help="Dynamic height/width (multiples of the output stride).")
    ] = False,
    for_: Annotated[
        str | None,
        typer.Option(
            "--for",
            metavar="TOOL,...",
            help=(
                f"Also write a variant per precision for QGIS-side tools ({', '.join(t.value for t in QgisTool)}): "
                "<name>.<precision>.<tool>.onnx with fixed H/W, softmax probabilities as its only output and "
                "the tool's metadata keys; geodeep takes R,G,B uint8/uint16 models only. See docs/qgis-models.md."
            ),
        ),
    ] = None,
    heads: Annotated[
        str | None,
        typer.Option(
            metavar="HEAD,...",
            help=f"Graph outputs, comma list of {', '.join(h.value for h in Head)}; logits is always included.",
        ),
    ] = None,
    opset: Annotated[int | None, typer.Option(metavar="N", help="ONNX opset.")] = None,
    exporter: Annotated[
        Exporter | None, typer.Option(metavar=choices(Exporter), help="torch.onnx exporter.")
    ] = None,
    parity_tiles: Annotated[
        int | None, typer.Option(metavar="N", help="Tiles the parity report compares on.")
    ] = None,
    validation: Annotated[
        Path | None,
        typer.Option(
            metavar="CSV", help="FLAIR CSV of validation tiles (masks give ΔmIoU; default: synthetic tiles)."
        ),
    ] = None,
    no_verify: Annotated[
        bool, typer.Option("--no-verify", help="Report parity but keep variants that fail their gate.")
    ] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing artifacts.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
    version: VersionOption = False,
) -> None:
    """Export a checkpoint to verified ONNX and TensorRT engines.

    ONNX in FP32, and FP16 and INT8 on request; TensorRT engines per variant.

    Writes <name>.fp32.onnx (and .fp16/.int8.onnx), <name>.<precision>.engine
    + .engine.json with --tensorrt, <name>.<precision>.deepness.onnx (or
    .geodeep.onnx) with --for, and <name>.parity.json/.md. Our ONNX files map
    correctly in QGIS Deepness and GeoDeep only as --for variants (the export
    says why for the others). Every variant
    is compared with PyTorch; one that misses its gate (FP32 >= 99.99 %, FP16
    >= 99.9 %, INT8 >= 99 % argmax agreement and <= 1 mIoU point) fails the
    export: no model file is kept, only the parity reports that say why, and
    the command exits 1 (--no-verify keeps every variant). A failed export
    leaves nothing that blocks its rerun. Show what an artifact holds with
    `flair-deploy inspect`.
    """
    require_extra("export", purpose="flair-deploy export")
    from flair_deploy.exports.config import load_export_config
    from flair_deploy.exports.pipeline import export_model

    flags, names = given_flags(
        FLAGS,
        checkpoint=checkpoint,
        out=out,
        name=name,
        fp16=_on(fp16),
        int8=_on(int8),
        calibration=[str(p) for p in calibration] if calibration else None,
        calibration_tiles=calibration_tiles,
        calibration_method=calibration_method,
        int8_scheme=int8_scheme,
        keep_fp32=split_list(keep_fp32, "--keep-fp32"),
        tensorrt=_on(tensorrt),
        for_=split_list(for_, "--for"),
        min_batch=min_batch,
        opt_batch=opt_batch,
        max_batch=max_batch,
        engine_cache=engine_cache,
        preset=preset,
        bands=split_list(bands, "--bands"),
        classes_preset=classes_preset,
        arch=arch,
        encoder=encoder,
        hf_model=hf_model,
        tile=tile,
        dynamic_hw=_on(dynamic_hw),
        heads=split_list(heads, "--heads"),
        opset=opset,
        exporter=exporter,
        parity_tiles=parity_tiles,
        validation=validation,
        no_verify=False if no_verify else None,
        overwrite=_on(overwrite),
    )
    names["checkpoint"] = "CHECKPOINT"
    cfg, notes = load_export_config(config, set_ or (), flags, flag_names=names)
    echo_notes(config, notes)
    result = export_model(cfg, progress=not quiet)
    for precision, path in result.onnx.items():
        r = next(x for x in result.parity if x.variant == precision.value)
        typer.echo(
            f"{path}  ({precision.value}, agreement {r.agreement:.5%}, max |Δlogit| {r.max_abs_logit:.2g})"
        )
    for (precision, tool), path in result.qgis_variants.items():
        agreement = result.qgis_agreement[(precision, tool)]
        typer.echo(f"{path}  ({precision.value} for {tool.value}, agreement {agreement:.5%})")
    for note in result.qgis_notes:
        typer.echo(f"note: {note}")
    for path in result.engines.values():
        typer.echo(f"{path}  (+ {path.name}.json)")
    typer.echo(f"{result.parity_markdown}")
