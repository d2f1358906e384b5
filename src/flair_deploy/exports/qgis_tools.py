"""QGIS-tool variants of an exported graph: what QGIS Deepness and GeoDeep need to map our models.

Both tools run a segmentation ONNX their own way (read from their sources: Deepness 0.6.5's
``ModelBase``, ``Segmentor`` and ``MapProcessorSegmentation``; GeoDeep 0.9.13's ``create_session``
and ``run``):

* the tile edge is the image input's last dimension, so a dynamic ``width`` (a string) breaks both;
* every graph output is thresholded at ``seg_thresh`` (default 0.5; values below become 0) and
  argmaxed as class probabilities: Deepness maps *every* output and wants one ``class_names`` entry
  per output, GeoDeep maps the first. Our ``logits`` are not probabilities, and their untrained
  classes are not masked;
* Deepness divides every raster value by 255 whatever its data type, then standardises with
  ``standardization_mean``/``standardization_std``; GeoDeep feeds three bands (the raster's red,
  green, blue), divides uint8 by 255 and uint16 by 65535, min-max scales float tiles, and reads no
  standardisation;
* post-processing: Deepness median-filters the class map with ``seg_small_segment`` (default 9),
  GeoDeep sieves regions under ``(2 * seg_small_segment)²`` pixels (default 11) and always applies a
  5-pixel median filter, which no metadata key turns off.

A variant is derived from one verified artifact (FP32, FP16 or INT8) by editing its graph, so its
weights are exactly those that passed parity:

* height and width are fixed at the model tile (the batch stays dynamic);
* its one output is ``probabilities``: the softmax over the active classes (untrained ones exactly 0),
  whose argmax is our map's class;
* for uint8 and uint16 models, a ``Mul`` by the raster type's range comes first, turning the 0-1
  values GeoDeep feeds back into the raw values our in-graph normalisation expects, and the Deepness
  keys (:meth:`~flair_deploy.description.ModelDescription.deepness_props`) say ``standardization_std
  = range / 255``, so Deepness feeds the same 0-1 values: one graph maps correctly in both tools, and
  a file loaded in the other tool is never silently fed the wrong scale;
* ``seg_thresh: 0`` and ``seg_small_segment: 0``: plain argmax, no median filter, no sieve.

A variant has no ``logits`` output, so flair-deploy's own runtimes refuse it instead of misreading it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from flair_deploy._optional import require
from flair_deploy.choices import QgisTool
from flair_deploy.description import DEEPNESS_SCALE, ModelDescription
from flair_deploy.errors import BackendError, ConfigError, ExportError
from flair_deploy.exports.calibration import TileSet
from flair_deploy.exports.onnx import INACTIVE_BIAS, INPUT_IMAGE, load_onnx, save_onnx, toposort

__all__ = [
    "PROBABILITIES",
    "VARIANT_KEY",
    "QgisTool",
    "check_supported",
    "deepness_issues",
    "input_divisor",
    "qgis_note",
    "refusal",
    "variant_agreement",
    "variant_path",
    "write_variant",
]

#: ``metadata_props`` key naming the tool a variant was written for.
VARIANT_KEY = "flair_deploy.qgis_variant"
#: The variant's one output.
PROBABILITIES = "probabilities"
# Raster types GeoDeep rescales to 0-1 by a fixed range (``np.iinfo`` of the type; uint8 by 255).
_TYPE_RANGE = {"uint8": 255.0, "uint16": 65535.0}
_GEODEEP_BANDS = ("R", "G", "B")


def variant_path(artifact: Path, tool: QgisTool) -> Path:
    """Return the variant's file name: ``model.fp32.onnx`` → ``model.fp32.deepness.onnx``."""
    return artifact.with_name(f"{artifact.stem}.{tool.value}.onnx")


def refusal(description: ModelDescription, tool: QgisTool) -> str | None:
    """Return why *tool* cannot run this model correctly whatever the graph, or None if it can."""
    if description.metadata is not None:
        return (
            f"{tool.value} feeds one image input; this model also takes a metadata vector "
            f"({description.metadata.encoding})"
        )
    if tool is QgisTool.GEODEEP:
        if description.bands != _GEODEEP_BANDS:
            return (
                f"GeoDeep feeds 3 bands only (the raster's red, green and blue); this model takes "
                f"{description.in_channels} bands {list(description.bands)}; use --for deepness, which "
                "feeds any bands"
            )
        if description.input_dtype not in _TYPE_RANGE:
            return (
                f"GeoDeep min-max scales {description.input_dtype} rasters tile by tile, which no graph "
                "can undo; use --for deepness"
            )
    return None


