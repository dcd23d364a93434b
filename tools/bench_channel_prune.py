"""Benchmark the channel-prune pass (not a test): wall time and peak memory.

Why: channel pruning is the pass users run on big models, and its analysis walks
every channel of every layer. We hold it to a target of **5 s for
``channel-prune{ratio=0.5}`` alone on ResNet50** (CPU, one process), and this
script is how that figure is measured and tracked. It times, each as the median
of N repeats (with min and max):

* ``load``     -- ``load_onnx`` of the in-memory proto (validation, folding, shapes);
* ``pass``     -- the pass(es) alone, ``Pass.run(model, PassContext())`` on a fresh
  ``Model.copy()`` each time (the copy is not timed);
* ``compress`` -- the whole ``compress_ir.api.compress(..., check=True)``: load,
  pass, structural verification, metrics and the onnxruntime comparison against
  the pass's masked reference.

Peak memory: the tracemalloc peak of one extra, untimed run of the pass (Python
allocations only; numpy buffers are included, onnxruntime's are not), and the
process's ``ru_maxrss`` at the end (everything, high-water mark of the process).
Timed runs are done with tracemalloc off, as it slows allocation-heavy code.

By default the model is the ``onnx`` package's
``onnx/backend/test/data/light/light_resnet50.onnx``, whose weights are
placeholders filled here with ``fill_placeholders(proto, seed)``. Run::

    python tools/bench_channel_prune.py                      # ResNet50, 5 repeats
    python tools/bench_channel_prune.py --repeats 3 --json /tmp/bench.json
    python tools/bench_channel_prune.py --model tests/fixtures/torchvision/resnet50.onnx \\
        --fill-placeholders
    python tools/bench_channel_prune.py --pipeline 'channel-prune{ratio=0.3,scope=global}'
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

import compress_ir.passes  # noqa: F401 - registers the passes
from compress_ir.api import DEFAULT_TOLERANCE, compress
from compress_ir.core.model import Model
from compress_ir.core.passes import Pass, PassContext
from compress_ir.core.pipeline import build_passes
from compress_ir.frontends.onnx import load_onnx
from compress_ir.frontends.placeholders import fill_placeholders

DEFAULT_PIPELINE = "channel-prune{ratio=0.5}"
TARGET_PASS_S = 5.0  # channel-prune{ratio=0.5} alone on ResNet50
LIGHT_ZOO = Path(os.path.dirname(onnx.__file__)) / "backend" / "test" / "data" / "light"
LIGHT_RESNET50 = LIGHT_ZOO / "light_resnet50.onnx"


def timed(fn: Callable[[], Any], repeats: int, setup: Callable[[], Any] | None = None
          ) -> tuple[list[float], Any]:
    """Run `fn` (given `setup()`'s value when set) `repeats` times; seconds and last result."""
    times, result = [], None
    for _ in range(repeats):
        arg = setup() if setup is not None else None
        gc.collect()
        start = time.perf_counter()
        result = fn(arg) if setup is not None else fn()
        times.append(time.perf_counter() - start)
        del arg
    return times, result


def summary(times: list[float]) -> dict[str, Any]:
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "runs_s": times}


def run_passes(passes: list[Pass], model: Model) -> tuple[Model, list[dict[str, Any]]]:
    """The pass(es) alone, in order, without verification or numeric checks."""
    ctx = PassContext()
    stats = []
    for p in passes:
        result = p.run(model, ctx)
        model = result.model
        stats.append({"pass": p.spec(), **result.stats})
    return model, stats


def bench(proto: onnx.ModelProto, pipeline: str, repeats: int, seed: int,
          do_compress: bool = True) -> dict[str, Any]:
    """Measure load, pass and compress on `proto` (placeholders already filled)."""
    out: dict[str, Any] = {}
    load_times, model = timed(lambda: load_onnx(proto), repeats)
    out["load"] = summary(load_times)

    passes = build_passes(pipeline)
    pass_times, _ = timed(lambda m: run_passes(passes, m), repeats, setup=model.copy)
    out["pass"] = summary(pass_times)

    fresh = model.copy()
    gc.collect()
    tracemalloc.start()
    _, out["pass_stats"] = run_passes(passes, fresh)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    out["pass_tracemalloc_peak_mib"] = peak / 2**20
    out["ru_maxrss_before_compress_mib"] = _maxrss_mib()

    if do_compress:
        comp_times, result = timed(
            lambda: compress(proto, pipeline, check=True, seed=seed), repeats)
        out["compress"] = summary(comp_times)
        report = result.report
        out["macs_before"] = report["before"]["macs"]
        out["macs_after"] = report["after"]["macs"]
        out["params_before"] = report["before"]["params"]
        out["params_after"] = report["after"]["params"]
        out["checks"] = report["checks"]
        out["rel_error"] = max((c["rel_error"] for c in report["checks"]), default=None)
    out["ru_maxrss_mib"] = _maxrss_mib()
    return out


