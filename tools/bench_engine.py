"""One inference engine in its own process, timed on command (`bench_tvm.py --isolate`).

Why: in one process the engines' worker threads compete. Each onnxruntime session and
TVM keep their idle workers spinning for a while after a run (their defaults), and on 2
cores a spinning worker of one engine takes the core the next engine needs: with
spinning on, the pruned model's onnxruntime session ran 6.0 ms after the dense one's
7.8 ms at 2 threads. With spinning off (how `bench_tvm.py` runs them in one process)
every parallel loop waits for a sleeping worker to wake, which a deployed model, with
the engines' defaults, does not. Here each engine runs alone in its process with its
default spinning; the parent alternates blocks of runs between the processes (the first
run of a block, which may share the cores with the previous engine's spinning workers,
is dropped by the parent), so noise still hits all engines alike.

Protocol (stdin/stdout, one line each): the child prints `ready`; `N` runs the model N
times and prints the N times in ms as a JSON list; `out` prints the first output as a
JSON list; `quit` exits.

    python tools/bench_engine.py ort model.onnx feeds.npz THREADS
    TVM_NUM_THREADS=2 python tools/bench_engine.py tvm model.so feeds.npz 2
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ENGINES = ("ort", "tvm")


def _ort(path: str, feeds: dict[str, np.ndarray], threads: int) -> Callable[[], Any]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    return lambda: sess.run(None, feeds)[0]


def _tvm(path: str, feeds: dict[str, np.ndarray], threads: int) -> Callable[[], Any]:
    import tvm
    import tvm_threads  # tools/ is sys.path[0]: this file runs as a script
    from tvm import relax

    tvm_threads.require(threads)
    vm = relax.VirtualMachine(tvm.runtime.load_module(path), tvm.cpu())
    args = [tvm.runtime.tensor(v) for v in feeds.values()]

    def run() -> np.ndarray:
        out = vm["main"](*args)
        return (out if hasattr(out, "numpy") else out[0]).numpy()

    return run


def child(engine: str, path: str, feeds_path: str, threads: int) -> None:
    with np.load(feeds_path) as data:
        feeds = {k: data[k] for k in data.files}
    run = {"ort": _ort, "tvm": _tvm}[engine](path, feeds, threads)
    print("ready", flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "quit":
            return
        if cmd == "out":
            print(json.dumps(np.asarray(run()).ravel().tolist()), flush=True)
            continue
        times = []
        for _ in range(int(cmd)):
            t0 = time.perf_counter()
            run()
            times.append((time.perf_counter() - t0) * 1e3)
        print(json.dumps(times), flush=True)


class Engine:
    """The parent's handle on one engine process."""

    def __init__(self, engine: str, path: Path, feeds_path: Path, threads: int,
                 env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, engine, str(path), str(feeds_path), str(threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        if self._line() != "ready":
            raise RuntimeError(f"{engine} engine for {path} did not start")

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"engine process exited with {self.proc.wait()}")
        return line.strip()

    def _ask(self, cmd: str) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return json.loads(self._line())

    def run(self, times: int) -> list[float]:
        return self._ask(str(times))

    def output(self) -> np.ndarray:
        return np.asarray(self._ask("out"), dtype=np.float64)

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=60)


if __name__ == "__main__":
    if len(sys.argv) != 5 or sys.argv[1] not in ENGINES:
        raise SystemExit(__doc__)
    child(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