def check_supported(description: ModelDescription, tools: Sequence[QgisTool]) -> None:
    """Refuse, before any export work, a tool that cannot run this model.

    Raises:
        ConfigError: One line naming the tool and the reason.
    """
    for tool in tools:
        reason = refusal(description, tool)
        if reason is not None:
            raise ConfigError(f"--for {tool.value} refused for {description.name}: {reason}")


def input_divisor(description: ModelDescription) -> float:
    """Return what a variant's graph expects raw values divided by: the raster type's range, else 1.

    GeoDeep divides uint8 by 255 and uint16 by 65535 and reads no standardisation, so the graph undoes
    that division itself; Deepness divides by 255 and then by ``standardization_std`` (written as
    ``divisor / 255``), which gives the same ``raw / divisor``. One graph thus maps correctly in both
    tools; float rasters, which only Deepness takes, are fed raw (divisor 1).
    """
    return _TYPE_RANGE.get(description.input_dtype, 1.0)


def _dims(value_info: Any) -> list[int | str]:
    return [
        d.dim_value if d.HasField("dim_value") else d.dim_param for d in value_info.type.tensor_type.shape.dim
    ]


def deepness_issues(path: Path) -> list[str]:
    """Return why the ONNX file at *path* would not load or map correctly in Deepness as written.

    An empty list means it loads and maps as our ``detect`` does (up to Deepness's tiling).

    Raises:
        ModelDescriptionError: If *path* is not a readable ONNX model.
    """
    proto = load_onnx(path)
    graph = proto.graph
    issues: list[str] = []
    inputs = [i for i in graph.input if i.name not in {t.name for t in graph.initializer}]
    if len(inputs) > 1:
        issues.append(f"it has {len(inputs)} inputs (Deepness feeds one image)")
    hw = _dims(inputs[0])[-2:] if inputs else []
    if any(isinstance(d, str) or d <= 0 for d in hw):
        issues.append(
            f"its height/width {hw} are dynamic (Deepness takes the tile size from the input shape)"
        )
    outputs = [o.name for o in graph.output]
    if outputs[:1] != [PROBABILITIES]:
        issues.append(
            f"its first output is {outputs[0]!r}, not probabilities (Deepness thresholds and argmaxes it)"
        )
    if len(outputs) > 1:
        issues.append(
            f"it has {len(outputs)} outputs (Deepness maps each and wants one class_names entry per output)"
        )
    props = {p.key: p.value for p in proto.metadata_props}
    if props.get("seg_small_segment") != "0":
        issues.append("it does not set seg_small_segment: 0 (Deepness then median-filters the map)")
    return issues


def qgis_note(path: Path, written: Sequence[QgisTool], *, artifact: Path | None = None) -> str | None:
    """Return the line ``export`` prints for an artifact that is not for Deepness, or None.

    Args:
        path: The ONNX file to read.
        written: The tools whose variants this export writes.
        artifact: The file's final name, when *path* is its temporary.

    Raises:
        ModelDescriptionError: If *path* is not a readable ONNX model.
    """
    if QgisTool.DEEPNESS in written:
        return None
    issues = deepness_issues(path)
    if not issues:
        return None
    path = artifact or path
    return (
        f"{path.name} is not for QGIS Deepness/GeoDeep: {'; '.join(issues)}; add --for deepness (or "
        f"--for geodeep for R,G,B models) to also write {variant_path(path, QgisTool.DEEPNESS).name}"
    )