def _maxrss_mib() -> float:
    """The process's resident-set high-water mark (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _fmt_row(label: str, s: dict[str, Any]) -> str:
    return (f"  {label:10}{s['median_s']:>10.3f}{s['min_s']:>10.3f}{s['max_s']:>10.3f}")


def format_table(fig: dict[str, Any]) -> str:
    """A readable summary of the figures from `bench` plus the run's metadata."""
    lines = [f"model     {fig['model']}" + ("  (placeholders filled, seed "
                                             f"{fig['seed']})" if fig["filled"] else ""),
             f"pipeline  {fig['pipeline']}",
             f"repeats   {fig['repeats']}   python {fig['env']['python']}, "
             f"onnx {fig['env']['onnx']}, onnxruntime {fig['env']['onnxruntime']}, "
             f"{fig['env']['cpus']} CPUs",
             "",
             f"  {'seconds':10}{'median':>10}{'min':>10}{'max':>10}",
             _fmt_row("load", fig["load"]),
             _fmt_row("pass", fig["pass"])]
    if "compress" in fig:
        lines.append(_fmt_row("compress", fig["compress"]))
    lines += ["",
              f"  peak memory: pass (tracemalloc) {fig['pass_tracemalloc_peak_mib']:.1f} MiB, "
              f"process ru_maxrss {fig['ru_maxrss_before_compress_mib']:.1f} MiB after "
              f"load+pass, {fig['ru_maxrss_mib']:.1f} MiB at the end"]
    for stats in fig.get("pass_stats", []):
        lines.append("  pass stats: " + ", ".join(f"{k}={v}" for k, v in stats.items()))
    if "compress" in fig:
        mb, ma = fig["macs_before"], fig["macs_after"]
        pb, pa = fig["params_before"], fig["params_after"]
        lines.append(f"  MACs   {mb / 1e6:10.1f}M -> {ma / 1e6:10.1f}M  (x{ma / mb:.3f})"
                     if mb else "  MACs   0")
        lines.append(f"  params {pb / 1e6:10.2f}M -> {pa / 1e6:10.2f}M  (x{pa / pb:.3f})"
                     if pb else "  params 0")
        err = fig["rel_error"]
        lines.append("  numeric check: " + ("no reference (model unchanged)" if err is None else
                     f"rel. error {err:.2e} vs masked reference "
                     f"(tolerance {DEFAULT_TOLERANCE:.0e})"))
    med = fig["pass"]["median_s"]
    if fig["is_default_model"] and fig["pipeline"] == DEFAULT_PIPELINE:
        verdict = "met" if med <= TARGET_PASS_S else "MISSED"
    else:
        verdict = "n/a (the target is for the default model and pipeline)"
    lines += ["", f"  target: {DEFAULT_PIPELINE} alone on ResNet50 <= {TARGET_PASS_S:.0f} s; "
              f"this run's pass median {med:.3f} s: {verdict}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Benchmark channel-prune (default: ResNet50 from the onnx light zoo).")
    parser.add_argument("--model", type=Path, default=None,
                        help=f"ONNX model to benchmark (default {LIGHT_RESNET50})")
    parser.add_argument("--fill-placeholders", action="store_true",
                        help="fill ConstantOfShape weight placeholders with seeded random "
                             "weights (always on for the default model)")
    parser.add_argument("--pipeline", default=DEFAULT_PIPELINE,
                        help=f"pipeline text (default {DEFAULT_PIPELINE!r})")
    parser.add_argument("--repeats", "-n", type=int, default=5,
                        help="timed repeats per measurement (default 5)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed for placeholders and check inputs (default 0)")
    parser.add_argument("--no-compress", action="store_true",
                        help="skip timing the whole compress() (load + pass + checks)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")

    is_default = args.model is None
    path = LIGHT_RESNET50 if is_default else args.model
    if not path.is_file():
        parser.error(f"no such model: {path}")
    proto = onnx.load(str(path))
    filled = is_default or args.fill_placeholders
    if filled:
        proto = fill_placeholders(proto, args.seed)

    fig: dict[str, Any] = {
        "model": str(path), "filled": filled, "seed": args.seed, "pipeline": args.pipeline,
        "repeats": args.repeats, "is_default_model": is_default,
        "target_pass_s": TARGET_PASS_S,
        "env": {"python": platform.python_version(), "onnx": onnx.__version__,
                "onnxruntime": ort.__version__, "numpy": np.__version__,
                "cpus": os.cpu_count(), "machine": platform.machine()},
    }
    fig.update(bench(proto, args.pipeline, args.repeats, args.seed, not args.no_compress))
    print(format_table(fig))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(fig, indent=2) + "\n")
        print(f"\nfigures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
