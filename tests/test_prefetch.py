"""Weight prefetch in weight-outer kernels (`compress_ir.backend.schedule.prefetch`).

A deep conv (more output channels than positions) loops over channel blocks outermost;
its later row tiles prefetch the next block's packed weight slice. Checked here: the
prefetches are there in the scheduled and the compiled code, together they request every
cache line of every block after the first and nothing outside the weights (each address
evaluated for every loop iteration), shallow convs get none, and results still match
onnxruntime.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

tvm = pytest.importorskip("tvm")
from tvm import s_tir, sym, tirx  # noqa: E402
from tvm.relax.frontend.onnx import from_onnx  # noqa: E402

from compress_ir.backend.schedule import compile_relax  # noqa: E402
from compress_ir.backend.schedule import prefetch as pf  # noqa: E402
from compress_ir.backend.schedule.cpu import CpuParams  # noqa: E402
from compress_ir.backend.schedule.pipeline import BuildStats, prepare, schedule_cpu  # noqa: E402

TARGET = {"kind": "llvm"}
CPU = CpuParams(lanes=16, registers=32)


def _conv(cin: int, cout: int, size: int, k: int = 3):
    rng = np.random.default_rng(cin * 1000 + cout + size)
    inits = [numpy_helper.from_array(
        (rng.standard_normal((cout, cin, k, k)) / np.sqrt(cin * k * k)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32), "B")]
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], kernel_shape=[k, k],
                              pads=[k // 2] * 4),
             helper.make_node("Relu", ["c"], ["y"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cout, size, size])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return model, [1, cin, size, size]


def _conv_func(model, shape) -> tirx.PrimFunc:
    mod = from_onnx(model, shape_dict={"x": shape}, keep_params_in_input=False)
    target = tvm.target.Target(TARGET)
    mod = schedule_cpu(prepare(mod, target, CPU.lanes), target, BuildStats(), CPU)
    (func,) = [f for gv, f in mod.functions_items()
               if isinstance(f, tirx.PrimFunc) and "conv2d" in gv.name_hint]
    return func


def _prefetch_sites(stmt, loops=()):
    """(enclosing loops, guard, prefetched load) for every prefetch under `stmt`."""
    if isinstance(stmt, tirx.For):
        yield from _prefetch_sites(stmt.body, (*loops, stmt))
    elif isinstance(stmt, tirx.SeqStmt):
        for s in stmt:
            yield from _prefetch_sites(s, loops)
    elif isinstance(stmt, s_tir.SBlockRealize):
        yield from _prefetch_sites(stmt.block.body, loops)
    elif isinstance(stmt, tirx.IfThenElse):
        for guard, load in _guarded_calls(stmt.then_case, [stmt.condition]):
            yield loops, guard, load


def _guarded_calls(stmt, guards):
    if isinstance(stmt, tirx.IfThenElse):
        yield from _guarded_calls(stmt.then_case, [*guards, stmt.condition])
    elif isinstance(stmt, tirx.SeqStmt):
        for s in stmt:
            yield from _guarded_calls(s, guards)
    elif isinstance(stmt, tirx.Evaluate) and getattr(stmt.value, "op", None) is not None \
            and stmt.value.op.name == "tirx.prefetch":
        yield guards, stmt.value.args[0].args[0]  # address_of(W[...]) -> W[...]


def _value(expr, binds) -> int:
    ana = sym.Analyzer()
    for var, val in binds.items():
        ana.bind(var, tvm.tirx.const(val, "int64"))
    out = ana.simplify(expr)
    return int(out) if not isinstance(out, tvm.tirx.IntImm) else out.value


@pytest.mark.parametrize("cin,cout,size,k", [(64, 64, 5, 3), (128, 64, 4, 1), (64, 96, 5, 3)])
def test_deep_conv_prefetches_every_line_of_the_next_blocks(cin: int, cout: int, size: int,
                                                            k: int) -> None:
    """E.g. 64 -> 64 channels at 5x5 (25 positions < 64 channels): two channel blocks of 32.
    Every loop iteration of the kernel is evaluated: the union of prefetched lines is
    exactly the slices of the blocks after the first, all inside the weight buffer (a 1x1
    kernel's unit axes too)."""
    func = _conv_func(*_conv(cin, cout, size, k))
    sites = list(_prefetch_sites(func.body))
    assert sites, func.script()
    seen = set()
    for loops, guards, load in sites:
        shape = [int(d) for d in load.source.shape]
        assert shape[0] >= 2, shape
        free = [lp for lp in loops if int(lp.extent) > 1]
        for values in itertools.product(*(range(int(lp.extent)) for lp in free)):
            binds = {lp.loop_var: v for lp, v in zip(free, values, strict=True)}
            binds.update({lp.loop_var: 0 for lp in loops if int(lp.extent) == 1})
            if not all(_value(g, binds) for g in guards):
                continue
            idx = tuple(_value(i, binds) for i in load.indices)
            assert all(0 <= i < d for i, d in zip(idx, shape, strict=True)), (idx, shape)
            seen.add(idx)
    blocks, *steps, lane = shape
    per_line = pf.CACHE_LINE // 4
    want = {(b, *s, c) for b in range(1, blocks)
            for s in itertools.product(*(range(d) for d in steps))
            for c in range(0, lane, per_line)}
    assert seen == want, (len(seen), len(want), sorted(want - seen)[:5])


def test_shallow_conv_gets_no_prefetch() -> None:
    """16 channels at 16x16: positions outermost, the weights stay in cache; no prefetch."""
    func = _conv_func(*_conv(16, 16, 16))
    assert "T.prefetch(" not in func.script()
    assert pf.PREFETCH_ATTR not in func.script()


@pytest.mark.parametrize("cin,cout,size,k", [(64, 96, 5, 3), (128, 64, 4, 1), (48, 80, 7, 3)])
def test_prefetching_kernels_compile_to_prefetch_and_match_onnxruntime(
        cin: int, cout: int, size: int, k: int) -> None:
    """The compiled code issues prefetcht1 (locality 2: into L2) and the result is exact."""
    model, shape = _conv(cin, cout, size, k)
    mod = from_onnx(model, shape_dict={"x": shape}, keep_params_in_input=False)
    executable, _ = compile_relax(mod, tvm.target.Target(TARGET))
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    vm = tvm.relax.VirtualMachine(executable, tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x)).numpy()
    want = ort.InferenceSession(model.SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    rel = float(np.abs(got - want).max() / np.abs(want).max())
    assert rel < 1e-5, rel
    assert "T.prefetch(" in _conv_func(model, shape).script()
    asm = executable.mod.imports[0].inspect_source("asm") if executable.mod.imports \
        else executable.mod.inspect_source("asm")
    assert "prefetcht1" in asm
