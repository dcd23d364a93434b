"""Streamed sparsification: one weight in memory at a time, external data in and out.

The graph is loaded without weights; each initializer is read from the source's
external data, sparsified if it is a weight layer (the same layer rule, order,
skip-first/last, matrix view and masks as the in-memory `sparsify` pass with
criterion=magnitude, so the result is identical), and appended to the output's data
file. Peak memory is about one weight tensor plus the graph, whatever the model size.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np
import onnx

from compress_ir.core.errors import OutputError, UsageError
from compress_ir.core.safety import OutputPlan, means_stdout
from compress_ir.formats.view import has_view, unview, view_shape, weight_view
from compress_ir.passes.analysis.sparsity_masks import (
    Pattern,
    layer_mask,
    parse_pattern,
    unsupported_shape,
)
from compress_ir.passes.weight_layers import WEIGHT_OPS, trans_b
from compress_ir.stream.external import (
    TensorReader,
    TensorWriter,
    external_locations,
    is_external,
    load_graph,
)

STREAM_MIN_BYTES = 2 * 1024**3  # `--stream auto`: stream when external data exceeds 2 GiB


@dataclass
class StreamReport:
    """What the streamed run did, counted from the tensors it wrote."""

    layers: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    zeros: int = 0
    weights: int = 0  # elements of the sparsified layers
    bytes_written: int = 0
    seconds: float = 0.0

    @property
    def sparsity(self) -> float:
        return self.zeros / self.weights if self.weights else 0.0


def weight_nodes(model: onnx.ModelProto) -> list[tuple[onnx.NodeProto, onnx.TensorProto]]:
    """(node, weight initializer) of every weight layer, in graph order (the pass's rule:
    op with a matrix view, input 1 a floating initializer, input 0 not a constant)."""
    inits = {t.name: t for t in model.graph.initializer}
    out = []
    for node in model.graph.node:
        if node.op_type not in WEIGHT_OPS or len(node.input) < 2:
            continue
        w = inits.get(node.input[1])
        if w is None or node.input[0] in inits:
            continue
        dtype = onnx.helper.tensor_dtype_to_np_dtype(w.data_type)
        if np.issubdtype(dtype, np.floating) and has_view(node.op_type, len(w.dims)):
            out.append((node, w))
    return out


def _uses(model: onnx.ModelProto) -> dict[str, int]:
    count: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            count[name] = count.get(name, 0) + 1
    return count


def plan(model: onnx.ModelProto, pattern: Pattern, skip_first: bool = True,
         skip_last: bool = True) -> tuple[dict[str, onnx.NodeProto], list[dict]]:
    """Weight name -> node to sparsify, and the layers kept dense with why."""
    layers = weight_nodes(model)
    uses = _uses(model)
    chosen: dict[str, onnx.NodeProto] = {}
    skipped = []
    for idx, (node, w) in enumerate(layers):
        shape = view_shape(node.op_type, tuple(w.dims), trans_b(node))
        reason = None
        if skip_first and idx == 0:
            reason = "first weighted layer (skip-first)"
        elif skip_last and idx == len(layers) - 1:
            reason = "last weighted layer (skip-last)"
        elif uses.get(w.name, 0) > 1:
            reason = f"weight {w.name!r} is shared by {uses[w.name]} nodes"
        else:
            reason = unsupported_shape(pattern, shape)
        if reason:
            skipped.append({"node": node.name, "reason": reason})
        else:
            chosen[w.name] = node
    return chosen, skipped


def check_paths(src: str | os.PathLike, model: onnx.ModelProto, dst: str | os.PathLike) -> None:
    """Refuse, before any work, an output (model or its `.data`) that is an input file.

    Why: the writer renames its files into place at the end; `-o` equal to the input (or an
    output data file named like the input's) would replace the input's weights.
    """
    if means_stdout(os.fspath(dst)):
        raise OutputError("--stream writes a model plus its external data: give -o FILE.onnx")
    paths = OutputPlan()
    paths.add_input("input model", src)
    for location in external_locations(model, src):
        paths.add_input("model's external data", location)
    paths.add("output", dst)
    paths.add("output's external data", TensorWriter.data_path_for(dst))


def stream_sparsify(src: str | os.PathLike, dst: str | os.PathLike, pattern: str = "2:4",
                    sparsity: float | None = None, skip_first: bool = True,
                    skip_last: bool = True) -> StreamReport:
    """Magnitude-sparsify every weight layer of `src` into `dst` (+ `dst.data`), streamed."""
    start = time.perf_counter()
    pat = parse_pattern(pattern)
    fixed = pat.fixed_sparsity
    target = fixed if fixed is not None else (0.5 if sparsity is None else sparsity)
    if not 0.0 <= target < 1.0:
        raise UsageError(f"sparsity must be in [0, 1), got {target}")
    model = load_graph(src)
    check_paths(src, model, dst)
    chosen, skipped = plan(model, pat, skip_first, skip_last)
    reader, writer = TensorReader(src), TensorWriter(dst)
    report = StreamReport(skipped=skipped)
    try:
        for tensor in model.graph.initializer:
            node = chosen.get(tensor.name)
            if node is None and not is_external(tensor):
                continue  # small inline constant: stays in the model proto
            value = reader.read(tensor)
            if node is not None:
                tb = trans_b(node)
                matrix = weight_view(node.op_type, value, tb)
                keep = layer_mask(matrix.astype(np.float64) ** 2, pat, target)
                value = unview(node.op_type, np.where(keep, matrix, 0).astype(value.dtype),
                               value.shape, tb)
                zeros = int(np.count_nonzero(value == 0))
                report.zeros += zeros
                report.weights += value.size
                report.layers.append({"node": node.name, "weight": tensor.name,
                                      "size": int(value.size),
                                      "sparsity": round(zeros / value.size, 6)})
            writer.write(tensor, value)
            del value
        report.bytes_written = writer.offset
        writer.commit(model)
    except BaseException:
        writer.abort()
        raise
    report.seconds = time.perf_counter() - start
    return report
