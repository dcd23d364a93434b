"""Gradients of a model's output error w.r.t. chosen initializers, compiled with TVM Relax.

Why: every refit of `reconstruct` and `sparsify` is local (one layer's output, or the
residual stream after it). `distill` instead moves the kept weights of many layers at
once so that the whole model's output matches the original's, which needs
d(output error)/d(weights) through everything downstream. Onnxruntime has no training
build here; TVM Relax differentiates the imported ONNX graph (`relax.transform.Gradient`),
as the `taylor`/`fisher` criteria already do for activations.

The loss is L = sum_i sum(k_i * (f_i(x; P) - y_i)^2) over the chosen float outputs i
(a Hugging Face encoder has two: token states and the pooled vector): `y_i` is the
original model's output, `k_i` a weight broadcast over the trailing axes (0 at padded
tokens, so they never pull on the weights; the caller scales it so outputs of
different magnitude count alike). The chosen initializers `P` become graph
inputs of a copy of the model, in the given order, so the Relax function's parameters
line up with them by construction (no name matching after the frontend renames them).
On x86 the module is compiled with the project's CPU schedules (a MiniLM step of
8 x 128 tokens: about 1.3 s against about 49 s with TVM's unscheduled `llvm` build);
elsewhere with TVM's default build.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from compress_ir.core.errors import UsageError


def params_as_inputs(proto: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of `proto` whose initializers `names` are graph inputs instead (appended
    after the model's own inputs, in `names` order)."""
    work = onnx.ModelProto()
    work.CopyFrom(proto)
    inits = {i.name: i for i in work.graph.initializer}
    missing = [n for n in names if n not in inits]
    if missing:
        raise UsageError(f"initializers not found: {missing[:5]}")
    chosen = set(names)
    keep = [i for i in work.graph.initializer if i.name not in chosen]
    del work.graph.initializer[:]
    work.graph.initializer.extend(keep)
    graph_inputs = {i.name for i in work.graph.input}
    for name in names:
        if name in graph_inputs:  # an initializer listed as input too (old exporters)
            continue
        init = inits[name]
        work.graph.input.append(helper.make_tensor_value_info(name, init.data_type,
                                                              list(init.dims)))
    return work


def _gather_rank1(work: onnx.ModelProto) -> None:
    """Gather with a constant scalar index -> Gather with a 1-element index + Squeeze.

    Why: TVM legalizes the gradient of `take` only for 1-D indices, and a pooler's
    "first token" Gather (BERT's pooler_output) has a scalar one."""
    inits = {i.name: i for i in work.graph.initializer}
    opset = next((o.version for o in work.opset_import if o.domain in ("", "ai.onnx")), 13)
    nodes = []
    for node in work.graph.node:
        index = inits.get(node.input[1]) if node.op_type == "Gather" else None
        if index is None or len(index.dims) != 0:
            nodes.append(node)
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        name = f"{node.name or node.output[0]}_rank1"
        value = numpy_helper.to_array(index).reshape(1)
        work.graph.initializer.append(numpy_helper.from_array(value, f"{name}_index"))
        nodes.append(helper.make_node("Gather", [node.input[0], f"{name}_index"],
                                      [f"{name}_out"], name=name, axis=axis))
        if opset >= 13:
            axes = numpy_helper.from_array(np.asarray([axis], np.int64), f"{name}_axes")
            work.graph.initializer.append(axes)
            nodes.append(helper.make_node("Squeeze", [f"{name}_out", f"{name}_axes"],
                                          list(node.output), name=f"{name}_squeeze"))
        else:
            nodes.append(helper.make_node("Squeeze", [f"{name}_out"], list(node.output),
                                          name=f"{name}_squeeze", axes=[axis]))
    del work.graph.node[:]
    work.graph.node.extend(nodes)


def loss_model(proto: onnx.ModelProto, params: list[str], outputs: list[str],
               input_shapes: dict[str, tuple[int, ...]] | None = None) -> onnx.ModelProto:
    """`params_as_inputs`, with the loss computed in the graph: for each output o_i in
    `outputs`, inputs `distill_target_i` and `distill_weight_i`, and one scalar output
    `distill_loss` = sum_i ReduceSum(weight_i * (o_i - target_i)^2). With `input_shapes`,
    the graph inputs get those static dims and what they make constant is folded (the
    position ids' Range, Shape chains): Relax's Gradient rejects the `match_cast`
    bindings that dynamic shapes import as.

    Why in ONNX: Relax's `AppendLoss` counts a tuple-returning backbone as one output,
    and a model with several outputs (token states and a pooled vector) needs all."""
    work = params_as_inputs(proto, params)
    if input_shapes:
        from compress_ir.core.metrics import fold_static
        from compress_ir.core.shapes import with_input_shapes

        work = with_input_shapes(work, input_shapes)
        fold_static(work, "<distill>")
    _gather_rank1(work)
    typed = {v.name: v for v in proto.graph.output}
    parts = []
    for i, name in enumerate(outputs):
        y, k = f"distill_target_{i}", f"distill_weight_{i}"
        info = helper.make_tensor_value_info(y, onnx.TensorProto.FLOAT, None)
        if name in typed:
            info.type.CopyFrom(typed[name].type)
        work.graph.input.extend([info, helper.make_tensor_value_info(
            k, onnx.TensorProto.FLOAT, None)])
        work.graph.node.extend([
            helper.make_node("Sub", [name, y], [f"{y}_diff"], name=f"{y}_sub"),
            helper.make_node("Mul", [f"{y}_diff", f"{y}_diff"], [f"{y}_sq"], name=f"{y}_sq"),
            helper.make_node("Mul", [f"{y}_sq", k], [f"{y}_weighted"], name=f"{y}_weigh"),
            helper.make_node("ReduceSum", [f"{y}_weighted"], [f"{y}_sum"], name=f"{y}_sum",
                             keepdims=0)])
        parts.append(f"{y}_sum")
    total = parts[0]  # a chain of Adds: Relax has no gradient for Sum's `stack`
    for j, part in enumerate(parts[1:], 1):
        work.graph.node.append(helper.make_node("Add", [total, part], [f"distill_total_{j}"],
                                                name=f"distill_add_{j}"))
        total = f"distill_total_{j}"
    work.graph.node.append(helper.make_node("Identity", [total], ["distill_loss"],
                                            name="distill_loss"))
    del work.graph.output[:]
    work.graph.output.append(helper.make_tensor_value_info("distill_loss",
                                                           onnx.TensorProto.FLOAT, []))
    return work


