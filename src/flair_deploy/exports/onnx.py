"""PyTorch → ONNX FP32: the graph every other artifact is derived from, and its self-description.

The exported graph takes **raw band values** (``image``: float32 ``(N, C, H, W)``) and, for metadata
models, ``metadata`` (float32 ``(N, D)``); normalisation happens inside the graph, so every runtime is
fed the same way. It always outputs ``logits`` (float32 ``(N, K, H, W)``) and optionally
``probabilities`` (softmax over active classes), ``class_index`` (uint8 logit index of the most
probable active class) and ``confidence`` (its probability).

The :class:`~flair_deploy.description.ModelDescription` lives in the ONNX ``metadata_props``. Graph
tools (onnxslim, FP16 conversion, quantization) may drop them, so :func:`save_onnx` stamps the
description after every transform, writes to a temporary name, reads the file back and checks the
description survived before renaming it into place.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from flair_deploy._optional import require
from flair_deploy.artifacts import read_onnx_description
from flair_deploy.artifacts import stamp_onnx_description as stamp_description
from flair_deploy.atomic import atomic_path, scratch_path
from flair_deploy.description import ModelDescription, file_sha256
from flair_deploy.errors import ExportError, ModelDescriptionError
from flair_deploy.exports.config import Exporter, Head
from flair_deploy.models import FlairSegmenter

__all__ = [
    "INACTIVE_BIAS",
    "INPUT_IMAGE",
    "INPUT_METADATA",
    "OUTPUT_NAMES",
    "ExportGraph",
    "export_onnx",
    "graph_regions",
    "load_onnx",
    "output_names",
    "read_onnx_description",
    "restamp_onnx",
    "save_onnx",
    "stamp_description",
    "toposort",
]

INPUT_IMAGE = "image"
INPUT_METADATA = "metadata"
#: Output tensor names of each head, in graph order.
OUTPUT_NAMES: dict[Head, tuple[str, ...]] = {
    Head.LOGITS: ("logits",),
    Head.PROBABILITIES: ("probabilities",),
    Head.CLASSES: ("class_index", "confidence"),
}
#: Added to untrained classes' logits before the softmax. A finite -1e4 rather than -inf: exp()
#: underflows to exactly 0 all the same, and calibrators and FP16 converters choke on infinite ranges.
INACTIVE_BIAS = -1.0e4
_ELEMENTWISE = frozenset({"Mul", "Add", "Sub", "Div", "Cast"})


def output_names(heads: Sequence[Head]) -> list[str]:
    """Return the graph output names for *heads*, in graph order."""
    return [name for h in Head if h in heads for name in OUTPUT_NAMES[h]]


class ExportGraph(nn.Module):
    """The network plus the optional deployment heads, as exported.

    Inactive (untrained) classes get ``-1e4`` before the softmax, so their probability underflows to
    exactly 0 and they are never the ``class_index``.
    """

    inactive_bias: Tensor

    def __init__(self, model: FlairSegmenter, description: ModelDescription, heads: Sequence[Head]) -> None:
        super().__init__()
        self.model = model
        self.heads = tuple(h for h in Head if h in heads)
        bias = [0.0 if active else INACTIVE_BIAS for active in description.active_mask]
        self.register_buffer("inactive_bias", torch.tensor(bias, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, image: Tensor, metadata: Tensor | None = None) -> tuple[Tensor, ...]:
        """Return the outputs of :attr:`heads` for raw band values (and metadata)."""
        logits = self.model(image, metadata)
        outputs = [logits]
        if Head.PROBABILITIES in self.heads or Head.CLASSES in self.heads:
            probabilities = torch.softmax(logits + self.inactive_bias, dim=1)
            if Head.PROBABILITIES in self.heads:
                outputs.append(probabilities)
            if Head.CLASSES in self.heads:
                confidence, index = probabilities.max(dim=1)
                outputs += [index.to(torch.uint8), confidence]
        return tuple(outputs)


def _example_inputs(description: ModelDescription, tile: int, batch: int) -> tuple[Tensor, ...]:
    # Raw-value ranges: the values themselves do not change a traced graph, but realistic inputs keep
    # any data-dependent export check honest.
    image = torch.rand(batch, description.in_channels, tile, tile) * 255.0
    if description.metadata is None:
        return (image,)
    return image, torch.rand(batch, description.metadata.dim)


def export_onnx(
    model: FlairSegmenter,
    description: ModelDescription,
    path: Path,
    *,
    heads: Sequence[Head] = (Head.LOGITS,),
    tile_size: int | None = None,
    dynamic_hw: bool = False,
    opset: int = 17,
    exporter: Exporter = Exporter.TORCHSCRIPT,
    slim: bool = True,
) -> ModelDescription:
    """Export *model* to an FP32 ONNX file at *path* with its description in ``metadata_props``.

    Args:
        model: The network (any mode; it is exported in eval mode and its mode restored).
        description: Its description; the provenance written is updated with precision and opset.
        path: Destination ``.onnx`` file (written atomically).
        heads: Outputs to export; ``logits`` is always first.
        tile_size: Tile edge of the example input (and of the fixed H/W); None uses the description's.
        dynamic_hw: Make height and width dynamic (they must stay multiples of the output stride).
        opset: ONNX opset, 17 or newer.
        exporter: ``torchscript`` or ``dynamo``.
        slim: Simplify the graph with onnxslim.

    Returns:
        The description as stamped into the file.

    Raises:
        ExportError: If the exporter, onnxslim or ``onnx.checker`` fails.
        OutputError: If *path* cannot be written.
    """
    onnx = require("onnx", purpose="exporting ONNX models")
    tile = tile_size or description.tile_size
    stride = description.architecture.output_stride
    if tile % stride:
        raise ExportError(
            f"tile size {tile} is not a multiple of the network's output stride {stride}; "
            f"use e.g. {max(stride, tile // stride * stride)}"
        )
    pools = _fixed_pools(model, description, dynamic_hw)
    graph = ExportGraph(model, description, heads)
    inputs = _example_inputs(description, tile, batch=2)
    in_names = [INPUT_IMAGE] + ([INPUT_METADATA] if description.metadata is not None else [])
    out_names = output_names(graph.heads)
    was_training = model.training
    graph.eval()
    try:
        with warnings.catch_warnings(), pools, scratch_path(path, "raw") as raw:
            # The tracer warns about Python control flow that is constant for our graph; users
            # cannot act on these, so they are silenced here only.
            warnings.simplefilter("ignore")
            if exporter is Exporter.DYNAMO:
                _export_dynamo(graph, inputs, raw, in_names, out_names, dynamic_hw, opset, stride)
            else:
                _export_torchscript(graph, inputs, raw, in_names, out_names, dynamic_hw, opset)
            proto = onnx.load(str(raw))
    except (RuntimeError, ValueError, TypeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ExportError(f"torch.onnx.export ({exporter.value}) failed: {first}") from None
    finally:
        model.train(was_training)
    if slim:
        onnxslim = require("onnxslim", purpose="simplifying the exported ONNX graph")
        try:
            proto = onnxslim.slim(proto)
        except Exception as exc:  # noqa: BLE001 - onnxslim raises assorted internal types; the graph is then unusable
            raise ExportError(f"onnxslim failed to simplify the graph: {exc}") from None
    stamped = description.with_provenance(precision="fp32", opset=opset)
    save_onnx(proto, path, stamped)
    return stamped


def _fixed_pools(model: FlairSegmenter, description: ModelDescription, dynamic_hw: bool) -> Any:
    """The context exporting HF adaptive pooling (UperNet's pyramid) as fixed slices, or a no-op.

    Raises:
        ExportError: For dynamic H/W with adaptive pooling: its bins depend on the tile size.
    """
    if description.architecture.provider != "huggingface":
        return contextlib.nullcontext()
    from flair_deploy.hf_models import has_adaptive_pooling, onnx_exportable

    if not has_adaptive_pooling(model.net):
        return contextlib.nullcontext()
    if dynamic_hw:
        raise ExportError(
            f"{description.architecture.hf_model}: UperNet's pyramid pooling bins depend on the tile size, "
            "so its ONNX graph has a fixed height and width; export without --dynamic-hw (the tile size "
            "is the description's, or --tile-size)"
        )
    return onnx_exportable(model.net)


def _export_torchscript(
    graph: ExportGraph,
    inputs: tuple[Tensor, ...],
    path: Path,
    in_names: list[str],
    out_names: list[str],
    dynamic_hw: bool,
    opset: int,
) -> None:
    spatial = {0: "batch", 2: "height", 3: "width"} if dynamic_hw else {0: "batch"}
    axes: dict[str, dict[int, str]] = {INPUT_IMAGE: spatial}
    if INPUT_METADATA in in_names:
        axes[INPUT_METADATA] = {0: "batch"}
    for name in out_names:
        axes[name] = (
            spatial
            if name in ("logits", "probabilities")
            else {k: v for k, v in spatial.items() if k != 3}
            | ({1: "height", 2: "width"} if dynamic_hw else {})
        )
    torch.onnx.export(
        graph,
        inputs,
        str(path),
        dynamo=False,
        opset_version=opset,
        input_names=in_names,
        output_names=out_names,
        dynamic_axes=axes,
        do_constant_folding=True,
    )


def _export_dynamo(
    graph: ExportGraph,
    inputs: tuple[Tensor, ...],
    path: Path,
    in_names: list[str],
    out_names: list[str],
    dynamic_hw: bool,
    opset: int,
    stride: int,
) -> None:
    dim = torch.export.Dim
    batch = dim("batch", min=1, max=4096)
    image: dict[int, Any] = {0: batch}
    if dynamic_hw:
        # H and W are multiples of the output stride: express them as stride * a free integer.
        image[2] = stride * dim("h_blocks", min=1, max=4096 // stride)
        image[3] = stride * dim("w_blocks", min=1, max=4096 // stride)
    # A tuple matching the example inputs: image-only graphs have no ``metadata`` argument to name.
    shapes: tuple[dict[int, Any], ...] = (image, {0: batch}) if INPUT_METADATA in in_names else (image,)
    torch.onnx.export(
        graph,
        inputs,
        str(path),
        dynamo=True,
        opset_version=max(opset, 18),  # the dynamo exporter's lowest supported opset is 18
        input_names=in_names,
        output_names=out_names,
        dynamic_shapes=shapes,
        external_data=False,
        verbose=False,
    )


# --------------------------------------------------------------------------------------- description
def load_onnx(path: Path) -> Any:
    """Load an ONNX model (with its weights).

    Raises:
        ModelDescriptionError: If *path* is not a readable ONNX file.
    """
    onnx = require("onnx", purpose="reading ONNX models")
    try:
        return onnx.load(str(path))
    except (OSError, ValueError) as exc:
        raise ModelDescriptionError(f"cannot read ONNX model {path}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError is not an OSError/ValueError subclass
        raise ModelDescriptionError(f"{path} is not an ONNX model ({type(exc).__name__})") from None


def save_onnx(
    proto: Any,
    path: Path,
    description: ModelDescription,
    *,
    check: bool = True,
    extra_props: Mapping[str, str] | None = None,
) -> str:
    """Stamp *description* into *proto*, check it, and write it atomically to *path*.

    The file is read back before it is renamed into place: a description that did not survive
    serialisation is an error, never a silently undescribed artifact.

    Args:
        proto: The ONNX ``ModelProto`` (modified in place: its ``metadata_props``).
        path: Destination file.
        description: Description to stamp.
        check: Run the full ``onnx.checker`` (with shape inference).
        extra_props: Further ``metadata_props`` written over the description's (a QGIS-tool
            variant's Deepness keys).

    Returns:
        The SHA-256 of the written file.

    Raises:
        ExportError: If the checker rejects the graph or the description does not read back.
        OutputError: If *path* cannot be written.
    """
    onnx = require("onnx", purpose="writing ONNX models")
    stamp_description(proto, description, extra=extra_props)
    if check:
        try:
            onnx.checker.check_model(proto, full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
            first = (str(exc).strip().splitlines() or ["invalid graph"])[0]
            raise ExportError(
                f"onnx.checker rejected the {description.provenance.precision} graph: {first}"
            ) from None
    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))
        back = read_onnx_description(tmp)
        if back != description:
            raise ExportError(f"the description stamped into {path.name} did not read back identically")
        sha = file_sha256(tmp)
    return sha


def restamp_onnx(path: Path, description: ModelDescription) -> str:
    """Rewrite the description of an existing ONNX file (graph untouched); returns the new SHA-256."""
    proto = load_onnx(path)
    return save_onnx(proto, path, description, check=False)


def toposort(proto: Any) -> None:
    """Sort the graph's nodes topologically, in place (stable: ties keep their original order).

    Some transforms (the FP16 converter's input casts next to blocked nodes) append nodes after
    their consumers; the ONNX checker and some runtimes require producers first.
    """
    graph = proto.graph
    nodes = list(graph.node)
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    producers = {out: idx for idx, node in enumerate(nodes) for out in node.output}
    done: list[bool] = [False] * len(nodes)
    order: list[int] = []

    def visit(idx: int, stack: set[int]) -> None:
        if done[idx] or idx in stack:
            return
        stack.add(idx)
        for name in nodes[idx].input:
            if name not in available and name in producers:
                visit(producers[name], stack)
        stack.discard(idx)
        if not done[idx]:
            done[idx] = True
            order.append(idx)

    for idx in range(len(nodes)):
        visit(idx, set())
    sorted_nodes = [nodes[i] for i in order]
    del graph.node[:]
    graph.node.extend(sorted_nodes)


# --------------------------------------------------------------------------------------- graph regions
def graph_regions(proto: Any) -> dict[str, list[str]]:
    """Name the nodes of the regions precision conversions treat specially.

    Returns:
        ``normalization``: nodes between the ``image`` input and the first convolution (the in-graph
        band normalisation); ``stem``: that first convolution; ``head``: the convolution producing
        ``logits`` (and any bias add after it); ``outputs``: every node after ``logits`` (softmax,
        argmax heads).
    """
    nodes = list(proto.graph.node)
    consumers: dict[str, list[Any]] = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    normalization: list[str] = []
    stem: list[str] = []
    frontier = [INPUT_IMAGE]
    seen: set[str] = set()
    while frontier:
        tensor = frontier.pop()
        for node in consumers.get(tensor, []):
            if node.name in seen:
                continue
            seen.add(node.name)
            if node.op_type == "Conv":
                stem.append(node.name)
            elif node.op_type in _ELEMENTWISE:
                normalization.append(node.name)
                frontier.extend(node.output)
            # Other consumers (Shape for the decoder's resize sizes) are not on the data path.
    producers = {out: node for node in nodes for out in node.output}
    head: list[str] = []
    outputs: list[str] = []
    frontier = ["logits"]
    while frontier:
        tensor = frontier.pop()
        for node in consumers.get(tensor, []):
            if node.name not in outputs:
                outputs.append(node.name)
                frontier.extend(node.output)
    # Walk back from ``logits`` through bias adds / identities to the segmentation-head convolution.
    node = producers.get("logits")
    while node is not None:
        head.append(node.name)
        if node.op_type == "Conv":
            break
        node = next((producers[i] for i in node.input if i in producers), None)
    return {"normalization": normalization, "stem": stem, "head": head, "outputs": outputs}
