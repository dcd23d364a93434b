"""Streamed structured pruning: `channel-prune` (heads, FFN neurons) one block at a time.

Each block of `blocks.decompose` (attention: q/k/v/o heads with their GQA grouping,
RoPE and reshapes; MLP: gate/up/down neurons) is a small model by itself: its input is
the residual point, its output the next one, so the residual width is fixed at both
ends and the in-memory `channel-prune` (its group analysis, criteria, slicing and
numeric check) runs on it unchanged. Only that block's weights are in memory; the
pruned block's nodes and weights go to the output (weights to its data file) and the
prelude and epilogue are copied. With calibration data the block runs on the
activations of the already pruned blocks before it (sequential, for data-driven
criteria and `reconstruct`); weight criteria need none.

Side tensors that `transformers` exports compute once in the prelude and every layer
reads (shape vectors holding the head count, attention masks, RoPE cos/sin) are
recomputed inside each block from the graph inputs: each block gets its own copy of
the small prelude chain (`absorb_side_inputs`), so the pass can rewrite a head count
in its block's shape vector and the block model's inputs all have a sample axis.

Limits (refused, UsageError): a side chain may not contain a weight layer or a large
constant (an embedding table), blocks may read other tensors of earlier blocks only
when they are residual-shaped float activations, and only `channel-prune` and
`reconstruct` run (per-model rules such as sparsify's skip-first/last do not split
into blocks).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from compress_ir.core.calibration import CalibrationSet, batch_size_for
from compress_ir.core.errors import UsageError
from compress_ir.stream.blocks import Decomposition, Segment, decompose, rewire
from compress_ir.stream.engine import check_paths, weight_nodes
from compress_ir.stream.external import TensorReader, TensorWriter, is_external, load_graph
from compress_ir.stream.sequential import State, _advance, _Block, _needed_later

BLOCK_PASSES = ("channel-prune", "reconstruct")
INLINE_BYTES = 1024  # smaller tensors stay in the model proto
SIDE_BYTES = 1 << 20  # constants a side chain may copy into every block (not a weight table)


@dataclass
class BlockwiseReport:
    blocks: list[dict] = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0
    bytes_written: int = 0
    seconds: float = 0.0


def _block_model(model: onnx.ModelProto, seg: Segment, weights: dict[str, np.ndarray],
                 example: dict[str, np.ndarray], point: str,
                 dims: dict[str, tuple[int, list[int | str]]]) -> onnx.ModelProto:
    """The block as a standalone model: inputs and outputs typed as the whole graph
    types them (`dims`: symbolic batch/sequence kept), else from `example` (one
    calibration batch of its inputs).

    Why symbolic: typed with the calibration batch's sizes, the pass folds the block's
    shape computations (Shape -> Gather -> Concat of a head reshape) into constants, and
    the output then runs only at that batch and sequence length.
    """
    def vi(name: str, value: np.ndarray, like: str) -> onnx.ValueInfoProto:
        dtype, shape = dims.get(like) or (helper.np_dtype_to_tensor_dtype(value.dtype),
                                          list(value.shape))
        return helper.make_tensor_value_info(name, dtype, shape)

    inputs = [vi(n, example[n], n) for n in seg.inputs]
    # the outputs are the next residual point: typed like this block's point
    outputs = [vi(n, example[point], n if n in dims else point) for n in seg.outputs]
    graph = helper.make_graph(list(seg.nodes), seg.name.replace(" ", "_"), inputs, outputs,
                              [numpy_helper.from_array(weights[n], n)
                               for n in seg.initializers])
    proto = helper.make_model(graph, opset_imports=list(model.opset_import))
    proto.ir_version = model.ir_version
    return proto


def _check_block(seg: Segment, example: dict[str, np.ndarray], point: str,
                 graph_inputs: set[str]) -> None:
    for name in seg.inputs:
        value = example[name]
        if name in graph_inputs:  # token ids, masks: sample axis, read as the model does
            continue
        if value.dtype.kind != "f" or value.shape != example[point].shape:
            raise UsageError(f"{seg.name} reads {name!r} ({value.dtype}, {list(value.shape)}) "
                             "besides the residual point: streamed channel-prune needs "
                             "blocks whose inputs are graph inputs or residual-shaped float "
                             "activations")


def absorb_side_inputs(model: onnx.ModelProto, dec: Decomposition) -> int:
    """Give every block its own copy of the prelude nodes computing the side tensors it
    reads (shape vectors, masks, RoPE tables); returns how many nodes were copied.

    Why: a block pruned on its own cannot change a tensor other blocks read (a shape
    vector holding the head count), and a side tensor without a sample axis (RoPE
    [1, 1, S, D], a shape vector) cannot be fed as calibration. Recomputed from the
    graph inputs inside the block, it is the block's own, and the prelude nodes no
    block reads any more are dropped.
    """
    prelude = dec.segments[0]
    producer = {out: node for node in prelude.nodes for out in node.output}
    inits = {t.name: t for t in model.graph.initializer}
    weighted = {node.name for node, _ in weight_nodes(model)}
    copied = 0
    for idx, seg in enumerate(dec.segments[1:-1], start=1):
        side = [n for n in seg.inputs if n != dec.points[idx - 1] and n in producer]
        chain: set[int] = set()
        stack = list(side)
        while stack:
            node = producer.get(stack.pop())
            if node is None or id(node) in chain:
                continue  # graph input or initializer: read as it is
            big = [n for n in node.input if n in inits and _nbytes(inits[n]) > SIDE_BYTES]
            if node.name in weighted or big:
                raise UsageError(f"{seg.name} reads {side} from the prelude, computed with "
                                 f"{node.op_type} node {node.name!r} "
                                 f"({'a weight layer' if not big else f'constant {big[0]!r}'})"
                                 ": streamed channel-prune copies only small side chains "
                                 "into a block")
            chain.add(id(node))
            stack.extend(n for n in node.input if n)
        own = []
        for node in prelude.nodes:
            if id(node) in chain:
                copy = onnx.NodeProto()
                copy.CopyFrom(node)
                own.append(copy)
        seg.nodes[:0] = own
        copied += len(own)
    if copied:
        rewire(model, dec.segments)
        # what later segments read from outside themselves (a block's copy feeds itself)
        live = {o.name for o in model.graph.output}.union(
            *(seg.inputs for seg in dec.segments[1:]))
        kept = []
        for node in reversed(prelude.nodes):  # drop what no segment reads any more
            if any(o in live for o in node.output):
                kept.append(node)
                live.update(n for n in node.input if n)
        prelude.nodes[:] = kept[::-1]
        rewire(model, dec.segments)
    return copied


def _nbytes(tensor: onnx.TensorProto) -> int:
    size = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    return int(np.prod(tensor.dims, dtype=np.int64)) * size


class _Names:
    """Keeps tensor and node names unique in the assembled output graph."""

    def __init__(self, shared: set[str]) -> None:
        self.used: set[str] = set()
        self.shared = shared  # names several segments read: renamed per block

    def take(self, name: str, tag: str) -> str:
        new = name if name not in self.shared and name not in self.used else f"{name}__{tag}"
        while new in self.used:
            new += "_"
        self.used.add(new)
        return new


def _rename(block: onnx.ModelProto, keep: set[str], names: _Names, tag: str) -> None:
    """Rename the block's internal tensors (all but `keep`) and nodes uniquely."""
    mapping: dict[str, str] = {}

    def new(name: str) -> str:
        if not name or name in keep:
            return name
        if name not in mapping:
            mapping[name] = names.take(name, tag)
        return mapping[name]

    for init in block.graph.initializer:
        init.name = new(init.name)
    for node in block.graph.node:
        node.input[:] = [new(n) for n in node.input]
        node.output[:] = [new(n) for n in node.output]
        node.name = names.take(node.name or node.output[0], tag)


