"""Reduced precision lives in the ONNX graph: FP16 casts and INT8 Q/DQ nodes.

TensorRT 11 removed builder-flag precision and implicit INT8 calibration, so both reduced-precision
variants are ordinary ONNX graphs derived from the FP32 export. They run on onnxruntime's CPU provider
(so parity is checked without a GPU) and feed TensorRT unchanged.

* :func:`convert_fp16`: weights and activations in FP16, inputs and outputs kept in FP32; the in-graph
  band normalisation (raw values reach the thousands for elevation in some datasets) and the
  overflow-prone ops (Softmax, ReduceMean, Pow, Exp, the argmax heads) stay in FP32.
* :func:`quantize_int8`: onnxruntime ``quantize_static`` in QDQ format with per-channel weights,
  calibrated on real tiles. The ``s8s8`` scheme (symmetric signed activations and weights, zero
  point 0, float Conv biases, a dedicated Q/DQ pair per consumer) is the one TensorRT's parser
  accepts; ``u8s8`` (INT32 biases) is the fast one on CPUs. The normalisation, the metadata MLP and
  the output heads are never quantized.
"""

from __future__ import annotations

import contextlib
import fnmatch
import io
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from flair_deploy._optional import require
from flair_deploy.atomic import scratch_path
from flair_deploy.description import ModelDescription
from flair_deploy.errors import ConfigError, ExportError
from flair_deploy.exports.calibration import TileSet
from flair_deploy.exports.config import CalibrationMethod, Int8Scheme
from flair_deploy.exports.onnx import graph_regions, load_onnx, save_onnx, toposort

__all__ = [
    "FP16_FP32_OPS",
    "REGION_ALIASES",
    "check_node_patterns",
    "convert_fp16",
    "quantize_int8",
    "resolve_node_patterns",
]

#: Op types kept in FP32 in the FP16 graph: they overflow or lose too much in half precision.
FP16_FP32_OPS: tuple[str, ...] = ("Softmax", "ReduceMean", "Pow", "Exp", "ReduceMax", "ArgMax", "Log")
#: Names accepted by ``--keep-fp32`` besides node-name patterns.
REGION_ALIASES: tuple[str, ...] = ("stem", "head")


def convert_fp16(src: Path, dst: Path, description: ModelDescription) -> ModelDescription:
    """Write an FP16 version of the FP32 graph *src* to *dst*.

    Args:
        src: FP32 ONNX file.
        dst: Destination (written atomically, description re-stamped and verified).
        description: Description of *src*; the written one has ``precision="fp16"``.

    Returns:
        The description stamped into *dst*.

    Raises:
        ExportError: If the conversion fails.
    """
    float16 = require("onnxruntime.transformers.float16", purpose="FP16 conversion")
    proto = load_onnx(src)
    regions = graph_regions(proto)
    # The output heads (softmax, argmax) stay FP32 and are set aside during conversion: the converter
    # emits clashing cast names when several blocked nodes share a tensor. They are re-attached
    # after the FP32 ``logits`` cast, with their original (FP32) constants.
    heads = [n for n in proto.graph.node if n.name in set(regions["outputs"])]
    head_outputs = [o for o in proto.graph.output if o.name != "logits"]
    head_inputs = {i for n in heads for i in n.input}
    head_inits = [t for t in proto.graph.initializer if t.name in head_inputs]
    body = type(proto)()
    body.CopyFrom(proto)
    keep = [n for n in body.graph.node if n.name not in set(regions["outputs"])]
    del body.graph.node[:]
    body.graph.node.extend(keep)
    outs = [o for o in body.graph.output if o.name == "logits"]
    del body.graph.output[:]
    body.graph.output.extend(outs)
    block_ops = sorted({*float16.DEFAULT_OP_BLOCK_LIST, *FP16_FP32_OPS})
    try:
        converted = float16.convert_float_to_float16(
            body,
            keep_io_types=True,
            op_block_list=block_ops,
            node_block_list=regions["normalization"],
            # Values outside FP16's range are clamped to it rather than becoming inf.
            min_positive_val=1e-7,
            max_finite_val=1e4,
        )
    except Exception as exc:  # noqa: BLE001 - the converter raises bare Exceptions on unsupported graphs
        raise ExportError(f"FP16 conversion failed: {exc}") from None
    names = {t.name for t in head_inits}
    inits = [t for t in converted.graph.initializer if t.name not in names]
    del converted.graph.initializer[:]
    converted.graph.initializer.extend(inits + head_inits)
    head_tensors = {o for n in heads for o in n.output}
    infos = [v for v in converted.graph.value_info if v.name not in head_tensors]
    del converted.graph.value_info[:]
    converted.graph.value_info.extend(infos)
    converted.graph.node.extend(heads)
    converted.graph.output.extend(head_outputs)
    toposort(converted)
    stamped = description.with_provenance(precision="fp16")
    save_onnx(converted, dst, stamped)
    return stamped


