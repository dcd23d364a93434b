"""Per-op-class profile (not a test): where is the default TVM build slower than onnxruntime?

Why: issue 13. The end-to-end ratio of `bench_tvm.py` does not say which operators lose.
This builds the model with the default schedules, times every kernel call of the TVM VM in
place (`compress_ir.backend.schedule.profile.VMCallTimer`), runs onnxruntime's own
profiler (`SessionOptions.enable_profiling`, graph optimisations on as in production), and
groups both into the same op classes (conv KxK, conv 1x1, depthwise, gemm, pooling,
element-wise, layout). Both run at the same thread count (default 1: per-op numbers at
more threads mostly measure the shared machine). Each of `--runs` rounds runs both runtimes
plainly and profiled (rotating order), so noise hits all four alike; figures are medians
over the rounds, and 'run − Σ kernels' compares the plain run with the profiled kernels
(the VM instrument's Python callbacks inflate TVM's profiled run, not its kernels). On a
shared machine the per-kernel medians leave out preemptions that whole runs suffer: read
the Σ kernels row first, and 'run − Σ kernels' as framework overhead plus preemption.

Run::

    python tools/profile_ops.py resnet18
    python tools/profile_ops.py mobilenet_v2 --prune 'channel-prune{ratio=0.5}' --json p.json
    python tools/profile_ops.py path/to/model.onnx --threads 2

MODEL is a `tests/fixtures/torchvision` name (weights filled with `fill_placeholders`, seed 0)
or an .onnx path. Writes a markdown report to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
# both runtimes' idle workers must not spin while the other one runs (see bench_tvm.py)
os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import tvm  # noqa: E402
import tvm_threads  # noqa: E402
from bench_tvm import (  # noqa: E402
    fill_placeholders,
    host_target,
    import_as_cli,
    model_feeds,
)
from bench_tvm import (
    load_model as load_bench_model,
)
from tvm import relax  # noqa: E402

import compress_ir.passes  # noqa: F401,E402 - registers the passes
from compress_ir.api import compress  # noqa: E402
from compress_ir.backend.benchmark import environment, interleaved, summarize  # noqa: E402
from compress_ir.backend.schedule import compile_relax  # noqa: E402
from compress_ir.backend.schedule.pipeline import prepare  # noqa: E402
from compress_ir.backend.schedule.profile import (  # noqa: E402
    OVERHEAD,
    VMCallTimer,
    classify_module,
    group,
    kernel_name,
    ort_node_class,
    ort_workload,
    workload_module,
)
from compress_ir.core.files import write_atomic  # noqa: E402

CLASS_ORDER = ("conv 3x3", "conv 7x7", "conv 1x1", "depthwise conv", "grouped conv",
               "gemm/matmul", "pooling/reduce", "element-wise", "layout (transpose/reshape)",
               "other", OVERHEAD)


def load_model(model: str, seed: int, prune: str | None
               ) -> tuple[onnx.ModelProto, dict[str, tuple[int, ...]] | None]:
    """A fixture name, `light:NAME`, a `tvm_models` transformer (at its deployment shape)
    or an .onnx path, optionally compressed by `prune` (no numeric check: the profile
    compares runtimes on the same model, checked by the TVM-vs-ORT error); returns the
    input shapes too."""
    if model.endswith(".onnx"):  # placeholder weights (onnx's zoo files) filled, if any
        proto, shapes = fill_placeholders(onnx.load(model), seed), None
    else:
        proto, shapes, _ = load_bench_model(model, argparse.Namespace(seed=seed, pipeline=None))
    if prune:
        proto = compress(proto, prune, check=False, input_shapes=shapes).model
    return proto, shapes


def ort_options(threads: int) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def _shapes(arg: list[dict[str, list[int]]]) -> list[list[int]]:
    return [list(next(iter(d.values()))) for d in arg]


class OrtProfile:
    """onnxruntime's own profiler on one session; `run()` is one profiled run."""

    def __init__(self, proto: onnx.ModelProto, feeds: dict[str, np.ndarray], threads: int,
                 tmp: str) -> None:
        opts = ort_options(threads)
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "ort")
        opts.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        self.sess = ort.InferenceSession(proto.SerializeToString(), opts,
                                         providers=["CPUExecutionProvider"])
        self.feeds, self.optimized_path = feeds, opts.optimized_model_filepath

    def run(self) -> None:
        self.sess.run(None, self.feeds)

    def result(self, warmup: int) -> dict[str, Any]:
        """Per-node median ms (the first `warmup` runs dropped), class and op of each node."""
        events = json.loads(Path(self.sess.end_profiling()).read_text())
        nodes = {n.name: n for n in onnx.load(self.optimized_path).graph.node}
        durations: dict[str, list[float]] = defaultdict(list)
        shapes: dict[str, list[list[int]]] = {}
        out_shapes: dict[str, list[list[int]]] = {}
        op_names: dict[str, str] = {}
        for ev in events:
            if ev.get("cat") != "Node" or not ev["name"].endswith("_kernel_time"):
                continue
            name = ev["name"][: -len("_kernel_time")]
            durations[name].append(ev["dur"] / 1e3)
            shapes.setdefault(name, _shapes(ev["args"].get("input_type_shape", [])))
            op_names.setdefault(name, ev["args"].get("op_name", ""))
            out_shapes.setdefault(name, _shapes(ev["args"].get("output_type_shape", [])))
        per_node, classes, workloads = {}, {}, {}
        for name, durs in durations.items():
            per_node[name] = statistics.median(durs[warmup:] if len(durs) > warmup else durs)
            node = nodes.get(name)
            classes[name] = ort_node_class(node, shapes[name]) if node is not None else "other"
            # a node the optimiser left unnamed is profiled under a made-up name: its
            # op type (from the event) still gives the layer's key
            stand_in = node if node is not None else onnx.helper.make_node(
                op_names[name] or "Unknown", [], [])
            key = ort_workload(stand_in, shapes[name], out_shapes[name])
            if key is not None:
                workloads[name] = key
        runs_ms = [ev["dur"] / 1e3 for ev in events
                   if ev.get("cat") == "Session" and ev["name"] == "model_run"][warmup:]
        return {"per_node": per_node, "classes": classes, "workloads": workloads,
                "ops": {n: nodes[n].op_type for n in per_node if n in nodes},
                "run_ms": statistics.median(runs_ms) if runs_ms else None}


