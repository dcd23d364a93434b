"""Streamed, sequential OBS (SparseGPT) sparsify: one residual block in memory at a time.

For each segment of `blocks.decompose` in order (prelude, blocks, epilogue) only that
segment's weights are read from the source's external data. The segment runs in
onnxruntime on the stored activations of the calibration batches (its inputs: the
residual point plus side tensors such as RoPE tables and masks). Its target layers are
solved stage by stage exactly as the in-memory `sparsify{criterion=obs}` does (a stage:
layers none of which feeds another, e.g. q/k/v, then o; gate/up, then down; each stage's
inputs captured with the earlier stages already sparse), the new weights are written to
the output's data file, and the segment is re-run with them to give the next segment's
inputs. With `correct`, a second stream of activations from the dense model runs along
(the dense layer outputs the refit aims at).

Differences from the in-memory pass, all deliberate:
* Layers that read the same tensor (q/k/v; gate/up) share one Hessian, from the rows
  drawn for the first of them, and, without the held-out refit, one factorisation.
  Equal to the in-memory pass when every row is used (calibration rows <= `samples`, the
  default for up to 8192 rows); otherwise the shared rows are one random draw instead
  of one per layer.
* Memory: about two copies of one block's weights plus the calibration activations
  (samples x sequence x hidden floats per stream), never the model.
"""

from __future__ import annotations

import math
import os
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper, numpy_helper

from compress_ir.core import numeric
from compress_ir.core.calibration import CalibrationSet, batch_size_for
from compress_ir.core.errors import ModelRunError, UsageError
from compress_ir.core.padding import batch_mask, token_mask
from compress_ir.passes.analysis.heldout import held_out, period_for
from compress_ir.passes.analysis.sparsegpt import (
    HessianAccumulator,
    inverse_cholesky,
    obs_prune,
)
from compress_ir.passes.analysis.sparsity_masks import (
    Pattern,
    split_count,
    units,
)
from compress_ir.passes.transform.sparsify import (
    Layer,
    SparsifyOptions,
    _layer_rows,
    _obs,
    _store,
)
from compress_ir.passes.weight_layers import attrs
from compress_ir.stream.blocks import Segment, decompose
from compress_ir.stream.engine import StreamReport, check_paths, is_external, plan
from compress_ir.stream.external import TensorReader, TensorWriter, load_graph

State = list[dict[str, np.ndarray]]  # per calibration batch: tensor name -> value


@dataclass
class _Block:
    """One segment as a runnable model: its nodes and (current) weights."""

    model: onnx.ModelProto
    segment: Segment
    weights: dict[str, np.ndarray]

    def session(self, outputs: list[str], state: State) -> object:
        """An onnxruntime session computing `outputs` from the segment's inputs."""
        g = self.model.graph
        known = {vi.name: vi for vi in (*g.value_info, *g.input, *g.output)}
        first = state[0]
        inputs = [helper.make_tensor_value_info(
            name, helper.np_dtype_to_tensor_dtype(first[name].dtype),
            [None] * first[name].ndim) for name in self.segment.inputs]
        outs = []
        for name in dict.fromkeys(outputs):
            vi = onnx.ValueInfoProto()
            if name in known:
                vi.CopyFrom(known[name])
            else:
                vi.name = name
            outs.append(vi)
        inits = [numpy_helper.from_array(self.weights[n], n) for n in self.segment.initializers]
        graph = helper.make_graph(list(self.segment.nodes), self.segment.name.replace(" ", "_"),
                                  inputs, outs, inits)
        proto = helper.make_model(graph, opset_imports=list(self.model.opset_import))
        proto.ir_version = self.model.ir_version
        proto.functions.extend(self.model.functions)
        return numeric.session(proto, optimize=True)

    def run(self, outputs: list[str], state: State) -> Iterator[dict[str, np.ndarray]]:
        """The requested tensors, batch by batch."""
        if not outputs:
            yield from ({} for _ in state)
            return
        names = list(dict.fromkeys(outputs))
        sess = self.session(names, state)
        for feeds in state:
            try:
                values = sess.run(names, {n: feeds[n] for n in self.segment.inputs})
            except numeric.RUN_ERRORS as exc:
                raise ModelRunError(f"{self.segment.name}: onnxruntime fails on the "
                                    f"calibration activations: {numeric.last_line(exc)}") from None
            yield dict(zip(names, values, strict=True))


