"""Benchmark (not a test): do sparse weights run faster once compiled with TVM sparse kernels?

Why: issue 5 parts 3-4. Per layer shape, sparsity and BSR block shape this measures, side
by side in one process and interleaved (one call of every engine per round, so noise
from a shared machine hits all alike): TVM sparse (`rewrite_sparse` + the project's
`compile_relax`), TVM dense (`compile_relax`, default rules unless `--tune-trials N`),
onnxruntime dense and numpy (reference point), at each thread count. It reports
medians, speed-ups and the break-even sparsity per block shape, then end to end on a
transformer FFN (768→3072→768, GELU) and a small CNN. Every TVM sparse build is checked
against onnxruntime on the same sparse weights first (max rel error reported).

Run::

    python tools/bench_sparse.py --quick            # a few shapes, 70/90 %, 3 blocks
    python tools/bench_sparse.py                    # full grid, 1 and 2 threads
    python tools/bench_sparse.py --threads 2 --layers ffn1_m128 --json /tmp/r.json
    python tools/bench_sparse.py --layers ffn1_m128 --sparsities 0.9 --blocks 16x1,1x1 \
        --tune-trials 32 --no-e2e --out-dir tools/results/sparse/tuned   # tuned TVM dense

Writes `tools/results/sparse/table.md` and `results.json` (or `--out-dir`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import tvm
import tvm_threads  # tools/: a run-time resize left "2 threads" on one core
from onnx import TensorProto, numpy_helper
from onnx import helper as oh
from tvm import relax
from tvm.relax.frontend.onnx import from_onnx

from compress_ir.backend.schedule import compile_relax
from compress_ir.backend.sparse import rewrite_sparse
from compress_ir.core.files import write_atomic

ROOT = Path(__file__).resolve().parent.parent
TARGET = {"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu()}  # host CPU features

# name -> (op, weight shape, input shape, conv attrs)
LAYERS: dict[str, tuple[str, tuple[int, ...], tuple[int, ...], dict]] = {
    "ffn1_m1": ("gemm", (3072, 768), (1, 768), {}),
    "ffn1_m128": ("gemm", (3072, 768), (128, 768), {}),
    "ffn2_m1": ("gemm", (768, 3072), (1, 3072), {}),
    "ffn2_m128": ("gemm", (768, 3072), (128, 3072), {}),
    "conv1x1_256_64_56": ("conv", (64, 256, 1, 1), (1, 256, 56, 56), {}),
    "conv3x3_64_64_56": ("conv", (64, 64, 3, 3), (1, 64, 56, 56), {"pads": [1, 1, 1, 1]}),
}
SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95)
BLOCKS = ((1, 1), (1, 4), (4, 1), (8, 1), (16, 1), (4, 4))
QUICK = {"layers": ("ffn1_m1", "ffn1_m128", "conv1x1_256_64_56"), "sparsities": (0.7, 0.9),
         "blocks": ((1, 1), (4, 1), (16, 1))}


def block_sparse(rng: np.random.Generator, shape2d: tuple[int, int], block: tuple[int, int],
                 sparsity: float) -> np.ndarray:
    """Random (out, reduction) matrix with exactly round(sparsity × blocks) all-zero blocks."""
    r, c = block
    nblocks = (shape2d[0] // r) * (shape2d[1] // c)
    keep = np.ones(nblocks, bool)
    keep[rng.choice(nblocks, int(round(sparsity * nblocks)), replace=False)] = False
    mask = np.kron(keep.reshape(shape2d[0] // r, shape2d[1] // c), np.ones(block, bool))
    return (rng.standard_normal(shape2d) * mask).astype(np.float32)


def layer_model(op: str, weight: np.ndarray, x_shape: tuple[int, ...], attrs: dict
                ) -> onnx.ModelProto:
    """A one-layer ONNX model (Gemm transB with bias, or Conv with bias)."""
    bias = np.linspace(-1, 1, weight.shape[0], dtype=np.float32)
    node = (oh.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1) if op == "gemm"
            else oh.make_node("Conv", ["x", "w", "b"], ["y"], **attrs))
    return _model([node], {"w": weight, "b": bias}, {"x": x_shape})


def _model(nodes: list, inits: dict[str, np.ndarray], inputs: dict[str, tuple[int, ...]]
           ) -> onnx.ModelProto:
    graph = oh.make_graph(
        nodes, "bench",
        [oh.make_tensor_value_info(k, TensorProto.FLOAT, list(v)) for k, v in inputs.items()],
        [oh.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def ort_session(model: onnx.ModelProto, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def tvm_build(model: onnx.ModelProto, feeds: dict[str, np.ndarray], sparse: dict | None,
              tune_trials: int) -> tuple[Callable[[], object], dict]:
    """Compile (optionally sparse-rewritten); return a zero-arg runner and build info."""
    mod = from_onnx(model, shape_dict={k: list(v.shape) for k, v in feeds.items()},
                    keep_params_in_input=False)
    info: dict = {}
    t0 = time.perf_counter()
    if sparse is not None:
        mod, stats = rewrite_sparse(mod, TARGET, **sparse)
        info["rewritten"] = [{k: e[k] for k in ("op", "block", "sparsity", "nnz_blocks",
                                                "kernel")} for e in stats["rewritten"]]
        info["skipped"] = stats["skipped"]
    ex, bstats = compile_relax(mod, tvm.target.Target(TARGET),
                               tune_trials=0 if sparse else tune_trials)
    info["compile_s"] = round(time.perf_counter() - t0, 2)
    info["rules"] = bstats.counts
    vm = relax.VirtualMachine(ex, tvm.cpu())
    fn = vm["main"]
    args = [tvm.runtime.tensor(v) for v in feeds.values()]
    return (lambda: fn(*args)), info


def tvm_out(out: object) -> np.ndarray:
    return out.numpy() if hasattr(out, "numpy") else out[0].numpy()


def interleaved(runners: dict[str, Callable[[], object]], rounds: int, min_s: float = 0.02
                ) -> dict[str, float]:
    """Median ms per call of each runner; each round times every runner once, in turn."""
    number = {}
    for name, fn in runners.items():  # warm up and size the inner loop to ~min_s
        fn()
        t0 = time.perf_counter()
        fn()
        number[name] = max(1, min(200, int(min_s / max(time.perf_counter() - t0, 1e-6))))
    samples: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(rounds):
        for name, fn in runners.items():
            t0 = time.perf_counter()
            for _ in range(number[name]):
                fn()
            samples[name].append((time.perf_counter() - t0) / number[name] * 1e3)
    return {k: statistics.median(v) for k, v in samples.items()}


def numpy_runner(op: str, weight: np.ndarray, x: np.ndarray, attrs: dict) -> Callable:
    """Reference point: BLAS for Gemm; im2col + BLAS for Conv."""
    if op == "gemm":
        wt = np.ascontiguousarray(weight.T)
        return lambda: x @ wt
    co, ci, kh, kw = weight.shape
    pad = attrs.get("pads", [0, 0, 0, 0])
    w2 = weight.reshape(co, -1)

    def conv() -> np.ndarray:
        xp = np.pad(x[0], ((0, 0), (pad[0], pad[2]), (pad[1], pad[3])))
        oh_, ow_ = xp.shape[1] - kh + 1, xp.shape[2] - kw + 1
        cols = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(1, 2))
        cols = cols.transpose(0, 3, 4, 1, 2).reshape(ci * kh * kw, oh_ * ow_)
        return w2 @ cols

    return conv


def bench_layers(args: argparse.Namespace, rng: np.random.Generator) -> list[dict]:
    rows = []
    for name in args.layers:
        op, wshape, xshape, attrs = LAYERS[name]
        x = rng.standard_normal(xshape).astype(np.float32)
        feeds = {"x": x}
        shape2d = (wshape[0], math.prod(wshape[1:]))
        dense_w = rng.standard_normal(wshape).astype(np.float32)
        dense_model = layer_model(op, dense_w, xshape, attrs)
        dense_run, dense_info = tvm_build(dense_model, feeds, None, args.tune_trials)
        sparse_runs: dict[str, Callable] = {}
        cases = []
        for sp in args.sparsities:
            for block in args.blocks:
                if shape2d[0] % block[0] or shape2d[1] % block[1]:
                    continue
                w = block_sparse(rng, shape2d, block, sp).reshape(wshape)
                model = layer_model(op, w, xshape, attrs)
                run, info = tvm_build(model, feeds, {"min_sparsity": 0.0, "block": block}, 0)
                ref = ort_session(model, 1).run(None, feeds)[0]
                err = float(np.abs(tvm_out(run()) - ref).max() / np.abs(ref).max())
                key = f"{sp}/{block[0]}x{block[1]}"
                sparse_runs[key] = run
                cases.append((key, sp, block, err, info))
                print(f"# built {name} {key} err={err:.1e} ({info['compile_s']} s)",
                      file=sys.stderr, flush=True)
        for threads in args.threads:
            tvm_threads.require(threads)
            sess = ort_session(dense_model, threads)
            runners = {"tvm_dense": dense_run, "ort_dense": lambda s=sess, f=feeds: s.run(None, f),
                       "numpy": numpy_runner(op, dense_w, x, attrs), **sparse_runs}
            ms = interleaved(runners, args.rounds)
            for key, sp, block, err, info in cases:
                rows.append({
                    "layer": name, "op": op, "weight": list(wshape), "input": list(xshape),
                    "threads": threads, "sparsity": sp, "block": f"{block[0]}x{block[1]}",
                    "tvm_sparse_ms": round(ms[key], 4), "tvm_dense_ms": round(ms["tvm_dense"], 4),
                    "ort_dense_ms": round(ms["ort_dense"], 4), "numpy_ms": round(ms["numpy"], 4),
                    "speedup_vs_tvm_dense": round(ms["tvm_dense"] / ms[key], 2),
                    "speedup_vs_ort_dense": round(ms["ort_dense"] / ms[key], 2),
                    "rel_err": err, "kernel": info["rewritten"][0]["kernel"],
                    "dense_rules": dense_info.get("rules"),
                })
            print(f"# {name} t={threads}: dense tvm {ms['tvm_dense']:.3f} ort "
                  f"{ms['ort_dense']:.3f} numpy {ms['numpy']:.3f} ms", file=sys.stderr, flush=True)
    return rows


def break_even(rows: list[dict], baseline: str) -> dict[str, dict[str, str]]:
    """Per block shape and layer/threads: the lowest measured sparsity that beats `baseline`."""
    out: dict[str, dict[str, str]] = {}
    for r in rows:
        col = f"{r['layer']} t{r['threads']}"
        cell = out.setdefault(r["block"], {})
        if r[baseline] >= 1.0:
            best = cell.get(col)
            if best is None or best.startswith(">") or float(best) > r["sparsity"]:
                cell[col] = f"{r['sparsity']:.2f}"
        else:
            cell.setdefault(col, f">{max(x['sparsity'] for x in rows):.2f}")
    return out


def gelu_nodes(inp: str, out: str) -> tuple[list, dict]:
    """GELU(x) = 0.5·x·(1 + erf(x/√2)) in opset-17 ops."""
    nodes = [oh.make_node("Mul", [inp, "rsqrt2"], [out + "_s"]),
             oh.make_node("Erf", [out + "_s"], [out + "_e"]),
             oh.make_node("Add", [out + "_e", "one"], [out + "_a"]),
             oh.make_node("Mul", [inp, out + "_a"], [out + "_m"]),
             oh.make_node("Mul", [out + "_m", "half"], [out])]
    consts = {"rsqrt2": np.array(1 / math.sqrt(2), np.float32),
              "one": np.array(1, np.float32), "half": np.array(0.5, np.float32)}
    return nodes, consts


def e2e_models(rng: np.random.Generator, sparsity: float) -> dict[str, tuple]:
    """Transformer FFN (768→3072→768, GELU or ReLU, M=128) and a small CNN, block-sparse."""
    ffn = {"w1": block_sparse(rng, (3072, 768), (16, 1), sparsity),
           "b1": rng.standard_normal(3072).astype(np.float32) * 0.1,
           "w2": block_sparse(rng, (768, 3072), (16, 1), sparsity),
           "b2": rng.standard_normal(768).astype(np.float32) * 0.1}
    g, consts = gelu_nodes("h", "hg")
    ffn_nodes = [oh.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1), *g,
                 oh.make_node("Gemm", ["hg", "w2", "b2"], ["y"], transB=1)]
    ffn_model = _model(ffn_nodes, {**ffn, **consts}, {"x": (128, 768)})
    relu_nodes = [ffn_nodes[0], oh.make_node("Relu", ["h"], ["hg"]), ffn_nodes[-1]]
    relu_model = _model(relu_nodes, ffn, {"x": (128, 768)})
    cnn = {"c0": rng.standard_normal((32, 3, 3, 3)).astype(np.float32) * 0.3,
           "c1": block_sparse(rng, (64, 32), (8, 1), sparsity).reshape(64, 32, 1, 1),
           "c2": block_sparse(rng, (64, 64 * 9), (8, 1), sparsity).reshape(64, 64, 3, 3),
           "c3": block_sparse(rng, (128, 64), (8, 1), sparsity).reshape(128, 64, 1, 1),
           "fc": rng.standard_normal((10, 128)).astype(np.float32) * 0.1}
    cnn_nodes = [oh.make_node("Conv", ["x", "c0"], ["a0"], pads=[1, 1, 1, 1]),
                 oh.make_node("Relu", ["a0"], ["r0"]),
                 oh.make_node("Conv", ["r0", "c1"], ["a1"]),
                 oh.make_node("Relu", ["a1"], ["r1"]),
                 oh.make_node("Conv", ["r1", "c2"], ["a2"], pads=[1, 1, 1, 1]),
                 oh.make_node("Relu", ["a2"], ["r2"]),
                 oh.make_node("Conv", ["r2", "c3"], ["a3"]),
                 oh.make_node("Relu", ["a3"], ["r3"]),
                 oh.make_node("GlobalAveragePool", ["r3"], ["p"]),
                 oh.make_node("Flatten", ["p"], ["f"]),
                 oh.make_node("Gemm", ["f", "fc"], ["y"], transB=1)]
    cnn_model = _model(cnn_nodes, cnn, {"x": (1, 3, 56, 56)})
    return {"ffn_768_3072_gelu_m128": (ffn_model, (128, 768)),
            "ffn_768_3072_relu_m128": (relu_model, (128, 768)),
            "cnn_56x56": (cnn_model, (1, 3, 56, 56))}


def bench_e2e(args: argparse.Namespace, rng: np.random.Generator) -> list[dict]:
    rows = []
    for sp in args.e2e_sparsities:
        for name, (model, xshape) in e2e_models(rng, sp).items():
            feeds = {"x": rng.standard_normal(xshape).astype(np.float32)}
            sparse_run, sinfo = tvm_build(model, feeds, {"min_sparsity": 0.7}, 0)
            try:
                dense_run, dinfo = tvm_build(model, feeds, None, args.tune_trials)
            except Exception as exc:  # report a broken dense build, keep the other engines
                dense_run, dinfo = None, {"error": str(exc).strip().splitlines()[-1][:300]}
                print(f"# e2e {name}: TVM dense build failed: {dinfo['error']}",
                      file=sys.stderr, flush=True)
            ref = ort_session(model, 1).run(None, feeds)[0]
            err = float(np.abs(tvm_out(sparse_run()) - ref).max() / np.abs(ref).max())
            for threads in args.threads:
                tvm_threads.require(threads)
                sess = ort_session(model, threads)
                runners = {"tvm_sparse": sparse_run, "tvm_dense": dense_run,
                           "ort_dense": lambda s=sess, f=feeds: s.run(None, f)}
                ms = interleaved({k: v for k, v in runners.items() if v is not None},
                                 args.rounds)
                dense_ms = ms.get("tvm_dense")
                rows.append({"model": name, "sparsity": sp, "threads": threads,
                             "tvm_sparse_ms": round(ms["tvm_sparse"], 3),
                             "tvm_dense_ms": None if dense_ms is None else round(dense_ms, 3),
                             "ort_dense_ms": round(ms["ort_dense"], 3),
                             "speedup_vs_ort_dense": round(ms["ort_dense"] / ms["tvm_sparse"], 2),
                             "speedup_vs_tvm_dense": (None if dense_ms is None
                                                      else round(dense_ms / ms["tvm_sparse"], 2)),
                             "tvm_dense_error": dinfo.get("error"),
                             "rel_err": err, "rewritten": sinfo["rewritten"],
                             "skipped": sinfo["skipped"]})
                print(f"# e2e {name} {sp} t={threads}: {ms}", file=sys.stderr, flush=True)
    return rows


def markdown(result: dict) -> str:
    meta = result["meta"]
    lines = ["# Sparse kernels: TVM sparse vs TVM dense vs onnxruntime dense", "",
             f"Machine: {meta['machine']}; target {json.dumps(meta['target'])}; "
             f"{meta['date']}; rounds {meta['rounds']}; TVM dense via compile_relax "
             f"(tune_trials={meta['tune_trials']}). Medians in ms, interleaved in one run. "
             "numpy = OpenBLAS at its default threads (reference point only).", "",
             "## Per layer", "",
             "| layer | thr | sparsity | block | kernel | TVM sparse | TVM dense | ORT dense "
             "| numpy | × vs TVM dense | × vs ORT | rel err |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["layers"]:
        lines.append(
            f"| {r['layer']} | {r['threads']} | {r['sparsity']:.2f} | {r['block']} | {r['kernel']} "
            f"| {r['tvm_sparse_ms']:.3f} | {r['tvm_dense_ms']:.3f} | {r['ort_dense_ms']:.3f} "
            f"| {r['numpy_ms']:.3f} | {r['speedup_vs_tvm_dense']:.2f} "
            f"| {r['speedup_vs_ort_dense']:.2f} | {r['rel_err']:.1e} |")
    for base, title in (("speedup_vs_tvm_dense", "TVM dense"), ("speedup_vs_ort_dense", "ORT")):
        table = result["break_even"][base]
        cols = sorted({c for cell in table.values() for c in cell})
        lines += ["", f"## Break-even sparsity vs {title} (lowest measured sparsity that is "
                  "at least as fast)", "", "| block | " + " | ".join(cols) + " |",
                  "|---|" + "---|" * len(cols)]
        for block, cell in table.items():
            lines.append(f"| {block} | " + " | ".join(cell.get(c, "-") for c in cols) + " |")
    lines += ["", "## End to end", "",
              "| model | sparsity | thr | TVM sparse | TVM dense | ORT dense | × vs ORT "
              "| × vs TVM dense | rel err | layers rewritten |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["e2e"]:
        dense = ("build failed" if r["tvm_dense_ms"] is None else f"{r['tvm_dense_ms']:.3f}")
        vs_dense = "-" if r["speedup_vs_tvm_dense"] is None else f"{r['speedup_vs_tvm_dense']:.2f}"
        lines.append(f"| {r['model']} | {r['sparsity']:.2f} | {r['threads']} "
                     f"| {r['tvm_sparse_ms']:.3f} | {dense} "
                     f"| {r['ort_dense_ms']:.3f} | {r['speedup_vs_ort_dense']:.2f} "
                     f"| {vs_dense} | {r['rel_err']:.1e} | {len(r['rewritten'])} |")
    errors = {r["model"]: r["tvm_dense_error"] for r in result["e2e"] if r["tvm_dense_error"]}
    for model, err in errors.items():
        lines.append(f"\nTVM dense build of {model} failed in compile_relax: `{err}`")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 shapes, 70/90 %%, 3 block shapes")
    ap.add_argument("--layers", help=f"comma list of {', '.join(LAYERS)}")
    ap.add_argument("--threads", default=os.environ.get("TVM_NUM_THREADS", "1"),
                    help="thread count; must equal TVM_NUM_THREADS (default: it, else 1)")
    ap.add_argument("--rounds", type=int, default=15, help="timed rounds (median over them)")
    ap.add_argument("--tune-trials", type=int, default=0,
                    help="MetaSchedule trials per task for the TVM dense builds (0: default rules)")
    ap.add_argument("--sparsities", help="comma list, e.g. 0.9,0.95 (default 0.5..0.95)")
    ap.add_argument("--blocks", help="comma list, e.g. 16x1,1x1 (default all six)")
    ap.add_argument("--no-e2e", action="store_true", help="skip the end-to-end models")
    ap.add_argument("--out-dir", default=str(ROOT / "tools" / "results" / "sparse"))
    ap.add_argument("--json", help="also write the results JSON here")
    args = ap.parse_args(argv)
    args.threads = [int(t) for t in args.threads.split(",") if t]
    args.layers = (args.layers.split(",") if args.layers
                   else list(QUICK["layers"] if args.quick else LAYERS))
    args.sparsities = (tuple(float(x) for x in args.sparsities.split(",")) if args.sparsities
                       else QUICK["sparsities"] if args.quick else SPARSITIES)
    args.blocks = (tuple(tuple(int(d) for d in b.split("x")) for b in args.blocks.split(","))
                   if args.blocks else QUICK["blocks"] if args.quick else BLOCKS)
    args.e2e_sparsities = (0.9,) if args.quick else (0.8, 0.9)
    if args.quick:
        args.rounds = min(args.rounds, 7)
    rng = np.random.default_rng(0)
    layers = bench_layers(args, rng)
    result = {
        "meta": {"machine": f"{platform.processor() or platform.machine()}, "
                            f"{os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}",
                 "target": TARGET, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                 "rounds": args.rounds, "tune_trials": args.tune_trials,
                 "threads": args.threads, "quick": args.quick},
        "layers": layers,
        "break_even": {b: break_even(layers, b)
                       for b in ("speedup_vs_tvm_dense", "speedup_vs_ort_dense")},
        "e2e": [] if args.no_e2e else bench_e2e(args, rng),
    }
    text = json.dumps(result, indent=1) + "\n"
    out = Path(args.out_dir)
    write_atomic(out / "results.json", text.encode())
    md = markdown(result)
    write_atomic(out / "table.md", md.encode())
    if args.json:
        write_atomic(args.json, text.encode())
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