def build_tvm(proto: onnx.ModelProto, target: tvm.target.Target,
              feeds: dict[str, np.ndarray]) -> tuple[Any, dict[str, Any]]:
    """Default build; the op class of every PrimFunc comes from the prepared module."""
    mod = import_as_cli(proto, {k: list(v.shape) for k, v in feeds.items()})
    prepared = prepare(mod, target)
    classes, workloads = classify_module(prepared), workload_module(prepared)
    t0 = time.perf_counter()
    executable, stats = compile_relax(mod, target)
    build_s = time.perf_counter() - t0
    vm = relax.VirtualMachine(executable, tvm.cpu())
    return vm, {"classes": classes, "workloads": workloads, "rules": dict(stats.rules),
                "build_s": round(build_s, 2)}


def profile(proto: onnx.ModelProto, threads: int, runs: int, seed: int,
            target: tvm.target.Target, shapes: dict[str, tuple[int, ...]] | None = None
            ) -> dict[str, Any]:
    """Per-class ms of both runtimes on one model, plus the interleaved end-to-end times."""
    feeds = model_feeds(proto, seed, shapes)
    xt = [tvm.runtime.tensor(v) for v in feeds.values()]
    vm, build = build_tvm(proto, target, feeds)
    tvm_threads.require(threads)
    plain = ort.InferenceSession(proto.SerializeToString(), ort_options(threads),
                                 providers=["CPUExecutionProvider"])
    want = plain.run(None, feeds)[0]
    got = vm["main"](*xt)
    got = (got if hasattr(got, "numpy") else got[0]).numpy()
    rel_err = float(np.abs(got - want).max() / max(float(np.abs(want).max()), 1e-12))

    def timer(fn: Any) -> Any:
        def once() -> float:
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1e3
        return once

    warmup = 2
    vm_timer = VMCallTimer(vm, xt)
    with tempfile.TemporaryDirectory(prefix="cir-ortprof-") as tmp:
        ort_timer = OrtProfile(proto, feeds, threads, tmp)
        # one round = one plain and one profiled run of each runtime (rotating order), so
        # the per-op figures and the plain end-to-end times see the same machine load
        samples = interleaved({"onnxruntime": timer(lambda: plain.run(None, feeds)),
                               "tvm": timer(lambda: vm["main"](*xt)),
                               "onnxruntime profiled": timer(ort_timer.run),
                               "tvm profiled": timer(vm_timer.run)}, runs, warmup=warmup)
        ort_prof = ort_timer.result(warmup)
    del vm_timer.per_run[:warmup], vm_timer.totals[:warmup]
    e2e = {k: samples[k] for k in ("onnxruntime", "tvm")}
    calls, tvm_run = vm_timer.medians()
    counts = {kernel_name(n): c for n, c in vm_timer.calls.items()}
    tvm_kernels = {kernel_name(n): ms for n, ms in calls.items()
                   if kernel_name(n) in build["classes"]}
    e2e_ms = {k: summarize(v) for k, v in e2e.items()}
    # overhead against the run without profilers (the instrument's callbacks cost more
    # than the VM itself); signed: noise can make it negative
    tvm_groups = group(tvm_kernels, build["classes"], counts)
    tvm_groups[OVERHEAD] = {"ms": e2e_ms["tvm"]["median_ms"] - sum(tvm_kernels.values()),
                            "count": 0}
    ort_groups = group(ort_prof["per_node"], ort_prof["classes"])
    ort_groups[OVERHEAD] = {"ms": e2e_ms["onnxruntime"]["median_ms"]
                            - sum(ort_prof["per_node"].values()), "count": 0}
    top = sorted(tvm_kernels.items(), key=lambda kv: -kv[1])[:12]
    return {
        "threads": threads, "runs": runs, "rel_error_vs_ort": rel_err,
        "e2e": e2e_ms,
        "profiled_run_ms": {"tvm": tvm_run, "onnxruntime": ort_prof["run_ms"]},
        "classes": {"tvm": tvm_groups, "onnxruntime": ort_groups},
        # ms: summed over the calls of a run (layers of one shape share their kernel)
        "top_tvm": [{"func": n, "class": build["classes"][n], "ms": ms,
                     "calls": counts.get(n, 1), "rule": build["rules"].get(n, "?")}
                    for n, ms in top],
        "ort_ops": ort_prof["ops"], "build_s": build["build_s"],
        "workloads": by_workload(tvm_kernels, counts, build, ort_prof),
    }