def _compile(mod: Any) -> tuple[Any, str]:
    """(executable, how): the project's CPU schedules on x86, TVM's default elsewhere or
    where a schedule rule does not apply to a gradient kernel (slower, the same result;
    `how` says why)."""
    import tvm

    from compress_ir.targets import host

    if host.is_x86_64():
        from compress_ir.backend.schedule import compile_relax
        from compress_ir.targets.registry import resolve_target

        spec = resolve_target("x86")
        try:
            executable, _ = compile_relax(mod, spec.tvm_target(), spec)
            return executable, f"compress-ir schedules, {spec.description}"
        except Exception as exc:  # noqa: BLE001 - the same graph, built unscheduled: slower
            reason = f" (the schedules failed: {str(exc).splitlines()[0][:160]})"
    else:
        reason = ""
    return tvm.compile(mod, target="llvm"), "TVM default llvm build" + reason


class OutputGradients:
    """Loss and dL/dP for a fixed batch shape, compiled once (see the module docstring)."""

    def __init__(self, proto: onnx.ModelProto, params: list[str],
                 input_shapes: dict[str, tuple[int, ...]],
                 target_shapes: dict[str, tuple[int, ...]],
                 weight_shapes: dict[str, tuple[int, ...]]) -> None:
        try:
            import tvm
            from tvm import relax
            from tvm.relax.frontend.onnx import from_onnx
        except ImportError:
            raise UsageError("gradients need Apache TVM: pip install 'compress-ir[tvm]'"
                             ) from None
        from compress_ir.passes.analysis.importance.taylor import _register_missing_gradients

        _register_missing_gradients()
        start = time.perf_counter()
        inits = {i.name for i in proto.graph.initializer}
        self.inputs = [i.name for i in proto.graph.input if i.name not in inits]
        self.params = list(params)
        names = [o.name for o in proto.graph.output]
        self.outputs = list(target_shapes)
        work = loss_model(proto, self.params, self.outputs, dict(input_shapes))
        shape_dict = {n: list(input_shapes[n]) for n in self.inputs}
        for i, name in enumerate(self.outputs):
            if name not in names:
                raise UsageError(f"{name!r} is not an output of the model")
            shape_dict[f"distill_target_{i}"] = list(target_shapes[name])
            shape_dict[f"distill_weight_{i}"] = list(weight_shapes[name])
        with warnings.catch_warnings():  # the frontend's notes on renamed tensors
            warnings.simplefilter("ignore", UserWarning)
            mod = from_onnx(work, shape_dict=shape_dict, keep_params_in_input=False)
        mod = relax.transform.DecomposeOpsForInference()(mod)
        mod = relax.transform.DecomposeOpsForTraining()(mod)
        fn_params = list(mod["main"].params)
        n_in = len(self.inputs)
        wanted = fn_params[n_in:n_in + len(self.params)]
        mod = relax.transform.Gradient("main", require_grads=wanted)(mod)
        mod = tvm.IRModule({"main_adjoint": mod["main_adjoint"]})
        executable, self.compiled_with = _compile(mod)
        self.vm = relax.VirtualMachine(executable, tvm.cpu())
        self.compile_seconds = time.perf_counter() - start
        self._tensor = tvm.runtime.tensor

    def __call__(self, feeds: dict[str, np.ndarray], values: list[np.ndarray],
                 targets: list[np.ndarray], weights: list[np.ndarray]
                 ) -> tuple[float, list[np.ndarray]]:
        """(L, [dL/dP_i]) for one batch; `values` are the current P in `params` order,
        `targets` and `weights` one per output of `target_shapes`, in its order."""
        t = self._tensor
        args = [t(np.ascontiguousarray(feeds[n])) for n in self.inputs]
        args += [t(np.ascontiguousarray(v, dtype=np.float32)) for v in values]
        for y, k in zip(targets, weights, strict=True):
            args += [t(np.ascontiguousarray(y, dtype=np.float32)),
                     t(np.ascontiguousarray(k, dtype=np.float32))]
        loss, grads = self.vm["main_adjoint"](*args)
        return float(loss.numpy()), [g.numpy() for g in grads]