def _advance(block: _Block, state: State, keep: set[str]) -> State:
    """Run the block on every batch: the new state holds its outputs plus the earlier
    tensors still needed (`keep`)."""
    out = []
    for feeds, produced in zip(state, block.run(block.segment.outputs, state), strict=True):
        nxt = {k: v for k, v in feeds.items() if k in keep}
        nxt.update(produced)
        out.append(nxt)
    return out


def _layer(node: onnx.NodeProto, weight: np.ndarray, name: str) -> Layer:
    """A sparsify `Layer` for a proto node (what `_obs`, `_store` and `_layer_rows` read)."""
    const = gs.Constant(name, weight)
    var = gs.Variable(node.input[0])
    gnode = gs.Node(op=node.op_type, name=node.name, attrs=attrs(node), inputs=[var, const],
                    outputs=[gs.Variable(o) for o in node.output])
    return Layer(gnode, const)


def _stages(segment: Segment, targets: dict[str, Layer]) -> list[list[Layer]]:
    """The segment's target layers in stages: the longest chain of targets above each
    (the in-memory pass's rule, within the block: no stage feeds another of its stage)."""
    depth: dict[str, int] = {}
    stages: dict[int, list[Layer]] = defaultdict(list)
    for node in segment.nodes:
        d = max((depth.get(n, 0) for n in node.input if n), default=0)
        if node.name in targets:
            stages[d].append(targets[node.name])
            d += 1
        for out in node.output:
            depth[out] = d
    return [stages[k] for k in sorted(stages)]


def _capture(block: _Block, dense: _Block | None, stage: list[Layer], state: State,
             dense_state: State | None, opts: SparsifyOptions, seed: int, batch: int,
             period: int, tokens: np.ndarray | None = None,
             ) -> dict[str, list[HessianAccumulator]]:
    """Accumulate X^T X (and X^T D, D^T D with a dense stream) per distinct input.

    Rows are drawn like the in-memory `_capture_hessians`: per batch, at most
    `samples / batches` rows, rng seeded (seed, index of the layer in the stage, batch);
    layers reading the same tensor share the first one's rows and accumulator.
    """
    per_batch = max(1, math.ceil(opts.samples / len(state)))
    first: dict[str, int] = {}
    for i, layer in enumerate(stage):
        first.setdefault(layer.node.inputs[0].name, i)
    names = list(first)
    accs: dict[str, list[HessianAccumulator]] = {}
    for name, i in first.items():
        layer = stage[i]
        accs[name] = [HessianAccumulator(layer.shape()[1], paired=dense is not None)
                      for _ in range(layer.groups)]
        for acc in accs[name]:
            acc.held = (HessianAccumulator(acc.xtx.shape[0], paired=True) if period else None)
    streams = [block.run(names, state)]
    if dense is not None and dense_state is not None:
        streams.append(dense.run(names, dense_state))
    buffers = {id(a): _RowBuffer(a) for group in accs.values() for acc in group
               for a in (acc, acc.held) if a is not None}
    for b, acts in enumerate(zip(*streams, strict=True)):
        for name, i in first.items():
            layer = stage[i]
            xs = [np.asarray(a[name], dtype=np.float32) for a in acts]
            rng = np.random.default_rng([seed, i, b])
            rows, sample = _layer_rows(layer, xs, per_batch, rng, b * batch,
                                       batch_mask(tokens, b, batch))
            held = held_out(sample, period)
            width = rows[0].shape[1] // layer.groups
            for g, acc in enumerate(accs[name]):
                parts = [r[:, g * width:(g + 1) * width] for r in rows]
                if acc.held is None:
                    buffers[id(acc)].add(parts)
                else:
                    buffers[id(acc)].add([p[~held] for p in parts])
                    buffers[id(acc.held)].add([p[held] for p in parts])
    for buf in buffers.values():
        buf.flush()
    return accs


