"""Register tiles over 1 KB stay on the stack (`compress_ir.backend.schedule.stack_tiles`).

TVM moves every CPU buffer of 1 KB or more to its workspace allocator, where LLVM cannot keep
a tile's accumulators in registers. Checked here: the pass marks exactly the small "global"
allocations, the CPU pipeline applies it, the compiled kernel of a tall AVX-512 tile has no
workspace call (and has one with TVM's own pipeline), and the result matches onnxruntime.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

tvm = pytest.importorskip("tvm")
from tvm import relax, tirx  # noqa: E402
from tvm.script import tirx as T  # noqa: E402

from compress_ir.backend.build import fixed_input_specs, import_relax  # noqa: E402
from compress_ir.backend.schedule import compile_relax  # noqa: E402
from compress_ir.backend.schedule import cpu as cpu_rules  # noqa: E402
from compress_ir.backend.schedule import pipeline as build_pipeline  # noqa: E402
from compress_ir.backend.schedule import stack_tiles as st  # noqa: E402
from compress_ir.targets.host import cpu_flags  # noqa: E402
from compress_ir.targets.registry import resolve_target  # noqa: E402


def _allocs(stmt, out):
    if isinstance(stmt, tirx.AllocBuffer):
        out[stmt.buffer.name] = stmt
    elif isinstance(stmt, tirx.SeqStmt):
        for s in stmt:
            _allocs(s, out)
    elif isinstance(stmt, (tirx.For, tirx.AttrStmt)):
        _allocs(stmt.body, out)
    elif isinstance(stmt, tirx.IfThenElse):
        _allocs(stmt.then_case, out)
    return out


def _func():
    @T.prim_func(private=True)
    def func(a: T.Buffer((4096,), "float32"), b: T.Buffer((4096,), "float32")):
        for i in range(4):
            small = T.alloc_buffer((320,), "float32")  # 1280 B: a tall tile
            big = T.alloc_buffer((1280,), "float32")  # 5120 B: stays in the workspace
            local = T.alloc_buffer((64,), "float32", scope="local")
            if i < 3:
                nested = T.alloc_buffer((512,), "float32")  # exactly STACK_BYTES
                nested[0] = a[i]
                b[i + 1] = nested[0]
            small[0] = a[i]
            big[0] = a[i]
            local[0] = a[i]
            b[i] = small[0] + big[0] + local[0]
    return func


def test_allocation_bytes_counts_vector_lanes() -> None:
    """The accumulators of a 10 x 32 tile, as the schedule declares them: 1280 bytes."""
    assert st.allocation_bytes(tirx.decl_buffer((10, 2), "float32x16")) == 10 * 2 * 16 * 4
    assert st.allocation_bytes(tirx.decl_buffer((10, 32), "float16")) == 10 * 32 * 2
    n = tirx.Var("n", "int32")
    assert st.allocation_bytes(tirx.decl_buffer((n, 32), "float32")) is None


def test_pass_marks_only_small_global_allocations() -> None:
    func = _func()
    out = st.stack_tiles(tvm.IRModule({"f": func}))["f"]
    allocs = _allocs(out.body, {})
    marked = {name for name, a in allocs.items() if st.DISABLE_LOWER_BUILTIN in a.annotations}
    assert marked == {"small", "nested"}
    before = _allocs(func.body, {})
    assert not any(st.DISABLE_LOWER_BUILTIN in a.annotations for a in before.values())


def test_pass_leaves_gpu_functions() -> None:
    func = _func().with_attr("target", tvm.target.Target({"kind": "cuda", "arch": "sm_80"}))
    out = st.stack_tiles(tvm.IRModule({"f": func}))["f"]
    assert out.body.same_as(func.body)


def _matmul(rows: int, k: int, n: int):
    rng = np.random.default_rng(rows + k + n)
    inits = [numpy_helper.from_array((rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32),
                                     "W"),
             numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), "B")]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["m"]),
             helper.make_node("Add", ["m", "B"], ["y"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, rows, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, rows, n])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _host_code(executable) -> str:
    mod = executable.mod
    return "\n".join(m.inspect_source("ll") for m in [mod, *mod.imports]
                     if m.kind == "llvm")


def test_tall_avx512_tile_compiles_without_workspace_and_matches_onnxruntime(monkeypatch) -> None:
    """A 10 x 32 tile (1280 B) of a 200-row matmul: stack-allocated, exact."""
    spec = resolve_target("x86:avx512")
    assert cpu_rules.choose_tile(32, 200, cpu_rules.cpu_params(spec)) == (10, 32)
    model = _matmul(200, 64, 64)
    mod = import_relax(model, fixed_input_specs(model, 1, None), "mm")
    executable, _ = compile_relax(mod, spec.tvm_target(), spec)
    assert "TVMBackendAllocWorkspace" not in _host_code(executable)

    # TVM's own pipeline serves the same tile from the workspace allocator
    monkeypatch.setattr(build_pipeline, "CPU_TIR_PIPELINE", "default")
    fallback, _ = compile_relax(import_relax(model, fixed_input_specs(model, 1, None), "mm"),
                                spec.tvm_target(), spec)
    assert "TVMBackendAllocWorkspace" in _host_code(fallback)

    if "avx512f" not in cpu_flags():
        pytest.skip("running AVX-512 code needs an AVX-512 host")
    x = np.random.default_rng(1).standard_normal((1, 200, 64)).astype(np.float32)
    got = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    want = ort.InferenceSession(model.SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert float(np.abs(got - want).max() / np.abs(want).max()) < 1e-5


@pytest.mark.parametrize("lanes,registers", [(8, 16), (4, 32)])
def test_narrower_vectors_keep_eight_row_tiles(lanes: int, registers: int) -> None:
    """Taller tiles were measured on AVX-512 only: AVX2 and NEON tiles stay at 8 rows."""
    params = cpu_rules.CpuParams(lanes=lanes, registers=registers)
    for channels in (2 * lanes, 4 * lanes, 64):
        for rows in (196, 784, 840, 3136):
            assert cpu_rules.choose_tile(channels, rows, params)[0] <= cpu_rules.PAD_ROWS
    assert cpu_rules.row_cap(16) == cpu_rules.WIDE_ROWS > cpu_rules.PAD_ROWS == cpu_rules.row_cap(8)


def test_post_order_keeps_untouched_trees_identical() -> None:
    """A rewrite that changes nothing returns the very same objects (passes compare with
    `same_as` to skip functions they did not touch)."""
    from compress_ir.backend.schedule.stmt_rewrite import post_order

    body = _func().body
    seen: list[str] = []
    assert post_order(body, lambda node: seen.append(type(node).__name__)).same_as(body)
    assert {"For", "SeqStmt", "IfThenElse", "AllocBuffer", "BufferStore"} <= set(seen)
