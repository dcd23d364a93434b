"""Gradients of a model's output error w.r.t. chosen initializers, compiled with TVM Relax.

Why: every refit of `reconstruct` and `sparsify` is local (one layer's output, or the
residual stream after it). `distill` instead moves the kept weights of many layers at
once so that the whole model's output matches the original's, which needs
d(output error)/d(weights) through everything downstream. Onnxruntime has no training
build here; TVM Relax differentiates the imported ONNX graph (`relax.transform.Gradient`),
as the `taylor`/`fisher` criteria already do for activations.

The loss is L = sum(k * (f(x; P) - y)^2) over the model's first output: `y` is the
original model's output, `k` a weight broadcast over the trailing axes (0 at padded
tokens, so they never pull on the weights). The chosen initializers `P` become graph
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
from onnx import helper

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


def _loss_function(out: Any, weight_shape: tuple[int, ...]) -> Any:
    """The Relax function (output, y, k) -> sum(k * (output - y)^2)."""
    from tvm import relax

    bb = relax.BlockBuilder()
    o = relax.Var("output", relax.TensorType(out.shape, out.dtype))
    y = relax.Var("target", relax.TensorType(out.shape, out.dtype))
    k = relax.Var("weight", relax.TensorType(list(weight_shape), out.dtype))
    with bb.function("output_error", [o, y, k]):
        with bb.dataflow():
            diff = bb.emit(relax.op.subtract(o, y))
            sq = bb.emit(relax.op.multiply(relax.op.multiply(diff, diff), k))
            result = bb.emit_output(relax.op.sum(sq))
        bb.emit_func_output(result)
    return bb.get()["output_error"]


def _compile(mod: Any) -> tuple[Any, str]:
    """(executable, how): the project's CPU schedules on x86, TVM's default elsewhere."""
    import tvm

    from compress_ir.targets import host

    if host.is_x86_64():
        from compress_ir.backend.schedule import compile_relax
        from compress_ir.targets.registry import resolve_target

        spec = resolve_target("x86")
        executable, _ = compile_relax(mod, spec.tvm_target(), spec)
        return executable, f"compress-ir schedules, {spec.description}"
    return tvm.compile(mod, target="llvm"), "TVM default llvm build"


class OutputGradients:
    """Loss and dL/dP for a fixed batch shape, compiled once (see the module docstring)."""

    def __init__(self, proto: onnx.ModelProto, params: list[str],
                 input_shapes: dict[str, tuple[int, ...]], weight_shape: tuple[int, ...]
                 ) -> None:
        try:
            import tvm
            from tvm import relax
            from tvm.relax.frontend.onnx import from_onnx
            from tvm.relax.training import AppendLoss
        except ImportError:
            raise UsageError("gradients need Apache TVM: pip install 'compress-ir[tvm]'"
                             ) from None
        from compress_ir.passes.analysis.importance.taylor import _register_missing_gradients

        _register_missing_gradients()
        start = time.perf_counter()
        inits = {i.name for i in proto.graph.initializer}
        self.inputs = [i.name for i in proto.graph.input if i.name not in inits]
        self.params = list(params)
        work = params_as_inputs(proto, self.params)
        with warnings.catch_warnings():  # the frontend's notes on renamed tensors
            warnings.simplefilter("ignore", UserWarning)
            mod = from_onnx(work, shape_dict={n: list(input_shapes[n]) for n in self.inputs},
                            keep_params_in_input=False)
        mod = relax.transform.DecomposeOpsForInference()(mod)
        mod = relax.transform.DecomposeOpsForTraining()(mod)
        out = mod["main"].ret_ty
        if not isinstance(out, relax.TensorType) or not str(out.dtype).startswith("float"):
            raise UsageError(f"distill needs the model's output to be one float tensor, got {out}")
        self.output_shape = tuple(int(d) for d in out.shape)
        self.weight_shape = tuple(weight_shape)
        mod = AppendLoss("main", _loss_function(out, self.weight_shape), 1, "main_loss")(mod)
        fn_params = list(mod["main_loss"].params)
        n_in = len(self.inputs)
        wanted = fn_params[n_in:n_in + len(self.params)]
        mod = relax.transform.Gradient("main_loss", require_grads=wanted)(mod)
        mod = tvm.IRModule({"main_loss_adjoint": mod["main_loss_adjoint"]})
        executable, self.compiled_with = _compile(mod)
        self.vm = relax.VirtualMachine(executable, tvm.cpu())
        self.compile_seconds = time.perf_counter() - start
        self._tensor = tvm.runtime.tensor

    def __call__(self, feeds: dict[str, np.ndarray], values: list[np.ndarray],
                 target: np.ndarray, weight: np.ndarray) -> tuple[float, list[np.ndarray]]:
        """(L, [dL/dP_i]) for one batch; `values` are the current P in `params` order."""
        t = self._tensor
        args = [t(np.ascontiguousarray(feeds[n])) for n in self.inputs]
        args += [t(np.ascontiguousarray(v, dtype=np.float32)) for v in values]
        args += [t(np.ascontiguousarray(target, dtype=np.float32)),
                 t(np.ascontiguousarray(weight, dtype=np.float32))]
        loss, grads = self.vm["main_loss_adjoint"](*args)
        return float(loss.numpy()), [g.numpy() for g in grads]