def _params(tensors: list[onnx.TensorProto]) -> int:
    return sum(int(np.prod(t.dims, dtype=np.int64)) for t in tensors
               if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16,
                                  onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE)
               and len(t.dims) >= 2)


def stream_blockwise(src: str | os.PathLike, dst: str | os.PathLike, passes: str,
                     calib: CalibrationSet | None = None, seed: int = 0,
                     log: object = None) -> BlockwiseReport:
    """Run `passes` (channel-prune[, reconstruct]) on each block of `src`, streamed."""
    import compress_ir.passes  # noqa: F401 - registers the passes
    from compress_ir.api import compress
    from compress_ir.recipe import step_specs

    start = time.perf_counter()
    names_in = [name for name, _ in step_specs([passes])]
    if not names_in or any(n not in BLOCK_PASSES for n in names_in):
        raise UsageError(f"streamed block-wise runs support {', '.join(BLOCK_PASSES)}; "
                         f"got {names_in}")
    model = load_graph(src)
    check_paths(src, model, dst)
    dec = decompose(model)
    absorb_side_inputs(model, dec)
    graph_inputs = {i.name for i in model.graph.input}
    inits = {t.name: t for t in model.graph.initializer}
    reader, writer = TensorReader(src), TensorWriter(dst)
    report = BlockwiseReport()
    batch = batch_size_for(model, 64)
    state: State | None = list(calib.batches(batch)) if calib is not None else None
    later = _needed_later(dec.segments)
    shapes = _static_shapes(model, set(dec.points)) if state is None else {}
    dims = _graph_dims(model, {n for seg in dec.segments for n in (*seg.inputs, *seg.outputs)})
    seen: dict[str, int] = {}
    for seg in dec.segments:
        for n in {*seg.initializers, *(o for node in seg.nodes for o in node.output)}:
            seen[n] = seen.get(n, 0) + 1
    names = _Names({n for n, c in seen.items() if c > 1})
    boundary = {n for seg in dec.segments for n in (*seg.inputs, *seg.outputs)}
    for seg in (dec.segments[0], dec.segments[-1]):  # copied as they are: names taken
        names.used.update(n for node in seg.nodes for n in (node.name, *node.output) if n)
    out_nodes: list[onnx.NodeProto] = []
    out_inits: list[onnx.TensorProto] = []
    done: set[str] = set()

    def emit(tensor: onnx.TensorProto, value: np.ndarray) -> None:
        if tensor.name in done:
            return
        done.add(tensor.name)
        if value.nbytes >= INLINE_BYTES:
            writer.write(tensor, value)
        else:
            tensor.CopyFrom(numpy_helper.from_array(value, tensor.name))
        out_inits.append(tensor)

    try:
        for idx, seg in enumerate(dec.segments):
            t0 = time.perf_counter()
            weights = {n: reader.read(inits[n]) for n in seg.initializers}
            is_block = 0 < idx < len(dec.segments) - 1
            pruned = None
            if is_block:
                example = _example(seg, state, shapes)
                _check_block(seg, example, dec.points[idx - 1], graph_inputs)
                block = _block_model(model, seg, weights, example, dec.points[idx - 1], dims)
                block_calib = _block_calib(seg, state)
                result = compress(block, passes, calibration=block_calib, seed=seed)
                pruned = result.model
                before = _params(list(block.graph.initializer))
                after = _params(list(pruned.graph.initializer))
                report.params_before += before
                report.params_after += after
                report.blocks.append({"block": seg.name, "params_before": before,
                                      "params_after": after,
                                      "macs_ratio": result.report.get("ratios", {}).get("macs"),
                                      "kept": _kept(result.report),
                                      **_refit(result.report)})
                _rename(pruned, boundary, names, f"s{idx}")
                out_nodes.extend(pruned.graph.node)
                for t in pruned.graph.initializer:
                    emit(onnx.TensorProto(name=t.name, data_type=t.data_type,
                                          dims=list(t.dims)), numpy_helper.to_array(t))
            else:
                out_nodes.extend(seg.nodes)
                for n in seg.initializers:
                    names.used.add(n)
                    value = weights[n]
                    tensor = onnx.TensorProto()
                    tensor.CopyFrom(inits[n])
                    if is_external(tensor) or value.nbytes >= INLINE_BYTES:
                        emit(tensor, value)
                    elif n not in done:
                        done.add(n)
                        out_inits.append(tensor)
            if state is not None and idx < len(dec.segments) - 1:
                runner = _Block(model, seg, weights) if pruned is None else \
                    _Block(pruned, _as_segment(pruned, seg), {
                        t.name: numpy_helper.to_array(t) for t in pruned.graph.initializer})
                state = _advance(runner, state, later[idx])
            if log is not None:
                log(f"{seg.name}: {time.perf_counter() - t0:.1f} s")
        out = onnx.ModelProto()
        out.CopyFrom(model)
        del out.graph.node[:]
        out.graph.node.extend(out_nodes)
        del out.graph.initializer[:]
        out.graph.initializer.extend(out_inits)
        del out.graph.value_info[:]
        report.bytes_written = writer.offset
        writer.commit(out)
    except BaseException:
        writer.abort()
        raise
    report.seconds = time.perf_counter() - start
    return report