def by_workload(tvm_kernels: dict[str, float], counts: dict[str, int], build: dict[str, Any],
                ort_prof: dict[str, Any]) -> list[dict[str, Any]]:
    """Conv / matmul time per layer shape in both runtimes (`tir_workload` keys), the
    largest TVM − ORT first; shapes only one runtime has (padded widths) are left out."""
    rows: dict[tuple[int, int], dict[str, Any]] = {}

    def row(key: tuple[int, int], cls: str) -> dict[str, Any]:
        return rows.setdefault(key, {"class": cls, "outputs": key[0], "reduce": key[1],
                                     "tvm_ms": 0.0, "tvm_calls": 0, "ort_ms": 0.0,
                                     "ort_nodes": 0})

    for name, ms in tvm_kernels.items():
        key = build["workloads"].get(name)
        if key is not None:
            r = row(key, build["classes"].get(name, "other"))
            r["tvm_ms"] += ms
            r["tvm_calls"] += counts.get(name, 1)
    for name, ms in ort_prof["per_node"].items():
        key = ort_prof["workloads"].get(name)
        if key is not None:
            r = row(key, ort_prof["classes"].get(name, "other"))
            r["ort_ms"] += ms
            r["ort_nodes"] += 1
    both = [r for r in rows.values() if r["tvm_calls"] and r["ort_nodes"]]
    return sorted(both, key=lambda r: r["ort_ms"] - r["tvm_ms"])


WORKLOAD_ROWS = 10


