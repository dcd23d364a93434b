"""After tuning, time the tuned and the default build of the whole model; keep the faster.

Why: the database competes per function (`compete.py`), but per-function measurements
(MetaSchedule's runner: one kernel in a loop, warm caches) do not add up to the model's
latency: a tuned kernel that wins alone can lose in the model (another layout of its
weights, cache pressure from its neighbours). Tuning must never make a model slower, so
the two executables are run side by side in interleaved rounds on this host, with the same
seeded inputs, and the median decides. Only for targets this host runs (not cross or
remote builds: those keep the per-function choice, and say so).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np
import tvm
from tvm import relax

from compress_ir.backend.benchmark import interleaved

ROUNDS = 15
WARMUP = 2


def _shape_dtype(param: Any) -> tuple[list[int], str] | None:
    info = getattr(param, "struct_info", None) or getattr(param, "ty", None)
    shape = getattr(info, "shape", None)
    dtype = getattr(info, "dtype", None)
    values = getattr(shape, "values", None)
    if values is None or dtype is None:
        return None
    try:
        return [int(v) for v in values], str(dtype)
    except TypeError:  # symbolic dim
        return None


def model_inputs(mod: tvm.IRModule, seed: int = 0) -> list[Any] | None:
    """Seeded inputs for `main`: floats standard normal, integers and bools zero (always
    valid indices). None when a shape is not static."""
    rng = np.random.default_rng(seed)
    out = []
    for param in mod["main"].params:
        sd = _shape_dtype(param)
        if sd is None:
            return None
        shape, dtype = sd
        if dtype.startswith(("float", "bfloat")):
            arr = rng.standard_normal(shape).astype(dtype)
        else:
            arr = np.zeros(shape, dtype=dtype)
        out.append(tvm.runtime.tensor(arr))
    return out


def compare(tuned: relax.Executable, default: relax.Executable, args: list[Any],
            rounds: int = ROUNDS) -> dict[str, Any]:
    """Median ms of each executable over interleaved rounds, and which is faster."""
    vms = {"tuned": relax.VirtualMachine(tuned, tvm.cpu()),
           "default": relax.VirtualMachine(default, tvm.cpu())}

    def timer(vm: relax.VirtualMachine) -> Any:
        def once() -> float:
            t0 = time.perf_counter()
            vm["main"](*args)
            return (time.perf_counter() - t0) * 1e3
        return once

    samples = interleaved({k: timer(v) for k, v in vms.items()}, rounds, warmup=WARMUP)
    med = {k: statistics.median(v) for k, v in samples.items()}
    return {"tuned_ms": round(med["tuned"], 4), "default_ms": round(med["default"], 4),
            "rounds": rounds, "kept": "tuned" if med["tuned"] < med["default"] else "default"}