def check_node_patterns(patterns: Sequence[str]) -> None:
    """Refuse malformed ``--keep-fp32`` patterns before any work (matching them needs the graph).

    Raises:
        ConfigError: For an empty pattern, one with surrounding spaces or commas (several patterns run
            together), an unbalanced ``[...]`` set, or a repeated pattern.
    """
    seen: set[str] = set()
    for pattern in patterns:
        if not pattern.strip():
            raise ConfigError("--keep-fp32 holds an empty pattern; give stem, head or globs on node names")
        if pattern != pattern.strip() or "," in pattern:
            raise ConfigError(
                f"--keep-fp32 pattern {pattern!r} holds spaces or commas; give one pattern per item, "
                "e.g. --keep-fp32 'stem,/model/decoder/*'"
            )
        if pattern.count("[") != pattern.count("]"):
            raise ConfigError(
                f"--keep-fp32 pattern {pattern!r} has an unbalanced [...] set; close it or match any "
                "character with ?"
            )
        if pattern in seen:
            raise ConfigError(f"--keep-fp32 pattern {pattern!r} is given twice; name each once")
        seen.add(pattern)


def resolve_node_patterns(proto: Any, patterns: Sequence[str]) -> list[str]:
    """Return the node names matched by *patterns* (``fnmatch`` globs, or ``stem`` / ``head``).

    Raises:
        ConfigError: If a pattern matches no node (a typo would otherwise silently do nothing).
    """
    regions = graph_regions(proto)
    names = [n.name for n in proto.graph.node]
    matched: list[str] = []
    for pattern in patterns:
        hits = regions[pattern] if pattern in REGION_ALIASES else fnmatch.filter(names, pattern)
        if not hits:
            sample = ", ".join(n for n in names if n)[:160]
            raise ConfigError(
                f"--keep-fp32 pattern {pattern!r} matches no node; use stem, head, or a glob on node names "
                f"such as: {sample}"
            )
        matched += [h for h in hits if h not in matched]
    return matched


def _reader(tiles: TileSet, batch_size: int) -> Any:
    quantization = require("onnxruntime.quantization", purpose="INT8 quantization")

    base: type = quantization.CalibrationDataReader

    class _TileReader(base):  # type: ignore[misc]
        """onnxruntime calibration reader over a :class:`TileSet`, in ranges (bounded memory)."""

        def __init__(self) -> None:
            self._feeds = list(tiles.batches(batch_size))
            self._range = (0, len(self._feeds))
            self._it: Iterator[dict[str, Any]] | None = None

        def get_next(self) -> dict[str, Any] | None:
            if self._it is None:
                self._it = iter(self._feeds[self._range[0] : self._range[1]])
            return next(self._it, None)

        def __len__(self) -> int:
            return len(self._feeds)

        def set_range(self, start_index: int, end_index: int) -> None:
            self._range = (start_index, end_index)
            self._it = None

    return _TileReader()


