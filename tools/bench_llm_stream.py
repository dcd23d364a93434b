"""Streamed sparsification of a ~1.1B TinyLlama-shape decoder (random fp32, external data).

Each step runs in its own process so its peak RSS (ru_maxrss) is its own:
generate the model (22 layers, hidden 2048, 32/4 heads, FFN 5632, vocab 32000), run
`python -m compress_ir.stream` per mode, then load the output in onnxruntime and run it
on 16 tokens (logits finite, changed vs. the dense model). Writes a markdown table.

    nice -n 5 .venv/bin/python tools/bench_llm_stream.py --dir /tmp/llm_bench \
        --out tools/results/llm/stream.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

GEN = """
import json, resource, sys, time
from compress_ir.stream.synth import LlamaShape, build
t = time.perf_counter()
shape = LlamaShape(layers=int(sys.argv[2]))
build(shape, sys.argv[1])
print(json.dumps({"params": shape.params(), "wall_s": round(time.perf_counter() - t, 2),
                  "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""

RUN = """
import json, resource, sys, time
import numpy as np, onnxruntime as ort
t = time.perf_counter()
so = ort.SessionOptions()
so.add_session_config_entry("session.disable_prepacking", "1")
sess = ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"])
load = time.perf_counter() - t
ids = (np.arange(16, dtype=np.int64).reshape(1, 16) * 997) % 32000
t = time.perf_counter()
out = sess.run(None, {"input_ids": ids})[0]
np.save(sys.argv[2], out[0, -1])
print(json.dumps({"load_s": round(load, 2), "run_s": round(time.perf_counter() - t, 2),
                  "finite": bool(np.isfinite(out).all()), "shape": list(out.shape),
                  "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""

# OBS: sequential SparseGPT block by block (compress_ir/stream/sequential.py), random
# token ids as calibration (128 sequences x 16 tokens = 2048 rows per layer), plain
# OBS (correct=false: the held-out refit's eigh of a 5632^2 Hessian per layer is
# what it would add), float32 sweeps
_OBS = ["--criterion", "obs", "--calib", "random:128", "--no-correct", "--solve-dtype",
        "float32"]
MODES = {"2:4 magnitude": ["--pattern", "2:4"],
         "50% magnitude": ["--pattern", "unstructured", "--sparsity", "0.5"],
         "2:4 obs": ["--pattern", "2:4", *_OBS],
         "50% obs": ["--pattern", "unstructured", "--sparsity", "0.5", *_OBS],
         # heads (a KV head with its 8 query heads) and FFN neurons, half of each block's,
         # l2 criterion (no calibration), one residual block in memory at a time
         "heads+FFN 50% l2": ["--prune", "channel-prune{ratio=0.5}"],
         # the data-driven route: each block sees the pruned blocks' activations of 32
         # random-token sequences (sequential), wanda scores, then the least-squares refit
         "heads+FFN 50% wanda+reconstruct": [
             "--prune", "channel-prune{criterion=wanda,ratio=0.5},"
             "reconstruct{inputs=original,prior=pruned,bias=keep}", "--calib", "random:32"]}


def _py(args: list[str], log: Path | None = None) -> dict:
    # one BLAS thread: on a shared, oversubscribed machine OpenBLAS threads spin against
    # each other (a 2048^2 Cholesky: 0.2 s on one thread, 0.5-4 s on two under load)
    env = {**os.environ, "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS", "1")}
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env)
    if log is not None:
        log.write_text(proc.stderr)
    if proc.returncode:
        raise SystemExit(f"{args[:2]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _gib(n: int) -> str:
    return f"{n / 1024**3:.2f}"


def _write(args: argparse.Namespace, data_gb: float, rows: list[tuple]) -> str:
    lines = [f"# Streamed sparsify, TinyLlama-shape decoder ({args.layers} layers, fp32, "
             f"external data {data_gb:.2f} GB)", "",
             f"Machine: {os.cpu_count()} cores, shared; each step its own process.", "",
             "| step | wall s | peak RSS GiB | notes |", "|---|---|---|---|"]
    lines += [f"| {a} | {b:.1f} | {_gib(c)} | {d} |" for a, b, c, d in rows]
    lines += ["", "Reproduce:", "", "```", "nice -n 5 .venv/bin/python tools/bench_llm_stream.py"
              f" --dir {args.dir} --layers {args.layers} --modes '{args.modes}' --out {args.out}",
              "```", ""]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(lines)
    Path(args.out).write_text(text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dir", default="/tmp/llm_bench")
    ap.add_argument("--layers", type=int, default=22)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--out", default="tools/results/llm/stream.md")
    args = ap.parse_args()
    import numpy as np

    work = Path(args.dir)
    work.mkdir(parents=True, exist_ok=True)
    src = work / "llama.onnx"
    rows = []
    if not src.exists():
        gen = _py(["-c", GEN, str(src), str(args.layers)])
        rows.append(("generate", gen["wall_s"], gen["peak_rss_bytes"],
                     f"{gen['params'] / 1e9:.3f} B params"))
    data_gb = (work / "llama.onnx.data").stat().st_size / 1e9
    dense = _py(["-c", RUN, str(src), str(work / "dense.npy")])
    rows.append(("ORT load+run dense", dense["load_s"] + dense["run_s"],
                 dense["peak_rss_bytes"], f"data {data_gb:.2f} GB, finite={dense['finite']}"))
    for mode in args.modes.split(","):
        tag = mode.replace(":", "_").replace("%", "pct").replace(" ", "_")
        out = work / f"out_{tag}.onnx"
        t = time.perf_counter()
        rep = _py(["-m", "compress_ir.stream", str(src), str(out), *MODES[mode],
                   "--layers-json", str(work / f"layers_{tag}.json")],
                  log=work / f"log_{tag}.txt")
        wall = time.perf_counter() - t
        if "blocks" in rep:
            note = (f"{rep['blocks']} blocks, block weight params {rep['params_after']:,} of "
                    f"{rep['params_before']:,} (counted from the written model), out "
                    f"{rep['bytes_written'] / 1e9:.2f} GB")
        else:
            note = (f"{rep['layers']} layers, sparsity {rep['sparsity']:.4f} (counted from "
                    f"written tensors), out {rep['bytes_written'] / 1e9:.2f} GB")
        rows.append((f"stream {mode}", round(wall, 1), rep["peak_rss_bytes"], note))
        check = _py(["-c", RUN, str(out), str(work / f"out_{tag}.npy")])
        change = float(np.abs(np.load(work / f"out_{tag}.npy") - np.load(work / "dense.npy")).max())
        rows.append((f"ORT load+run {mode}", check["load_s"] + check["run_s"],
                     check["peak_rss_bytes"],
                     f"finite={check['finite']}, max abs logit change vs dense {change:.3g}"))
        _write(args, data_gb, rows)  # a cut-off run keeps its finished modes
        out.unlink()
        (work / (out.name + ".data")).unlink()
    print(_write(args, data_gb, rows))


if __name__ == "__main__":
    main()