class _RowBuffer:
    """Collects rows and adds them to a HessianAccumulator `rows` at a time.

    Why: a sequence-16 batch gives 16 rows; adding them one batch at a time would read
    and write the K x K float64 sums (254 MB at K=5632) 16 rows at a time, which is
    memory-bound and dominated the solve. Same sums, other float order.
    """

    def __init__(self, acc: HessianAccumulator, rows: int = 2048) -> None:
        self.acc, self.limit = acc, rows
        self.parts: list[list[np.ndarray]] = []
        self.count = 0

    def add(self, parts: list[np.ndarray]) -> None:
        self.parts.append(parts)
        self.count += parts[0].shape[0]
        if self.count >= self.limit:
            self.flush()

    def flush(self) -> None:
        if self.parts:
            self.acc.add(*(np.concatenate(cols) for cols in zip(*self.parts, strict=True)))
        self.parts, self.count = [], 0


def _solve_shared(layers: list[Layer], accs: list[HessianAccumulator], pattern: Pattern,
                  opts: SparsifyOptions, dtype: type = np.float64) -> None:
    """Plain OBS (no refit) of layers with one input: one factorisation per group.

    Same result and report fields as sparsify's `_obs` without a dense target (with
    `dtype` float64; float32: the sweep and errors in single precision).
    """
    factors = [inverse_cholesky(acc.hessian(), opts.damp) for acc in accs]
    for layer in layers:
        weight = layer.matrix().astype(np.float64)
        out = weight.shape[0] // layer.groups
        size = units(pattern, (out, weight.shape[1]))
        counts = split_count(layer.count, [size] * layer.groups)
        new = np.zeros_like(weight)
        keep = np.ones(weight.shape, dtype=bool)
        err_obs = err_mag = den = 0.0
        for g, (acc, u, count) in enumerate(zip(accs, factors, counts, strict=True)):
            rows = slice(g * out, (g + 1) * out)
            w_g, h = weight[rows], acc.hessian()
            errors: dict[str, float] = {}
            new[rows], keep[rows] = obs_prune(w_g, h, pattern, count, opts.chunk, opts.damp, u,
                                              errors, dtype)
            w_d, h_d = w_g.astype(dtype), h.astype(dtype, copy=False)
            den += float(np.sum((w_d @ h_d) * w_d, dtype=np.float64))
            err_obs += max(errors["obs"], 0.0)
            err_mag += max(errors["magnitude"], 0.0)
        layer.new, layer.keep = new, keep
        layer.info = {
            "layer_rel_error": round(math.sqrt(err_obs / den), 6) if den else 0.0,
            "layer_rel_error_magnitude": round(math.sqrt(err_mag / den), 6) if den else 0.0,
            "calib_rows": accs[0].rows}


