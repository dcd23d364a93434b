"""Benchmark (not a test): does pruning pay off once compiled with TVM, and is TVM fast?

Why: issue 3 part 5. For each model and its 50 % channel-pruned version this measures,
side by side in one process, onnxruntime dense / pruned and TVM dense / pruned (same
tuning budget for both TVM builds: the default build unless `--tune-trials N`), and
reports medians, the MACs ratio, the pruning efficiency `speed-up / (1 / MACs ratio)`
(goal >= 0.9), the TVM-vs-onnxruntime ratio `ORT ms / TVM ms` (goal >= 1), compile and
tune times, per thread count. Timed runs are interleaved (one run of each of the four
engines per round) so that noise from a shared machine hits all four alike. Every TVM
build is first checked against onnxruntime on the same input (rel error reported).

`--block N` runs each engine N times in a row per round and keeps runs 2..N: the
steady state of a model served on its own (its weights and code warm in the caches).
With one run per round (the default) each run follows three other engines, whose
weights evict its own: for the larger models (dense + pruned of both engines exceed
the L3) every run then streams its weights from memory, a cold start no served model
sees, and the two engines pay it unequally. The table header says which was measured.

Run::

    python tools/bench_tvm.py                                   # 3 models, 1 and 2 threads
    python tools/bench_tvm.py --models resnet18 --repeat 20 --threads 1
    python tools/bench_tvm.py --tune-trials 16 --tuning-db /tmp/tvmdb --json out.json

The topologies are `tests/fixtures/torchvision/<model>.onnx` (placeholder weights filled
with `fill_placeholders`, seed 0). Writes a markdown table to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Interleaved timing is only fair if an engine's idle worker threads do not spin on a core
# while the next engine runs (on 2 cores that doubled TVM's 2-thread times): no spinning
# for either engine unless --spin. TVM reads this when its thread pool starts.
if "--spin" not in sys.argv:
    os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")

import bench_engine  # noqa: E402
import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import tvm  # noqa: E402
import tvm_models  # noqa: E402
import tvm_threads  # noqa: E402
from tvm import relax  # noqa: E402

import compress_ir.passes  # noqa: F401,E402 - registers the passes
from compress_ir.api import compress  # noqa: E402
from compress_ir.backend.build import fixed_input_specs  # noqa: E402
from compress_ir.backend.build import import_relax as build_import_relax  # noqa: E402
from compress_ir.backend.normalize import normalize_for_tvm  # noqa: E402
from compress_ir.backend.schedule import compile_relax  # noqa: E402
from compress_ir.core.feeds import realistic_inputs  # noqa: E402
from compress_ir.core.files import write_atomic  # noqa: E402
from compress_ir.core.metrics import model_metrics  # noqa: E402
from compress_ir.frontends.placeholders import fill_placeholders  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "torchvision"
DEFAULT_MODELS = ("resnet18", "resnet50", "mobilenet_v2")
DEFAULT_PIPELINE = "channel-prune{ratio=0.5}"
ENGINES = ("ort_dense", "ort_pruned", "tvm_dense", "tvm_pruned")


def load_fixture(name: str, seed: int) -> onnx.ModelProto:
    """A torchvision topology with its placeholder weights filled deterministically."""
    return fill_placeholders(onnx.load(str(FIXTURES / f"{name}.onnx")), seed)


LIGHT_PREFIX = "light:"


def load_light(name: str, seed: int) -> onnx.ModelProto:
    """A real zoo topology that ships with `onnx` (`light:inception_v2`, `light:densenet121`:
    Caffe2-era exports, opset 9, BatchNormalization and per-channel Mul/Add), its
    `ConstantOfShape` placeholder weights filled deterministically."""
    path = Path(onnx.__file__).parent / "backend/test/data/light" / f"light_{name}.onnx"
    return fill_placeholders(onnx.load(str(path)), seed)


def input_spec(proto: onnx.ModelProto) -> tuple[str, list[int]]:
    """Name and static shape (batch 1) of the first graph input (image models)."""
    inits = {i.name for i in proto.graph.initializer}
    inp = next(i for i in proto.graph.input if i.name not in inits)
    dims = [d.dim_value if d.dim_value > 0 else 1 for d in inp.type.tensor_type.shape.dim]
    return inp.name, dims


def model_feeds(proto: onnx.ModelProto, seed: int,
                shapes: dict[str, tuple[int, ...]] | None = None) -> dict[str, np.ndarray]:
    """Seeded feeds for every real graph input, in graph order.

    Why: transformers take several inputs (ids, masks, token types); shapes resolve as the
    CLI's `--input-shape` does (a dynamic batch becomes 1) and values are drawn by how the
    model uses each input (ids inside the embedding table, 0/1 masks), as `compress-ir`'s
    own build check does, so the timed run is one a user would make.
    """
    specs = fixed_input_specs(proto, 1, shapes)
    return realistic_inputs(proto, {s.name: s.shape for s in specs}, seed)


def ort_session(proto: onnx.ModelProto, threads: int, spin: bool) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(proto.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])


def import_as_cli(proto: onnx.ModelProto, shape_dict: dict[str, list[int]]) -> tvm.IRModule:
    """The Relax module `compress-ir --target` builds: normalized, then imported.

    Why normalize: Caffe2-era zoo exports (`light:resnet50`, `light:squeezenet`, opset 9)
    carry ops that TVM's layout pass rejects (variadic Sum, Dropout's output tuple); the
    CLI rewrites them first (`normalize_for_tvm`), so without it a row would time no
    model a user builds.
    """
    inits = {i.name for i in proto.graph.initializer}  # IR 3 lists weights as inputs too
    specs = fixed_input_specs(proto, 1, {k: tuple(v) for k, v in shape_dict.items()
                                         if k not in inits})
    prepared, _ = normalize_for_tvm(proto, "bench model", specs)
    return build_import_relax(prepared, specs, "bench model")


def tvm_build(proto: onnx.ModelProto, target: tvm.target.Target, args: argparse.Namespace,
              feeds: dict[str, np.ndarray] | None = None) -> tuple[Any, dict[str, Any]]:
    """Import (at the shapes of `feeds`) + compile_relax; the VM and the build's stats."""
    if feeds is None:
        name, shape = input_spec(proto)
        shape_dict = {name: shape}
    else:
        shape_dict = {k: list(v.shape) for k, v in feeds.items()}
    t0 = time.perf_counter()
    mod = import_as_cli(proto, shape_dict)
    import_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    executable, build_stats = compile_relax(mod, target, tune_trials=args.tune_trials,
                                            tuning_db=args.tuning_db,
                                            tune_budget_s=args.tune_budget)
    build_s = time.perf_counter() - t0
    stats = build_stats.as_dict()
    vm = relax.VirtualMachine(executable, tvm.cpu())
    vm.executable = executable  # exported for the engine processes of --isolate
    info = {"import_s": round(import_s, 2), "build_s": round(build_s, 2),
            "tune_s": round(stats["seconds"].get("tune", 0.0), 2), "schedule": stats}
    return vm, info