def quantize_int8(
    src: Path,
    dst: Path,
    description: ModelDescription,
    tiles: TileSet,
    *,
    method: CalibrationMethod = CalibrationMethod.PERCENTILE,
    scheme: Int8Scheme = Int8Scheme.S8S8,
    keep_fp32: Sequence[str] = (),
    preprocess: bool = True,
    batch_size: int = 4,
) -> ModelDescription:
    """Write a Q/DQ INT8 version of the FP32 graph *src* to *dst*, calibrated on *tiles*.

    Args:
        src: FP32 ONNX file.
        dst: Destination (written atomically, description re-stamped and verified).
        description: Description of *src*; the written one records precision, calibration method
            and the calibration-set SHA-256.
        tiles: Calibration tiles (raw values, as inference feeds them).
        method: Activation-range calibration.
        scheme: ``s8s8`` (TensorRT-compatible) or ``u8s8``.
        keep_fp32: Node patterns left unquantized (``stem``, ``head``, or globs).
        preprocess: Run onnxruntime's ``quant_pre_process`` (shape inference and fusions) first.
        batch_size: Tiles per calibration run; ranges are merged batch by batch, so memory stays
            bounded by one batch's activations whatever the number of tiles.

    Returns:
        The description stamped into *dst*.

    Raises:
        ConfigError: If a ``keep_fp32`` pattern matches no node.
        ExportError: If quantization fails.
    """
    quantization = require("onnxruntime.quantization", purpose="INT8 quantization")
    shape_inference = require("onnxruntime.quantization.shape_inference", purpose="INT8 quantization")
    onnx = require("onnx", purpose="INT8 quantization")
    # Scratch graphs beside dst (same file system, hidden, pid-named), removed whatever happens.
    with scratch_path(dst, "pre") as pre, scratch_path(dst, "q") as quantized:
        model_in = src
        if preprocess:
            try:
                shape_inference.quant_pre_process(str(src), str(pre), skip_symbolic_shape=False)
            except Exception as exc:  # noqa: BLE001 - symbolic shape inference raises assorted internal errors
                raise ExportError(
                    f"onnxruntime quant_pre_process failed ({exc}); retry without quantization preprocessing"
                ) from None
            model_in = pre
        proto = onnx.load(str(model_in))
        regions = graph_regions(proto)
        exclude = [*regions["normalization"], *regions["outputs"]]
        # The metadata MLP is tiny and its inputs are not image statistics: keep it exact.
        exclude += [n.name for n in proto.graph.node if n.op_type in ("Gemm", "MatMul")]
        exclude += [n for n in resolve_node_patterns(proto, keep_fp32) if n not in exclude]
        calibrate = {
            CalibrationMethod.MINMAX: quantization.CalibrationMethod.MinMax,
            CalibrationMethod.ENTROPY: quantization.CalibrationMethod.Entropy,
            CalibrationMethod.PERCENTILE: quantization.CalibrationMethod.Percentile,
        }[method]
        signed = scheme is Int8Scheme.S8S8
        extra = {
            "ActivationSymmetric": signed,
            "WeightSymmetric": True,
            # Collect ranges one calibration batch at a time (histograms and min/max are merged),
            # instead of holding every intermediate tensor of every tile in memory.
            "CalibStridedMinMax": 1,
            "CalibPercentile": 99.999,
        }
        if signed:
            # The TensorRT-bound graph: TensorRT's ONNX parser dequantizes INT8 (not INT32), so Conv
            # biases stay float, and each consumer gets its own Q/DQ pair, as TensorRT's explicit
            # quantization expects. The u8s8 CPU graph keeps INT32 biases: onnxruntime fuses them into
            # QLinearConv.
            extra.update({"QuantizeBias": False, "DedicatedQDQPair": True})
        # onnxruntime logs progress at INFO/WARNING through the root logger; keep the CLI clean.
        level = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                # ... and prints calibration progress to stdout, which belongs to the CLI's report.
                quantization.quantize_static(
                    str(model_in),
                    str(quantized),
                    _reader(tiles, batch_size),
                    quant_format=quantization.QuantFormat.QDQ,
                    per_channel=True,
                    activation_type=quantization.QuantType.QInt8 if signed else quantization.QuantType.QUInt8,
                    weight_type=quantization.QuantType.QInt8,
                    nodes_to_exclude=exclude,
                    calibrate_method=calibrate,
                    extra_options=extra,
                )
        except (ValueError, RuntimeError, KeyError) as exc:
            raise ExportError(f"INT8 quantization failed: {exc}") from None
        finally:
            logging.getLogger().setLevel(level)
        out = onnx.load(str(quantized))
    stamped = description.with_provenance(
        precision="int8",
        calibration_sha256=tiles.sha256,
        calibration_method=f"{method.value}/{scheme.value}/per-channel/{len(tiles)} tiles",
    )
    save_onnx(out, dst, stamped)
    return stamped