def stream_obs(src: str | os.PathLike, dst: str | os.PathLike, calib: CalibrationSet,
               opts: SparsifyOptions, seed: int = 0, log: object = None,
               solve_dtype: type = np.float64) -> StreamReport:
    """`sparsify{criterion=obs}` of `src` into `dst` (+ `dst.data`), block by block.

    `solve_dtype` float32 runs the plain OBS sweeps (stage 0, or all with correct=false)
    in single precision; the refit path is the in-memory pass's, float64.
    """
    start = time.perf_counter()
    if opts.criterion != "obs":
        raise UsageError("stream_obs needs criterion=obs")
    if opts.solver != "obs":
        raise UsageError(f"streamed obs has no solver={opts.solver} (one eigendecomposition "
                         "per layer does not scale to LLM widths): pass solver=obs")
    if opts.scope != "layer" or opts.override or opts.exclude or opts.min_size:
        raise UsageError("streamed obs supports scope=layer without override, exclude or "
                         "min-size")
    pattern = opts.parsed_pattern
    model = load_graph(src)
    check_paths(src, model, dst)
    chosen, skipped = plan(model, pattern, opts.skip_first, opts.skip_last)
    dec = decompose(model)
    inits = {t.name: t for t in model.graph.initializer}
    reader, writer = TensorReader(src), TensorWriter(dst)
    report = StreamReport(skipped=skipped)
    batch = batch_size_for(model, 64)
    state: State = list(calib.batches(batch))
    tokens = token_mask(model, calib.arrays)  # padded positions are no Hessian rows
    correct = opts.correct and opts.sequential
    dense_state: State | None = [dict(f) for f in state] if correct else None
    period = period_for(opts.holdout, calib.size) if correct else 0
    needed_later = _needed_later(dec.segments)
    stage_no = 0
    written: set[str] = set()
    try:
        for seg_idx, seg in enumerate(dec.segments):
            t_seg = time.perf_counter()
            weights = {n: reader.read(inits[n]) for n in seg.initializers}
            block = _Block(model, seg, weights)
            dense = _Block(model, seg, dict(weights)) if correct else None
            targets = {}
            for node in seg.nodes:
                if len(node.input) > 1 and node.input[1] in chosen and \
                        chosen[node.input[1]].name == node.name:
                    layer = _layer(node, weights[node.input[1]], node.input[1])
                    layer.count = int(round(opts.target * units(pattern, layer.shape())))
                    targets[node.name] = layer
            for stage in _stages(seg, targets):
                use_dense = dense if stage_no > 0 else None
                accs = _capture(block, use_dense, stage, state,
                                dense_state if use_dense else None, opts, seed + stage_no,
                                batch, period if use_dense else 0, tokens)
                by_input: dict[str, list[Layer]] = defaultdict(list)
                for layer in stage:
                    by_input[layer.node.inputs[0].name].append(layer)
                for name, group in by_input.items():
                    if use_dense is not None:
                        for layer in group:
                            _obs(layer, pattern, accs[name], opts)
                    else:
                        _solve_shared(group, accs[name], pattern, opts, solve_dtype)
                    for layer in group:
                        weights[layer.weight.name] = _store(layer)
                stage_no += 1
            for layer in targets.values():
                value = weights[layer.weight.name]
                writer.write(inits[layer.weight.name], value)
                written.add(layer.weight.name)
                zeros = int(np.count_nonzero(value == 0))
                report.zeros += zeros
                report.weights += value.size
                report.layers.append({"node": layer.name, "weight": layer.weight.name,
                                      "size": int(value.size),
                                      "sparsity": round(zeros / value.size, 6), **layer.info})
            if seg_idx < len(dec.segments) - 1:
                keep = needed_later[seg_idx]
                state = _advance(block, state, keep)
                if dense is not None and dense_state is not None:
                    dense_state = _advance(dense, dense_state, keep)
            del block, dense, weights
            if log is not None:
                log(f"{seg.name}: {len(targets)} layers, {time.perf_counter() - t_seg:.1f} s")
        for tensor in model.graph.initializer:  # the rest, unchanged, in graph order
            if tensor.name not in written and is_external(tensor):
                writer.write(tensor, reader.read(tensor))
        report.bytes_written = writer.offset
        writer.commit(model)
    except BaseException:
        writer.abort()
        raise
    report.seconds = time.perf_counter() - start
    return report


def _needed_later(segments: list[Segment]) -> list[set[str]]:
    """Per segment: the tensors later segments read (kept in the state after it)."""
    out: list[set[str]] = []
    for i in range(len(segments)):
        out.append({n for seg in segments[i + 1:] for n in seg.inputs})
    return out