def _as_segment(block: onnx.ModelProto, seg: Segment) -> Segment:
    return Segment(seg.name, list(block.graph.node), list(seg.inputs), list(seg.outputs),
                   [t.name for t in block.graph.initializer])


def _example(seg: Segment, state: State | None,
             shapes: dict[str, list[int] | None]) -> dict[str, np.ndarray]:
    """One batch of the block's inputs: from the state, else zeros of their declared
    shapes (weight criteria need no data; the pass checks on random inputs)."""
    if state is not None:
        return state[0]
    missing = [n for n in seg.inputs if not shapes.get(n)]
    if missing:
        raise UsageError(f"{seg.name}: the shape of {missing} is not static; give "
                         "calibration data (--calib; with a weight criterion such as l2, "
                         "--calib random:4 only supplies the shapes)")
    return {n: np.zeros(shapes[n], np.float32) for n in seg.inputs}


def _static_shapes(model: onnx.ModelProto, names: set[str]) -> dict[str, list[int] | None]:
    """Static shapes of `names` from onnx shape inference on the weightless graph."""
    inferred = onnx.shape_inference.infer_shapes(model)
    out: dict[str, list[int] | None] = {}
    for vi in (*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input):
        if vi.name in names:
            dims = [d.dim_value if d.HasField("dim_value") else 0
                    for d in vi.type.tensor_type.shape.dim]
            out[vi.name] = dims if dims and all(dims) else None
    return out


