"""TVM's thread count is a start-up setting: benchmarks run each count in its own process.

Why (measured on the 2-vCPU Zen 5 host, 2026-12-04; `tools/results/tvm_speed/zen5/README.md`):
resizing TVM's pool at run time with `runtime.config_threadpool(0, n)`, as the benchmarks
did until stop 25, is not what a deployment with `TVM_NUM_THREADS=n` gets.
- Without the variable TVM's concurrency is half the logical CPUs (1 on this host), and
  its pool pins the process's calling thread to CPU 0 (`os.sched_getaffinity` gives {0}).
  `config_threadpool(0, 2)` cannot raise the pool above that (`runtime.NumThreads` stays
  1), and the onnxruntime threads started from the pinned thread inherit CPU 0: the
  "2-thread" rows ran both engines on one core (ResNet-18 at stop 25: onnxruntime 14.7 /
  14.9 ms at 1 / 2 threads, TVM 15.1 / 15.1 ms).
- At 1 thread the resized pool measured slower than the start-up setting (pruned
  Inception v2, TVM 5.16 vs 4.46 ms; onnxruntime in the same process 4.73 vs 4.46 ms; the
  same with the process pinned by `taskset`). Why was not found; the start-up setting is
  what a deployment uses.

So a benchmark runs itself once per thread count with `TVM_NUM_THREADS` set before TVM
loads (`per_process`), and refuses to time a count its process was not started with
(`require`). onnxruntime runs in the same process on the same calling thread.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ENV = "TVM_NUM_THREADS"


def started_with() -> int | None:
    """The thread count this process was started with, if any."""
    value = os.environ.get(ENV, "")
    return int(value) if value.isdigit() else None


def require(threads: int) -> None:
    """Refuse to time `threads` in a process whose TVM was not started with that count."""
    if started_with() != threads:
        raise SystemExit(f"timing {threads} TVM thread(s) needs {ENV}={threads} at start-up "
                         f"(this process has {os.environ.get(ENV)!r}); see tools/tvm_threads.py")


def per_process(threads: list[int], argv: list[str], script: str) -> list[dict[str, Any]] | None:
    """Run `script argv --threads N --json F` once per N with `TVM_NUM_THREADS=N`.

    Returns the JSON payloads in the order of `threads`, or None when this process was
    started with the one count asked for (then the caller times in-process). The
    children's stderr (progress) passes through; their stdout is dropped, the caller
    prints the merged result.
    """
    if len(threads) == 1 and started_with() == threads[0]:
        return None
    payloads = []
    with tempfile.TemporaryDirectory(prefix="tvm_threads_") as tmp:
        for n in threads:
            out = Path(tmp) / f"threads_{n}.json"
            cmd = [sys.executable, script, *argv, "--threads", str(n), "--json", str(out)]
            print(f"# {ENV}={n}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
            subprocess.run(cmd, env={**os.environ, ENV: str(n)}, check=True,
                           stdout=subprocess.DEVNULL)
            payloads.append(json.loads(out.read_text()))
    return payloads