def markdown(title: str, res: dict[str, Any]) -> str:
    tvm_g, ort_g = res["classes"]["tvm"], res["classes"]["onnxruntime"]
    keys = [k for k in CLASS_ORDER if k in tvm_g or k in ort_g]
    keys += sorted(k for k in {*tvm_g, *ort_g} if k not in keys)
    lines = [f"### {title} ({res['threads']} thread{'s' if res['threads'] > 1 else ''})", "",
             "| op class | TVM ms (calls) | ORT ms (nodes) | ORT/TVM (≥1: TVM faster) "
             "| TVM − ORT ms |", "|---|--:|--:|--:|--:|"]
    for k in keys:
        t, o = tvm_g.get(k, {"ms": 0.0, "count": 0}), ort_g.get(k, {"ms": 0.0, "count": 0})
        ratio = f"{o['ms'] / t['ms']:.2f}" if t["ms"] > 0 and o["ms"] > 0 else "–"
        lines.append(f"| {k} | {t['ms']:.2f} ({t['count']}) | {o['ms']:.2f} ({o['count']}) "
                     f"| {ratio} | {t['ms'] - o['ms']:+.2f} |")
    tk = sum(v["ms"] for k, v in tvm_g.items() if k != OVERHEAD)
    ok = sum(v["ms"] for k, v in ort_g.items() if k != OVERHEAD)
    lines.append(f"| **Σ kernels** | {tk:.2f} | {ok:.2f} | {ok / tk:.2f} | {tk - ok:+.2f} |")
    e = res["e2e"]
    tsum, osum = e["tvm"]["median_ms"], e["onnxruntime"]["median_ms"]
    lines.append(f"| **run without profiler** | {tsum:.2f} | {osum:.2f} | {osum / tsum:.2f} "
                 f"| {tsum - osum:+.2f} |")
    lines += ["", f"Without profilers (interleaved with the profiled runs, {e['tvm']['repeat']} "
              f"rounds, median ms): TVM {e['tvm']['median_ms']:.2f} (CV {e['tvm']['cv']:.0%}), "
              f"onnxruntime {e['onnxruntime']['median_ms']:.2f} "
              f"(CV {e['onnxruntime']['cv']:.0%}), ORT/TVM "
              f"{e['onnxruntime']['median_ms'] / e['tvm']['median_ms']:.2f}; "
              f"TVM vs ORT max rel err {res['rel_error_vs_ort']:.1e}; "
              f"TVM build {res['build_s']} s.", "",
              "Largest TVM kernels (ms per run, summed over calls): " + ", ".join(
                  f"`{t['func']}` {t['ms']:.2f} ms in {t.get('calls', 1)} call"
                  f"{'s' if t.get('calls', 1) > 1 else ''} ({t['class']}, {t['rule']})"
                  for t in res["top_tvm"][:6]), ""]
    rows = res.get("workloads", [])[:WORKLOAD_ROWS]
    if rows:
        lines += ["Per layer shape (conv/matmul; outputs x multiply-adds per output), largest "
                  "TVM − ORT first:", "",
                  "| class | outputs | MACs/output | TVM ms (calls) | ORT ms (nodes) "
                  "| ORT/TVM | TVM − ORT ms |", "|---|--:|--:|--:|--:|--:|--:|"]
        lines += [f"| {r['class']} | {r['outputs']} | {r['reduce']} | {r['tvm_ms']:.2f} "
                  f"({r['tvm_calls']}) | {r['ort_ms']:.2f} ({r['ort_nodes']}) "
                  f"| {r['ort_ms'] / r['tvm_ms']:.2f} | {r['tvm_ms'] - r['ort_ms']:+.2f} |"
                  for r in rows]
        lines.append("")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="tests/fixtures/torchvision name or .onnx path")
    ap.add_argument("--prune", default=None, help="compress first with this pipeline")
    ap.add_argument("--threads", default="1", help="comma list of thread counts (default 1)")
    ap.add_argument("--runs", type=int, default=20,
                    help="interleaved rounds (a plain and a profiled run of each runtime)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--target", default=None, help="TVM target JSON (default: host llvm)")
    ap.add_argument("--json", default=None, help="write all figures to this JSON file")
    args = ap.parse_args(argv)
    args.threads = [int(t) for t in args.threads.split(",") if t]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    target = tvm.target.Target(json.loads(args.target)) if args.target else host_target()
    env = environment()
    title = args.model + (f" + {args.prune}" if args.prune else "")
    print(f"CPU: {env['cpu']} ({env['cpu_count']} CPUs), target `{target}`, "
          f"onnxruntime {ort.__version__}, TVM {tvm.__version__}\n")
    payloads = tvm_threads.per_process(args.threads, sys.argv[1:] if argv is None else argv,
                                       __file__)
    if payloads is None:
        proto, shapes = load_model(args.model, args.seed, args.prune)
        results = [profile(proto, t, args.runs, args.seed, target, shapes)
                   for t in args.threads]
    else:  # one process per thread count (tools/tvm_threads.py)
        results = [r for p in payloads for r in p["results"]]
    for res in results:
        print(markdown(title, res))
    if args.json:
        payload = {"model": args.model, "prune": args.prune, "target": str(target),
                   "environment": env, "results": results}
        write_atomic(args.json, (json.dumps(payload, indent=1) + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