def write_variant(
    source: Path, dest: Path, description: ModelDescription, tool: QgisTool
) -> ModelDescription:
    """Write the *tool* variant of the exported graph *source* to *dest* (atomically).

    Args:
        source: An ONNX file written by :func:`~flair_deploy.exports.onnx.export_onnx` (any precision).
        dest: The variant's file.
        description: The description stamped in *source*.
        tool: Deepness or GeoDeep.

    Returns:
        The variant's description (provenance ``extra`` names the tool).

    Raises:
        ConfigError: If the tool cannot run this model (:func:`refusal`).
        ExportError: If *source* has no ``logits`` output or the edited graph fails the checker.
        OutputError: If *dest* cannot be written.
    """
    onnx = require("onnx", purpose="writing QGIS-tool variants")
    check_supported(description, [tool])
    proto = load_onnx(source)
    graph = proto.graph
    if "logits" not in [o.name for o in graph.output]:
        raise ExportError(f"{source.name} has no logits output; export it with flair-deploy export")
    tile, k = description.tile_size, description.num_classes
    image = next(i for i in graph.input if i.name == INPUT_IMAGE)
    dims = image.type.tensor_type.shape.dim
    for d in dims[2:]:
        d.dim_value = tile  # clears a dynamic dim_param
    batch = _dims(image)[0]
    nodes = list(graph.node)
    if PROBABILITIES not in [o.name for o in graph.output]:
        bias = np.asarray([0.0 if a else INACTIVE_BIAS for a in description.active_mask], np.float32)
        graph.initializer.append(onnx.numpy_helper.from_array(bias.reshape(1, k, 1, 1), "qgis_inactive_bias"))
        nodes += [
            onnx.helper.make_node(
                "Add", ["logits", "qgis_inactive_bias"], ["qgis_masked_logits"], name="qgis_mask"
            ),
            onnx.helper.make_node(
                "Softmax", ["qgis_masked_logits"], [PROBABILITIES], name="qgis_softmax", axis=1
            ),
        ]
    divisor = input_divisor(description)
    if divisor != 1.0:
        for node in nodes:
            node.input[:] = ["qgis_raw_image" if n == INPUT_IMAGE else n for n in node.input]
        graph.initializer.append(
            onnx.numpy_helper.from_array(np.asarray(divisor, np.float32), "qgis_input_range")
        )
        nodes.insert(
            0,
            onnx.helper.make_node(
                "Mul", [INPUT_IMAGE, "qgis_input_range"], ["qgis_raw_image"], name="qgis_unscale"
            ),
        )
    del graph.output[:]
    graph.output.append(
        onnx.helper.make_tensor_value_info(PROBABILITIES, onnx.TensorProto.FLOAT, [batch, k, tile, tile])
    )
    _keep_needed(graph, nodes)
    # Shapes inferred for the dynamic graph would contradict the fixed tile.
    del graph.value_info[:]
    toposort(proto)
    variant = description.with_provenance(extra={**description.provenance.extra, "qgis_variant": tool.value})
    props = {**description.deepness_props(input_divisor=divisor), VARIANT_KEY: tool.value}
    save_onnx(proto, dest, variant, extra_props=props)
    return variant


def _keep_needed(graph: Any, nodes: list[Any]) -> None:
    """Keep only the nodes and initializers the graph's outputs depend on (drops the other heads)."""
    needed = {o.name for o in graph.output}
    kept: list[Any] = []
    for node in reversed(nodes):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    initializers = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(initializers)


def variant_agreement(
    path: Path, tiles: TileSet, reference: NDArray[np.float32], description: ModelDescription, tool: QgisTool
) -> float:
    """Return the fraction of pixels whose variant class equals the reference's (active-class) argmax.

    The variant is fed as its tool feeds it: Deepness's ``/255`` and standardisation from the file's
    own keys, GeoDeep's ``/range`` (the same values, by construction; both are checked).

    Raises:
        BackendError: If onnxruntime cannot load or run the variant.
    """
    import json

    from flair_deploy.predictions import masked_argmax

    ort = require("onnxruntime", purpose="checking QGIS-tool variants")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        meta = session.get_modelmeta().custom_metadata_map
        std = np.asarray(json.loads(meta["standardization_std"]), np.float32).reshape(1, -1, 1, 1)
        outs = []
        for feed in tiles.batches(4):
            raw = feed[INPUT_IMAGE].astype(np.float32)
            if tool is QgisTool.DEEPNESS:
                fed = raw * np.float32(1.0 / DEEPNESS_SCALE) / std
            else:
                fed = raw / np.float32(input_divisor(description))
            outs.append(session.run([PROBABILITIES], {INPUT_IMAGE: fed})[0])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own Fail/InvalidArgument types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BackendError(f"onnxruntime cannot run {path.name}: {first}") from None
    got = np.concatenate(outs).argmax(axis=1)
    want = masked_argmax(reference, np.asarray(description.active_mask))
    return float((got == want).mean())