def _first(out: Any) -> np.ndarray:
    return (out if hasattr(out, "numpy") else out[0]).numpy()


def rel_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / max(float(np.abs(want).max()), 1e-12))


def time_in_process(protos: dict[str, onnx.ModelProto], vms: dict[str, Any],
                    feeds: dict[str, np.ndarray], args_tvm: list[Any], threads: int,
                    args: argparse.Namespace) -> tuple[dict[str, list[float]], dict[str, float]]:
    """All four engines in this process (spinning off unless --spin)."""
    sessions = {k: ort_session(p, threads, args.spin) for k, p in protos.items()}
    errs = {k: rel_error(_first(vms[k]["main"](*args_tvm)), sessions[k].run(None, feeds)[0])
            for k in vms}
    runners = {
        "ort_dense": lambda s=sessions["dense"]: s.run(None, feeds),
        "ort_pruned": lambda s=sessions["pruned"]: s.run(None, feeds),
        "tvm_dense": lambda: vms["dense"]["main"](*args_tvm),
        "tvm_pruned": lambda: vms["pruned"]["main"](*args_tvm),
    }
    return time_side_by_side(runners, args.repeat, block=args.block), errs


ISOLATE_GAP_S = 0.2


def time_isolated(protos: dict[str, onnx.ModelProto], vms: dict[str, Any],
                  feeds: dict[str, np.ndarray], threads: int, args: argparse.Namespace
                  ) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Each engine in its own process with its default spinning (`bench_engine.py`),
    blocks of `args.block` runs alternating between them, the first of each dropped.

    Between blocks the parent waits `ISOLATE_GAP_S`: onnxruntime's idle workers spin on
    after a run, and a dense session's took the cores from the pruned one's next block
    (ResNet-18 pruned at 2 threads: 8.0 ms right after the dense session's block)."""
    env = {k: v for k, v in os.environ.items() if k != "TVM_THREAD_POOL_SPIN_COUNT"}
    env[tvm_threads.ENV] = str(threads)
    # TVM pins its worker to CPU 1 and leaves the calling thread free on CPUs 0-1: when the
    # OS kept it on CPU 1 (it did, per process, at random) the "2-thread" run shared one
    # core. Unpinned, as onnxruntime runs: pruned MobileNetV2 0.61 / 0.63 ms in two runs,
    # pinned 0.65 / 1.13 ms.
    env.setdefault("TVM_BIND_THREADS", "0")
    engines: dict[str, bench_engine.Engine] = {}
    with tempfile.TemporaryDirectory(prefix="bench_tvm_") as tmp:
        feeds_path = Path(tmp) / "feeds.npz"
        np.savez(feeds_path, **feeds)
        try:
            for key, proto in protos.items():
                onnx_path, lib = Path(tmp) / f"{key}.onnx", Path(tmp) / f"{key}.so"
                onnx.save(proto, str(onnx_path))
                vms[key].executable.export_library(str(lib))
                engines[f"ort_{key}"] = bench_engine.Engine("ort", onnx_path, feeds_path,
                                                            threads, env)
                engines[f"tvm_{key}"] = bench_engine.Engine("tvm", lib, feeds_path, threads,
                                                            env)
            errs = {k: rel_error(engines[f"tvm_{k}"].output(), engines[f"ort_{k}"].output())
                    for k in protos}
            order = ("ort_dense", "ort_pruned", "tvm_dense", "tvm_pruned")
            for key in order:  # warm-up
                engines[key].run(2)
            times: dict[str, list[float]] = {k: [] for k in order}
            for _ in range(args.repeat):
                for key in order:
                    time.sleep(ISOLATE_GAP_S)  # the last engine's spinning workers go idle
                    times[key].extend(engines[key].run(args.block)[1:])
        finally:
            for engine in engines.values():
                engine.close()
    return times, errs


def time_side_by_side(runners: dict[str, Any], repeat: int, warmup: int = 2,
                      block: int = 1) -> dict[str, list[float]]:
    """Round-robin timing: each round runs every engine `block` times in a row (runs
    2..block recorded; all of them when block is 1); returns ms per engine."""
    for _ in range(warmup):
        for fn in runners.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(repeat):
        for key, fn in runners.items():
            for run in range(block):
                t0 = time.perf_counter()
                fn()
                if block == 1 or run:
                    times[key].append((time.perf_counter() - t0) * 1e3)
    return times


def load_model(name: str, args: argparse.Namespace
               ) -> tuple[onnx.ModelProto, dict[str, tuple[int, ...]] | None, str]:
    """A fixture CNN (one image input) or a `tvm_models` transformer at its deployment shape;
    returns the model, its input shapes (None: the single input at batch 1) and the pipeline."""
    if name in tvm_models.ROWS:
        proto, row = tvm_models.load(name)
        return proto, row.shapes, row.pipeline
    if name.startswith(LIGHT_PREFIX):
        return load_light(name[len(LIGHT_PREFIX):], args.seed), None, args.pipeline
    return load_fixture(name, args.seed), None, args.pipeline


def bench_model(name: str, args: argparse.Namespace, target: tvm.target.Target
                ) -> list[dict[str, Any]]:
    dense, shapes, pipeline = load_model(name, args)
    t0 = time.perf_counter()
    pruned = compress(dense, pipeline, check=False, input_shapes=shapes).model
    prune_s = time.perf_counter() - t0
    feeds = model_feeds(dense, args.seed, shapes)
    macs_d = model_metrics(dense, input_shapes=shapes)["macs"]
    macs_p = model_metrics(pruned, input_shapes=shapes)["macs"]
    args_tvm = [tvm.runtime.tensor(v) for v in feeds.values()]
    builds = {}
    vms = {}
    for key, proto in (("dense", dense), ("pruned", pruned)):
        vms[key], builds[key] = tvm_build(proto, target, args, feeds)
        print(f"# {name} {key}: build {builds[key]['build_s']} s, rules "
              f"{builds[key]['schedule']['counts']}", file=sys.stderr)
    rows = []
    for threads in args.threads:
        if args.isolate:
            times, errs = time_isolated({"dense": dense, "pruned": pruned}, vms, feeds,
                                        threads, args)
        else:
            tvm_threads.require(threads)
            times, errs = time_in_process({"dense": dense, "pruned": pruned}, vms, feeds,
                                          args_tvm, threads, args)
        med = {k: statistics.median(v) for k, v in times.items()}
        macs_ratio = macs_p / macs_d
        rows.append({
            "model": name, "threads": threads, "pipeline": pipeline,
            "tune_trials": args.tune_trials, "block": args.block,
            "engines": "one process each, default spinning" if args.isolate else
            "one process, spinning " + ("on" if args.spin else "off"),
            "median_ms": {k: round(v, 3) for k, v in med.items()},
            "min_ms": {k: round(min(v), 3) for k, v in times.items()},
            "macs": {"dense": macs_d, "pruned": macs_p}, "macs_ratio": round(macs_ratio, 4),
            "tvm_time_ratio": round(med["tvm_pruned"] / med["tvm_dense"], 4),
            "tvm_efficiency": round(macs_ratio / (med["tvm_pruned"] / med["tvm_dense"]), 3),
            "ort_efficiency": round(macs_ratio / (med["ort_pruned"] / med["ort_dense"]), 3),
            "tvm_vs_ort_dense": round(med["ort_dense"] / med["tvm_dense"], 3),
            "tvm_vs_ort_pruned": round(med["ort_pruned"] / med["tvm_pruned"], 3),
            "rel_error_vs_ort": {k: float(f"{v:.2e}") for k, v in errs.items()},
            "prune_s": round(prune_s, 2), "builds": builds,
        })
        print(f"# {name} t={threads}: {rows[-1]['median_ms']}", file=sys.stderr)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    head = ("| model | thr | ORT dense ms | ORT pruned ms | TVM dense ms | TVM pruned ms "
            "| MACs ratio | TVM time ratio | TVM eff. (goal ≥0.9) | ORT eff. "
            "| ORT/TVM dense (goal ≥1) | ORT/TVM pruned | build s dense/pruned "
            "| tune s | max rel err |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        m, b = r["median_ms"], r["builds"]
        tune = b["dense"]["tune_s"] + b["pruned"]["tune_s"]
        lines.append(
            f"| {r['model']} | {r['threads']} | {m['ort_dense']:.1f} | {m['ort_pruned']:.1f} "
            f"| {m['tvm_dense']:.1f} | {m['tvm_pruned']:.1f} | {r['macs_ratio']:.3f} "
            f"| {r['tvm_time_ratio']:.3f} | {r['tvm_efficiency']:.2f} "
            f"| {r['ort_efficiency']:.2f} | {r['tvm_vs_ort_dense']:.2f} "
            f"| {r['tvm_vs_ort_pruned']:.2f} | {b['dense']['build_s']:.1f}/"
            f"{b['pruned']['build_s']:.1f} | {tune:.0f} "
            f"| {max(r['rel_error_vs_ort'].values()):.1e} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS),
                    help="comma list of tests/fixtures/torchvision names and/or "
                    f"transformers from tools/tvm_models.py ({', '.join(tvm_models.ROWS)})")
    ap.add_argument("--repeat", type=int, default=10, help="timed rounds per engine")
    ap.add_argument("--block", type=int, default=1,
                    help="runs of one engine in a row per round (>1: runs 2..N timed, the"
                    " steady state of a served model; 1: every run follows the others)")
    ap.add_argument("--isolate", action="store_true",
                    help="each engine in its own process with its default spinning, blocks of"
                    " --block runs (at least 2; the first of each dropped) alternating")
    ap.add_argument("--threads", default="1,2", help="comma list of thread counts")
    ap.add_argument("--tune-trials", type=int, default=0,
                    help="MetaSchedule trials per task for both TVM builds (0: default build)")
    ap.add_argument("--tune-budget", type=float, default=0.0,
                    help="seconds of tuning per TVM build (0: none; see compile_relax)")
    ap.add_argument("--tuning-db", default=None, help="persistent tuning database directory")
    ap.add_argument("--pipeline", default=DEFAULT_PIPELINE)
    ap.add_argument("--target", default=None,
                    help='TVM target as JSON (default {"kind": "llvm"} + host mcpu)')
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--spin", action="store_true",
                    help="keep both engines' default spin-waiting worker threads")
    ap.add_argument("--json", default=None, help="write all figures to this JSON file")
    args = ap.parse_args(argv)
    if args.block < 1 or (args.isolate and args.block < 2):
        ap.error("--block must be >= 1 (>= 2 with --isolate)")
    if args.isolate and args.spin:
        ap.error("--isolate runs every engine with its default spinning; drop --spin")
    args.models = [m for m in args.models.split(",") if m]
    args.threads = [int(t) for t in args.threads.split(",") if t]
    return args


def host_target() -> tvm.target.Target:
    """LLVM for this CPU (its name from LLVM, so the vector ISA matches the host)."""
    cpu = tvm.get_global_func("target.llvm_get_system_cpu", allow_missing=True)
    name = cpu() if cpu is not None else ""
    return tvm.target.Target({"kind": "llvm", **({"mcpu": name} if name else {})})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    target = tvm.target.Target(json.loads(args.target)) if args.target else host_target()
    payloads = None if args.isolate else tvm_threads.per_process(
        args.threads, sys.argv[1:] if argv is None else argv, __file__)
    if payloads is None:
        rows = [row for name in args.models for row in bench_model(name, args, target)]
    else:  # one process per thread count (tools/tvm_threads.py); rows model by model
        order = {name: i for i, name in enumerate(args.models)}
        rows = sorted((r for p in payloads for r in p["rows"]),
                      key=lambda r: (order.get(r["model"], 0), r["threads"]))
    print(f"target: `{json.dumps(target.export().get('kind'))} "
          f"{target.attrs.get('mcpu', '')}`, tune trials/task: {args.tune_trials}, "
          f"repeat: {args.repeat}, block: {args.block}, engines: "
          f"{'one process each, default spinning' if args.isolate else 'one process'}, "
          f"spinning threads: {'default' if args.isolate else args.spin}, "
          f"host: {platform.node()} ({os.cpu_count()} CPUs)\n")
    print(markdown(rows))
    if args.json:
        payload = {"target": str(target), "argv": sys.argv[1:], "thread_setting": "TVM_NUM_THREADS"
                   " at start-up, one process per count", "rows": rows}
        write_atomic(args.json, (json.dumps(payload, indent=1) + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
