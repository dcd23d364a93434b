"""Time the OBS error math at MiniLM layer sizes: 3-index einsum vs `quad` (one matmul).

Why: `sparsify{criterion=obs}` evaluates `sum_o w_o^T H w_o` a few dozen times per layer
(held-out choice of `correct`, OBS-vs-magnitude check, output errors); numpy's einsum
without a contraction path does that in scalar C loops. Side by side in one run, medians.

    python tools/bench_obs_math.py --out tools/results/sparsify_speed/obs_math.md
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from compress_ir.passes.analysis.sparsegpt import obs_prune, quad
from compress_ir.passes.analysis.sparsity_masks import parse_pattern


def median_s(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    lines = ["| layer [out, K] | einsum s | quad s | ratio | same value | obs_prune 2:4 s |",
             "|---|---:|---:|---:|---|---:|"]
    for out, k in ((384, 384), (1536, 384), (384, 1536)):  # q/k/v/o, FFN up, FFN down
        x = rng.standard_normal((4096, k))
        h = 2.0 * x.T @ x / x.shape[0]
        w = rng.standard_normal((out, k))
        slow = median_s(lambda w=w, h=h: float(np.einsum("ok,kl,ol->", w, h, w)), args.repeat)
        fast = median_s(lambda w=w, h=h: quad(w, h), args.repeat)
        same = bool(np.isclose(float(np.einsum("ok,kl,ol->", w, h, w)), quad(w, h), rtol=1e-9))
        prune = median_s(lambda w=w, h=h: obs_prune(w, h, parse_pattern("2:4"), 0), 1)
        lines.append(f"| [{out}, {k}] | {slow:.4f} | {fast:.4f} | {slow / fast:.0f}x | {same} | "
                     f"{prune:.2f} |")
    text = "\n".join(lines) + "\n\nCommand: `python tools/bench_obs_math.py --out " \
        "tools/results/sparsify_speed/obs_math.md`\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
