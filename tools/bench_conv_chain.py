"""A/B of one default-schedule feature on chains of convs, against onnxruntime (not a test).

Why: whole models mix many kernels and a shared host's noise hides a 5 % kernel change; a
chain of N convs with their own weights (so that, as in a model, no weight slice is still
cached when its conv runs again) isolates one layer shape. Each feature in `FEATURES` can be
switched off for one build; the chain is then timed with the feature on, off, and in
onnxruntime, interleaved round by round in one process (medians; ratios side by side), with both
engines' idle workers not spinning.

Run::

    python tools/bench_conv_chain.py --layers 512x512x3 --size 7 --repeat 4
    python tools/bench_conv_chain.py --layers 1024x256x1,256x1024x1 --size 14 --repeat 2
    python tools/bench_conv_chain.py --layers 128x128x3 --size 28 --feature tall-tiles

`--layers` is a comma list of CINxCOUTxK convs (each with bias and ReLU), repeated
`--repeat` times; `--feature` names what is switched off in the "off" build.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TVM_NUM_THREADS", "1")
# engines share the process: idle workers must not spin while the other engine runs
# (as bench_tvm.py's in-process mode; spinning on, 2-thread times were 1.5-3x noisier)
os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import tvm  # noqa: E402
from bench_tvm import ort_session, time_side_by_side  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from tvm import relax  # noqa: E402

from compress_ir.backend.build import fixed_input_specs, import_relax  # noqa: E402
from compress_ir.backend.schedule import compile_relax, stack_tiles  # noqa: E402
from compress_ir.backend.schedule import cpu as cpu_rules  # noqa: E402
from compress_ir.backend.schedule import pipeline as schedule_pipeline  # noqa: E402
from compress_ir.targets.registry import resolve_target  # noqa: E402


@contextlib.contextmanager
def _no_prefetch() -> Iterator[None]:
    saved = schedule_pipeline.insert_weight_prefetch
    schedule_pipeline.insert_weight_prefetch = lambda mod: mod
    try:
        yield
    finally:
        schedule_pipeline.insert_weight_prefetch = saved


@contextlib.contextmanager
def _short_tiles() -> Iterator[None]:
    """Register tiles as under TVM's own 1 KB stack limit: at most 8 rows, under 1 KB."""
    saved = (stack_tiles.STACK_BYTES, cpu_rules.WIDE_ROWS, cpu_rules.PAD_MARGIN)
    stack_tiles.STACK_BYTES = 1023
    cpu_rules.WIDE_ROWS, cpu_rules.PAD_MARGIN = cpu_rules.PAD_ROWS, 0.0
    try:
        yield
    finally:
        stack_tiles.STACK_BYTES, cpu_rules.WIDE_ROWS, cpu_rules.PAD_MARGIN = saved


# feature name -> context manager that switches it off for a build
FEATURES: dict[str, Callable[[], contextlib.AbstractContextManager]] = {
    "prefetch": _no_prefetch,  # schedule/prefetch.py: next weight slice into L2
    "tall-tiles": _short_tiles,  # schedule/stack_tiles.py + cpu.row_cap: 14 x 32 tiles
}


def chain_model(layers: list[tuple[int, int, int]], size: int, seed: int = 0
                ) -> onnx.ModelProto:
    """Convs (same padding, bias, ReLU) in sequence, each with its own random weights."""
    rng = np.random.default_rng(seed)
    inits, nodes, prev = [], [], "x"
    for i, (cin, cout, k) in enumerate(layers):
        w = rng.standard_normal((cout, cin, k, k)) / (k * np.sqrt(cin))
        inits += [numpy_helper.from_array(w.astype(np.float32), f"W{i}"),
                  numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32), f"B{i}")]
        nodes += [helper.make_node("Conv", [prev, f"W{i}", f"B{i}"], [f"c{i}"],
                                   kernel_shape=[k, k], pads=[k // 2] * 4),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        prev = f"r{i}"
    graph = helper.make_graph(
        nodes, "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, layers[0][0], size, size])],
        [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, layers[-1][1], size, size])],
        inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", required=True, help="comma list of CINxCOUTxK")
    ap.add_argument("--size", type=int, required=True, help="feature map height = width")
    ap.add_argument("--repeat", type=int, default=4, help="times the layer list repeats")
    ap.add_argument("--feature", default="prefetch", choices=sorted(FEATURES))
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--target", default="x86")
    args = ap.parse_args(argv)
    layers = [tuple(int(v) for v in spec.split("x")) for spec in args.layers.split(",")]
    model = chain_model(layers * args.repeat, args.size)
    spec = resolve_target(args.target)
    x = np.random.default_rng(1).standard_normal(
        (1, layers[0][0], args.size, args.size)).astype(np.float32)
    threads = int(os.environ["TVM_NUM_THREADS"])
    sess = ort_session(model, threads, spin=False)
    want = sess.run(None, {"x": x})[0]
    runs: dict[str, Callable[[], object]] = {}
    for label, ctx in (("on", contextlib.nullcontext), ("off", FEATURES[args.feature])):
        with ctx():
            exe, _ = compile_relax(import_relax(model, fixed_input_specs(model, 1, None), "m"),
                                   spec.tvm_target(), spec)
        vm = relax.VirtualMachine(exe, tvm.cpu())
        arg = tvm.runtime.tensor(x)
        got = vm["main"](arg).numpy()
        err = float(np.abs(got - want).max() / np.abs(want).max())
        print(f"# TVM {args.feature} {label}: rel. error vs onnxruntime {err:.1e}")
        runs[f"tvm_{label}"] = lambda f=vm["main"], a=arg: f(a)
    runs["ort"] = lambda: sess.run(None, {"x": x})
    # blocks of 6 runs per engine and round, the first of each block dropped
    times = time_side_by_side(runs, args.rounds, block=6)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"| chain ({args.repeat} x {args.layers} @ {args.size}x{args.size}, "
          f"{threads} thread(s)) | ms | onnxruntime / this |")
    print("|---|---:|---:|")
    for key, ms in med.items():
        print(f"| {key} | {ms:.3f} | {med['ort'] / ms:.2f} |")
    print(f"\n{args.feature} on / off: {med['tvm_on'] / med['tvm_off']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