def _graph_dims(model: onnx.ModelProto,
                names: set[str]) -> dict[str, tuple[int, list[int | str]]]:
    """Element type and fully known shape (ints and dim_params) of `names`, from onnx
    shape inference on the whole graph."""
    inferred = onnx.shape_inference.infer_shapes(model)
    out: dict[str, tuple[int, list[int | str]]] = {}
    for vi in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        tt = vi.type.tensor_type
        dims = tt.shape.dim
        if vi.name in names and tt.elem_type and tt.HasField("shape") and \
                all(d.dim_param or d.dim_value for d in dims):
            out[vi.name] = (tt.elem_type, [d.dim_param or d.dim_value for d in dims])
    return out


def _block_calib(seg: Segment, state: State | None) -> CalibrationSet | None:
    if state is None:
        return None
    return CalibrationSet({n: np.concatenate([b[n] for b in state]) for n in seg.inputs},
                          f"{seg.name} inputs")


def _refit(report: dict) -> dict:
    """The reconstruct step's summary for the block (how many layers were refit, and the
    calibration and held-out errors before and after), when one ran."""
    keys = ("layers_refit", "layers_kept", "mean_rel_error_before", "mean_rel_error_after",
            "mean_heldout_rel_error_before", "mean_heldout_rel_error_after")
    for step in report.get("passes") or []:
        if step.get("name", "").startswith("reconstruct"):
            stats = step.get("stats") or {}
            return {"reconstruct": {k: stats[k] for k in keys if k in stats}}
    return {}


def _kept(report: dict) -> dict:
    """What the pruned groups keep, as the pass reports it ({"heads": [kept, of], ...})."""
    out: dict = {}
    for step in report.get("passes") or []:
        out.update((step.get("details") or {}).get("kept") or {})
    return out
