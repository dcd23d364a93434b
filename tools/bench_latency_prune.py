"""Benchmark (not a test): does `channel-prune{target-latency=F}` hit its latency budget?

Why: issue 13, latency-aware pruning. For each model this runs
`channel-prune{target-latency=F}` for the host target (per-layer latency tables timed
with the compiled TVM kernels, NetAdapt-style, cached on disk), then the pass itself
builds the dense and the pruned model and times them in interleaved rounds; the table
here is predicted vs measured latency and how far the measured ratio is from F
(acceptance: within 10 %), plus the time the tables took (cold cache, then warm).

Run (1 TVM thread, so two agents sharing the cores disturb each other less)::

    TVM_NUM_THREADS=1 python tools/bench_latency_prune.py --models resnet50,mobilenet_v2

The topologies are `tests/fixtures/torchvision/<model>.onnx` with placeholder weights
filled (seed 0); criterion l2. Writes markdown to stdout and JSON with --json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")

import onnx  # noqa: E402

import compress_ir.passes  # noqa: F401,E402 - registers the passes
from compress_ir.api import compress  # noqa: E402
from compress_ir.backend.benchmark import environment  # noqa: E402
from compress_ir.core.files import write_atomic  # noqa: E402
from compress_ir.core.metrics import model_metrics  # noqa: E402
from compress_ir.frontends.placeholders import fill_placeholders  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "torchvision"


def allocation_of(report: dict[str, Any]) -> dict[str, Any]:
    """The channel-prune step's allocation details from a compress report."""
    for step in report["passes"]:
        details = step.get("details") or {}
        if "allocation" in details:
            return details["allocation"]
    raise KeyError("no channel-prune allocation in the report")


def run_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    dense = fill_placeholders(onnx.load(str(FIXTURES / f"{name}.onnx")), args.seed)
    pipeline = (f"channel-prune{{target-latency={args.fraction},latency-repeat={args.repeat},"
                f"latency-cache={args.cache}}}")
    t0 = time.perf_counter()
    # the pass times for `--target` (x86: this host, the pass's default); `compress(target=)`
    # would also build and verify an artifact of the result, which this does not need
    extra: dict[str, Any] = {}
    if args.target != "x86":
        extra = {"target": args.target, "artifact": str(Path(args.work) / f"{name}.art")}
    result = compress(dense, pipeline, check=False, **extra)
    seconds = time.perf_counter() - t0
    alloc = allocation_of(result.report)
    meas = alloc["measured"]
    macs = model_metrics(result.model)["macs"] / model_metrics(dense)["macs"]
    ratio = meas["ratio"]
    return {
        "model": name, "fraction": args.fraction, "seconds": round(seconds, 1),
        "tables": alloc["tables"], "uncovered": alloc["uncovered"],
        "predicted_dense_ms": alloc["original"], "predicted_pruned_ms": alloc["estimated"],
        "predicted_ratio": alloc["estimated_fraction"], "rest_ms": alloc["rest_ms"],
        "measured_dense_ms": meas["dense"]["median_ms"],
        "measured_pruned_ms": meas["pruned"]["median_ms"],
        "measured_ratio": ratio, "measured_ratio_min": meas["ratio_min"],
        "scale": alloc["tables"]["scale"],
        "spread": {k: {"cv": meas[k]["cv"], "tail": meas[k]["tail"]} for k in ("dense", "pruned")},
        "vs_budget": round(ratio / args.fraction - 1, 4), "within_10pct":
            abs(ratio / args.fraction - 1) <= 0.10, "macs_ratio": round(macs, 4),
        "reached": alloc["reached"], "steps": alloc["steps"],
        "rounds": alloc.get("rounds", []),
    }


def _rounds(rounds: list[dict[str, Any]]) -> str:
    return ", ".join(f"{x['asked']:.3f}->{x['measured']:.3f}" for x in rounds) or "1 (tables)"


def markdown(rows: list[dict[str, Any]]) -> str:
    head = ("| model | F | pred. dense ms | meas. dense ms | pred. pruned ms | meas. pruned ms "
            "| pred. ratio | meas. ratio (median) | meas. ratio (min) | vs budget (goal ±10 %) "
            "| MACs ratio | CV d/p "
            "| table scale | layers / points | measured / cached | table s | pass s "
            "| rounds: tables asked -> measured |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        t = r["tables"]
        lines.append(
            f"| {r['model']} | {r['fraction']} | {r['predicted_dense_ms']:.2f} "
            f"| {r['measured_dense_ms']:.2f} | {r['predicted_pruned_ms']:.2f} "
            f"| {r['measured_pruned_ms']:.2f} | {r['predicted_ratio']:.3f} "
            f"| {r['measured_ratio']:.3f} | {r['measured_ratio_min']:.3f} "
            f"| {r['vs_budget']:+.1%} | {r['macs_ratio']:.3f} "
            f"| {r['spread']['dense']['cv']:.0%}/{r['spread']['pruned']['cv']:.0%} "
            f"| {r['scale']:.2f} | {t['layers']} / {t['points']} "
            f"| {t['measured']} / {t['cached']} "
            f"| {t['table_seconds']:.0f} | {r['seconds']:.0f} "
            f"| {_rounds(r['rounds'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="resnet50,mobilenet_v2")
    ap.add_argument("--fraction", type=float, default=0.5)
    ap.add_argument("--repeat", type=int, default=20, help="interleaved dense/pruned rounds")
    ap.add_argument("--target", default="x86")
    ap.add_argument("--cache", default=str(ROOT / ".latency-cache"),
                    help="latency table cache directory")
    ap.add_argument("--work", default="/tmp", help="where artifacts of other targets go")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    rows = []
    for name in [m for m in args.models.split(",") if m]:
        rows.append(run_model(name, args))
        print(f"# {name}: {json.dumps(rows[-1])}", file=sys.stderr, flush=True)
    env = environment()
    print(f"target `{args.target}` on {env['cpu']} ({env['cpu_count']} CPUs), "
          f"TVM_NUM_THREADS={env['TVM_NUM_THREADS']}, {args.repeat} interleaved rounds\n")
    print(markdown(rows))
    if args.json:
        payload = {"argv": sys.argv[1:], "environment": env, "rows": rows}
        write_atomic(args.json, (json.dumps(payload, indent=1) + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
