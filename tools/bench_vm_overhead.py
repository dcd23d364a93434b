"""Benchmark (not a test): what one kernel call costs in the Relax VM and in onnxruntime.

Why: a pruned small CNN runs 50-60 kernels in 1-2 ms, so a fixed cost per kernel (the VM's
call instruction, the `alloc_storage`/`alloc_tensor` of its output, onnxruntime's node
dispatch) could eat the pruning gain. The VM profiler cannot say: its instrument adds tens
of microseconds per call. Here chains of N tiny MatMuls ([1, 16] x [16, 16], about 0.05 us
of arithmetic each, one intermediate tensor each) are timed whole for two N; the slope is
the cost per kernel, the intercept the per-run cost.

    TVM_NUM_THREADS=1 python tools/bench_vm_overhead.py --lengths 8,64
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import onnx
import onnxruntime as ort
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax

from compress_ir.backend.build import fixed_input_specs, import_relax
from compress_ir.backend.schedule import compile_relax
from compress_ir.targets.registry import resolve_target

WIDTH = 16


def chain(n: int, seed: int = 0) -> onnx.ModelProto:
    """x -> MatMul -> ... -> MatMul (n of them): nothing for TVM to fuse."""
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "x"
    for i in range(n):
        w = rng.standard_normal((WIDTH, WIDTH)).astype(np.float32) * 0.25
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"y{i}"], name=f"mm{i}"))
        x = f"y{i}"
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, WIDTH])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, WIDTH])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def per_run_us(fn: object, calls: int, rounds: int) -> float:
    """Median over rounds of the mean time of `calls` back-to-back runs, in microseconds."""
    for _ in range(50):
        fn()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - t0) / calls * 1e6)
    return statistics.median(times)


def measure(n: int, target: object, spec: object, calls: int, rounds: int) -> dict[str, float]:
    proto = chain(n)
    mod = import_relax(proto, fixed_input_specs(proto, 1), "chain")
    exe, _ = compile_relax(mod, target, spec)
    vm = relax.VirtualMachine(exe, tvm.cpu())
    x = np.random.default_rng(1).standard_normal((1, WIDTH)).astype(np.float32)
    arg = tvm.runtime.tensor(x)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(proto.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    main = vm["main"]
    err = float(np.abs(main(arg).numpy() - sess.run(None, {"x": x})[0]).max())
    return {"n": n, "tvm_us": per_run_us(lambda: main(arg), calls, rounds),
            "ort_us": per_run_us(lambda: sess.run(None, {"x": x}), calls, rounds),
            "max_abs_err": err}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="8,64", help="two chain lengths (kernels)")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--target", default="x86", help="compress-ir target name (host)")
    args = parser.parse_args(argv)
    short, long_ = (int(v) for v in args.lengths.split(","))
    spec = resolve_target(args.target)
    target = spec.tvm_target()
    rows = [measure(n, target, spec, args.calls, args.rounds) for n in (short, long_)]
    print("| kernels | TVM us/run | onnxruntime us/run | max abs err |\n|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['n']} | {r['tvm_us']:.1f} | {r['ort_us']:.1f} | {r['max_abs_err']:.1e} |")
    for engine in ("tvm", "ort"):
        slope = (rows[1][f"{engine}_us"] - rows[0][f"{engine}_us"]) / (long_ - short)
        print(f"{engine}: {slope:.2f} us per kernel, "
              f"{rows[0][f'{engine}_us'] - slope * short:.1f} us per run")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
