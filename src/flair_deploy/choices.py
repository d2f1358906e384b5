"""The closed sets of choices users pick from, one :class:`~enum.StrEnum` each.

They live here, at the bottom of the tree and free of heavy imports, so that the configs of every stage
and the command line (which lists them in ``--help`` and checks them before any work) share one
definition. The runtime names (:class:`~flair_deploy.inference.backends.BackendName`) and precisions
(:class:`~flair_deploy.description.Precision`) are defined with the objects they describe.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["CalibrationMethod", "Compression", "Exporter", "Head", "Int8Scheme", "QgisTool", "Stitching"]


class Stitching(StrEnum):
    """How ``detect`` joins overlapping tiles.

    * ``blend``: Hann-weighted class probabilities over the overlaps (no seams).
    * ``crop``: each tile keeps its centre, a margin is discarded (IGN ``flair-detect``'s grid).
    """

    BLEND = "blend"
    CROP = "crop"


class Compression(StrEnum):
    """GeoTIFF compression of ``detect``'s outputs (always with a horizontal predictor)."""

    DEFLATE = "deflate"
    ZSTD = "zstd"


class Head(StrEnum):
    """Graph outputs that can be exported.

    * ``logits``: ``(N, K, H, W)`` float32, always exported.
    * ``probabilities``: softmax over the *active* classes (inactive ones are exactly 0).
    * ``classes``: ``class_index`` (uint8 logit index of the most probable active class) and
      ``confidence`` (its probability, float32), so a deployment need not copy ``K`` planes per pixel.
    """

    LOGITS = "logits"
    PROBABILITIES = "probabilities"
    CLASSES = "classes"


class Exporter(StrEnum):
    """Which ``torch.onnx.export`` path produces the FP32 graph.

    ``torchscript`` (the classic tracer) is fast and, after onnxslim, gives the same clean graph as
    ``dynamo`` for this U-Net; ``dynamo`` (``torch.export`` + onnxscript) is kept as the future-proof
    alternative.
    """

    TORCHSCRIPT = "torchscript"
    DYNAMO = "dynamo"


class CalibrationMethod(StrEnum):
    """How INT8 activation ranges are chosen from the calibration tiles (onnxruntime calibrators)."""

    MINMAX = "minmax"
    ENTROPY = "entropy"
    PERCENTILE = "percentile"


class Int8Scheme(StrEnum):
    """Integer types of activations and weights in the Q/DQ graph.

    * ``s8s8``: signed, symmetric activations and weights (zero point 0). The only scheme TensorRT
      accepts.
    * ``u8s8``: unsigned asymmetric activations, signed weights; uses the full 8-bit range after ReLU
      and maps onto the x86 u8×s8 dot-product instructions (VNNI) directly, so it is the faster scheme
      on CPUs at the same parity (see docs/export.md for the measurements). It cannot feed TensorRT.

    The default (``int8_scheme`` unset) is ``u8s8``, or ``s8s8`` when TensorRT engines are requested.
    """

    S8S8 = "s8s8"
    U8S8 = "u8s8"


class QgisTool(StrEnum):
    """QGIS-side tools ``export --for`` writes a variant for (see :mod:`flair_deploy.exports.qgis_tools`).

    * ``deepness``: the QGIS Deepness plugin (any bands; uint8, uint16 or float32 rasters).
    * ``geodeep``: the GeoDeep Python package (R,G,B models on uint8 or uint16 rasters only).
    """

    DEEPNESS = "deepness"
    GEODEEP = "geodeep"
