"""`flair-deploy export`: checkpoint → verified ONNX (FP32/FP16/INT8) and TensorRT engines."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flair_deploy._optional import require_extra
from flair_deploy.errors import ConfigError

__all__ = ["command"]

_EPILOG = """\
Examples:

  flair-deploy export runs/best.ckpt --out models --fp16

  flair-deploy export runs/best.ckpt --out models --int8 --calibration data/val.csv --heads logits,classes

  flair-deploy export FLAIR-INC_rgbie_15cl_resnet34-unet_weights.pth --preset flair-inc-rgbie-15cl-resnet34-unet --out models

  flair-deploy export weights.pth --bands R,G,B --classes-preset flair12 --encoder resnet34 --out models --tensorrt

Writes <name>.fp32.onnx (and .fp16/.int8.onnx), <name>.<precision>.engine + .engine.json with
--tensorrt, and <name>.parity.json/.md. Every variant is compared with PyTorch; one that misses its
gate (FP32 >= 99.99 %, FP16 >= 99.9 %, INT8 >= 99 % argmax agreement and <= 1 mIoU point) fails the
export: only the parity reports are kept and the command exits 1, unless --no-verify. Show what an artifact holds with `flair-deploy inspect`.
"""


def _csv(value: str | None, what: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    if not items:
        raise ConfigError(f"{what} is empty; give a comma-separated list")
    return items


def command(
    checkpoint: Annotated[
        Path,
        typer.Argument(
            help="Our Lightning checkpoint (self-describing) or IGN weights (.pth/.ckpt/.safetensors)."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (created if missing).")],
    name: Annotated[str | None, typer.Option(help="Artifact base name [default: the model's name].")] = None,
    fp16: Annotated[
        bool, typer.Option("--fp16", help="Also export FP16 ONNX (FP32 inputs/outputs).")
    ] = False,
    int8: Annotated[
        bool, typer.Option("--int8", help="Also export Q/DQ INT8 ONNX; needs --calibration.")
    ] = False,
    calibration: Annotated[
        list[Path] | None,
        typer.Option(help="INT8 calibration data: a FLAIR CSV, GeoTIFFs or folders of them; repeatable."),
    ] = None,
    calibration_tiles: Annotated[
        int,
        typer.Option(min=1, help="Calibration tiles, spread over all inputs; fewer available is an error."),
    ] = 100,
    calibration_method: Annotated[
        str, typer.Option(help="INT8 activation ranges: percentile, entropy or minmax.")
    ] = "percentile",
    int8_scheme: Annotated[
        str | None,
        typer.Option(
            help="u8s8 (fastest on CPUs; the default) or s8s8 (symmetric; what TensorRT needs, and the "
            "default with --tensorrt)."
        ),
    ] = None,
    keep_fp32: Annotated[
        str | None,
        typer.Option(help="Comma-separated nodes left unquantized: stem, head, or globs on node names."),
    ] = None,
    tensorrt: Annotated[
        bool, typer.Option("--tensorrt", help="Also build a TensorRT engine per variant (needs a GPU).")
    ] = False,
    min_batch: Annotated[int, typer.Option(min=1, help="TensorRT profile: smallest batch.")] = 1,
    opt_batch: Annotated[int, typer.Option(min=1, help="TensorRT profile: batch to tune for.")] = 4,
    max_batch: Annotated[int, typer.Option(min=1, help="TensorRT profile: largest batch.")] = 8,
    engine_cache: Annotated[
        Path | None,
        typer.Option(help="TensorRT engine/timing cache folder [default: ~/.cache/flair-deploy/tensorrt]."),
    ] = None,
    preset: Annotated[
        str | None,
        typer.Option(help="Describe IGN weights with a preset, e.g. flair-inc-rgbie-15cl-resnet34-unet."),
    ] = None,
    bands: Annotated[
        str | None, typer.Option(help="IGN weights without a preset: bands, e.g. R,G,B,NIR,E.")
    ] = None,
    classes_preset: Annotated[
        str | None, typer.Option(help="IGN weights without a preset: flair19, flair15, flair12 or flair13.")
    ] = None,
    arch: Annotated[
        str | None, typer.Option(help="IGN weights without a preset: SMP architecture (unet).")
    ] = None,
    encoder: Annotated[
        str | None, typer.Option(help="IGN weights without a preset: SMP encoder (resnet34).")
    ] = None,
    tile: Annotated[
        int | None,
        typer.Option(min=1, help="Tile edge of the graph (multiple of 32) [default: the model's]."),
    ] = None,
    dynamic_hw: Annotated[
        bool, typer.Option("--dynamic-hw", help="Dynamic height/width (multiples of the output stride).")
    ] = False,
    heads: Annotated[
        str, typer.Option(help="Graph outputs: logits (always) plus probabilities and/or classes.")
    ] = "logits",
    opset: Annotated[int, typer.Option(min=17, help="ONNX opset (>= 17).")] = 17,
    exporter: Annotated[
        str, typer.Option(help="torch.onnx exporter: torchscript or dynamo.")
    ] = "torchscript",
    parity_tiles: Annotated[int, typer.Option(min=1, help="Tiles the parity report compares on.")] = 16,
    validation: Annotated[
        Path | None,
        typer.Option(help="FLAIR CSV of validation tiles (masks give ΔmIoU) [default: synthetic tiles]."),
    ] = None,
    no_verify: Annotated[
        bool, typer.Option("--no-verify", help="Report parity but keep variants that fail their gate.")
    ] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing artifacts.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
) -> None:
    """Export a checkpoint to verified ONNX (FP32, FP16, INT8) and TensorRT engines."""
    require_extra("export", purpose="flair-deploy export")
    from flair_deploy.config import load_config
    from flair_deploy.exports.config import ExportConfig
    from flair_deploy.exports.pipeline import export_model

    base = {
        "checkpoint": str(checkpoint),
        "out_dir": str(out),
        "name": name,
        "preset": preset,
        "bands": _csv(bands, "--bands"),
        "classes_preset": classes_preset,
        "arch": arch,
        "encoder": encoder,
        "tile_size": tile,
        "dynamic_hw": dynamic_hw,
        "heads": _csv(heads, "--heads"),
        "opset": opset,
        "exporter": exporter,
        "fp16": fp16,
        "int8": int8,
        "calibration": [str(p) for p in calibration or []],
        "calibration_tiles": calibration_tiles,
        "calibration_method": calibration_method,
        "int8_scheme": int8_scheme,
        "keep_fp32": _csv(keep_fp32, "--keep-fp32") or (),
        "tensorrt": tensorrt,
        "trt": {
            "min_batch": min_batch,
            "opt_batch": opt_batch,
            "max_batch": max_batch,
            "cache_dir": engine_cache,
        },
        "parity_tiles": parity_tiles,
        "validation": validation,
        "verify": not no_verify,
        "overwrite": overwrite,
    }
    cfg = load_config(ExportConfig, base=base)
    result = export_model(cfg, progress=not quiet)
    for precision, path in result.onnx.items():
        r = next(x for x in result.parity if x.variant == precision.value)
        typer.echo(
            f"{path}  ({precision.value}, agreement {r.agreement:.5%}, max |Δlogit| {r.max_abs_logit:.2g})"
        )
    for path in result.engines.values():
        typer.echo(f"{path}  (+ {path.name}.json)")
    typer.echo(f"{result.parity_markdown}")


command.__doc__ = (command.__doc__ or "") + "\n\n" + _EPILOG
