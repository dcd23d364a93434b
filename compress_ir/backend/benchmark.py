"""`--benchmark`: onnxruntime on the original and compressed models vs the TVM artifact.

Gate-grade: a latency gate (`--gate 'latency <= 0.8'`) must not pass or fail on noise.
All three see the same seeded inputs in the same process; after a warm-up they are
timed in interleaved rounds (each round times each runtime once, in a rotating order),
so a slow phase of the machine hits all of them alike instead of whichever ran then.
Each entry reports median, p90, min, mean and the coefficient of variation (CV); the
thread settings and CPU model are recorded, and a warning is added when an entry's CV
is above `MAX_CV` or its p90 is more than `MAX_TAIL` above its median (too wide a
spread to trust a ratio; the tail test is the robust one, a single preempted run
inflates the CV alone).

onnxruntime runs with its graph optimisations on (its production setting) and is
timed by wall clock around `session.run`; the artifact is timed by TVM's VM
`time_evaluator` on the device (inputs already there). Ratios are time ratios: < 1
means the numerator is faster. Ratios between TVM and onnxruntime are only given when
both ran on the same machine (not for --rpc, where TVM runs on the remote device).
Over RPC the original model is built for the same target too (`original_art`) and
both artifacts are loaded into ONE session, so they are timed, interleaved, on the
same device: `tvm_vs_tvm_original` is the ratio a latency gate then uses.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import onnx

from compress_ir.backend.artifact import Artifact, artifact_inputs
from compress_ir.backend.runner import Remote, Session, local_run_blocker, open_remote
from compress_ir.core import numeric
from compress_ir.core.limits import DEFAULT_RPC_TIMEOUT

DEFAULT_REPEAT = 20
WARMUP = 3
MAX_CV = 0.25
MAX_TAIL = 0.10
log = logging.getLogger("compress_ir.benchmark")


def summarize(samples: list[float]) -> dict[str, Any]:
    """median/p90/min/mean (ms) and CV of timing samples."""
    ordered = sorted(samples)
    mean = statistics.fmean(ordered)
    stdev = statistics.stdev(ordered) if len(ordered) > 1 else 0.0
    p90 = ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)]
    return {"median_ms": statistics.median(ordered), "p90_ms": p90, "min_ms": ordered[0],
            "mean_ms": mean, "cv": round(stdev / mean, 4) if mean > 0 else 0.0,
            "tail": round(p90 / statistics.median(ordered) - 1, 4) if ordered[0] > 0 else 0.0,
            "repeat": len(ordered)}


def _ort_timer(proto: onnx.ModelProto, feeds: dict[str, Any]) -> Callable[[], float]:
    sess = numeric.session(proto, optimize=True)
    names = [o.name for o in sess.get_outputs()]

    def once() -> float:
        t0 = time.perf_counter()
        sess.run(names, feeds)
        return (time.perf_counter() - t0) * 1e3

    return once


def interleaved(timers: dict[str, Callable[[], float]], repeat: int, warmup: int = WARMUP
                ) -> dict[str, list[float]]:
    """`repeat` rounds; each round calls every timer once, starting one further each round."""
    names = list(timers)
    for _ in range(warmup):
        for name in names:
            timers[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeat):
        for i in range(len(names)):
            name = names[(r + i) % len(names)]
            samples[name].append(timers[name]())
    return samples


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, Any]:
    """Where the timings were taken: CPU, cores, thread settings."""
    return {"cpu": _cpu_model(), "cpu_count": os.cpu_count(),
            "onnxruntime_threads": "default (all cores)",
            "TVM_NUM_THREADS": os.environ.get("TVM_NUM_THREADS"),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}


def _ratio(a: dict[str, Any], b: dict[str, Any]) -> float | None:
    if "median_ms" not in a or "median_ms" not in b or not b["median_ms"]:
        return None
    return round(a["median_ms"] / b["median_ms"], 4)


def benchmark(original: onnx.ModelProto, compressed: onnx.ModelProto, art: Artifact,
              repeat: int = DEFAULT_REPEAT, seed: int = 0, rpc: str | None = None,
              rpc_timeout: float | None = DEFAULT_RPC_TIMEOUT,
              original_art: Artifact | None = None) -> dict[str, Any]:
    """Latency statistics of each runtime, their ratios, the environment and warnings.

    `original_art` (the original model built for the same target) is timed next to
    `art` in the same session: on the same device, also over `rpc`.
    """
    feeds = artifact_inputs(art.inputs, seed)
    result: dict[str, Any] = {"repeat": repeat, "warmup": WARMUP, "seed": seed,
                              "method": "interleaved rounds",
                              "inputs": {s.name: list(s.shape) for s in art.inputs},
                              "environment": environment()}
    if rpc:  # the CPU above is this machine's: where onnxruntime ran, not the device
        result["environment"]["applies_to"] = "onnxruntime (this machine); TVM ran over RPC"
    timers = {"onnxruntime_original": _ort_timer(original, feeds),
              "onnxruntime_compressed": _ort_timer(compressed, feeds)}
    blocker = None if rpc else local_run_blocker(art.meta)
    original_note = None
    if original_art is not None and [(s.name, tuple(s.shape), s.dtype) for s in
                                     original_art.inputs] != [(s.name, tuple(s.shape), s.dtype)
                                                              for s in art.inputs]:
        original_note = "the original artifact takes other inputs than the compressed one"
        original_art = None
    sessions: dict[str, Session] = {}
    remote: Remote | None = None
    try:
        if not blocker:
            remote = open_remote(rpc, rpc_timeout) if rpc else None
            sessions["tvm"] = Session(art, None, rpc_timeout, remote=remote)
            if original_art is not None:
                sessions["tvm_original"] = Session(original_art, None, rpc_timeout,
                                                   remote=remote)
        for name, session in sessions.items():
            timers[name] = session.timer(feeds)
        samples = interleaved(timers, repeat)
    finally:
        for session in sessions.values():
            session.close()
        remote = None
    for name, values in samples.items():
        entry = summarize(values)
        entry["method"] = "wall clock" if name.startswith("onnxruntime") else "vm.time_evaluator"
        entry["where"] = sessions[name].where if name in sessions else "local"
        result[name] = entry
    if blocker:
        result["tvm"] = {"ran": False, "reason": blocker}
    if original_note:
        result["tvm_original"] = {"ran": False, "reason": original_note}
    ort_o, ort_c, tvm = (result[k] for k in ("onnxruntime_original", "onnxruntime_compressed",
                                             "tvm"))
    # a TVM/onnxruntime ratio needs both on one processor: not over RPC, not GPU vs CPU
    same_device = not rpc and art.device != "cuda"
    result["ratios"] = {
        "ort_compressed_vs_original": _ratio(ort_c, ort_o),
        "tvm_vs_ort_compressed": _ratio(tvm, ort_c) if same_device else None,
        "tvm_vs_ort_original": _ratio(tvm, ort_o) if same_device else None,
    }
    if "median_ms" in (result.get("tvm_original") or {}):  # timed only with original_art
        result["ratios"]["tvm_vs_tvm_original"] = _ratio(tvm, result["tvm_original"])
    warnings = []
    for name, entry in result.items():
        if not isinstance(entry, dict) or "cv" not in entry:
            continue
        if entry["tail"] > MAX_TAIL or entry["cv"] > MAX_CV:
            warnings.append(f"{name}: p90 {entry['tail']:+.0%} over the median, CV "
                            f"{entry['cv']:.0%}: the spread is too wide to trust a ratio (use "
                            "an idle machine or more --repeat)")
    if not same_device:
        where = "the RPC device" if rpc else "this host's GPU"
        warnings.append(f"TVM ran on {where}, onnxruntime on this CPU: no TVM/onnxruntime ratio"
                        + ("" if "median_ms" in (result.get("tvm_original") or {}) else
                           " and no original TVM timing on that device"))
    for line in warnings:
        log.warning("benchmark: %s", line)
    result["warnings"] = warnings
    return result
