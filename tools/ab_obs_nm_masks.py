"""A/B on the MNIST CNNs: OBS 2:4 with the N:M mask per chunk (before) vs per group (after).

Why: commit 1cc1e25 chooses each N:M group's mask when the SparseGPT sweep reaches it (from
the weights updated by the earlier columns) instead of once per 128-column chunk from the
chunk's starting weights. This runs both on the same models, calibration and options
(the "before" sweep is the old code, kept here verbatim) and prints test accuracy and the
output error the pass reports.

    python tools/ab_obs_nm_masks.py > tools/results/sparsity_accuracy/nm_per_group.md
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_sparsity_accuracy import MODELS, accuracy  # noqa: E402
from mnist_data import load_mnist  # noqa: E402

import compress_ir.passes.analysis.sparsegpt as sg  # noqa: E402
from compress_ir.api import compress  # noqa: E402
from compress_ir.core.calibration import CalibrationSet  # noqa: E402

SPECS = ("sparsify{pattern=2:4,criterion=obs,correct=false}",
         "sparsify{pattern=2:4,criterion=obs}")


def chunk_mask_sweep(w: np.ndarray, u: np.ndarray, pattern: sg.Pattern,
                     bounds: list[tuple[int, int]], counts: list[int],
                     fixed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The sweep before 1cc1e25: every mask chosen once per chunk."""
    w = w.copy()
    keep = np.ones(w.shape, dtype=bool)
    for (i1, i2), n_prune in zip(bounds, counts, strict=True):
        w1 = w[:, i1:i2].copy()
        u1 = u[i1:i2, i1:i2]
        mask1 = (fixed[:, i1:i2] if fixed is not None
                 else sg._chunk_mask(w1, np.diag(u1), pattern, n_prune))
        err1 = np.zeros_like(w1)
        for i in range(i2 - i1):
            col = w1[:, i]
            q = np.where(mask1[:, i], col, 0.0)
            err = (col - q) / u1[i, i]
            w1[:, i:] -= np.outer(err, u1[i, i:])
            w1[:, i] = q
            err1[:, i] = err
        w[:, i1:i2] = w1
        w[:, i2:] -= err1 @ u[i1:i2, i2:]
        keep[:, i1:i2] = mask1
    w[~keep] = 0.0
    return w, keep


def main() -> None:
    images, labels = load_mnist("test")
    train, _ = load_mnist("train")
    rng = np.random.default_rng(0)
    calib = CalibrationSet({"input": train[rng.choice(len(train), 512, replace=False)]},
                           "mnist-train")
    sweeps = (("per chunk (before)", chunk_mask_sweep), ("per group (after)", sg._obs_sweep))
    print("| model | options | mask choice | test accuracy | output rel. error | seconds |")
    print("|---|---|---|---:|---:|---:|")
    for name in MODELS:
        model = onnx.load(Path(__file__).parent / "models" / f"{name}.onnx")
        for spec in SPECS:
            for label, sweep in sweeps:
                sg._obs_sweep = sweep
                t0 = time.perf_counter()
                result = compress(model, spec, calibration=calib)
                err = result.report["passes"][0]["stats"]["output_rel_error"]
                print(f"| {name} | `{spec}` | {label} | "
                      f"{accuracy(result.model, images, labels):.4f} | {err:.4f} | "
                      f"{time.perf_counter() - t0:.0f} |", flush=True)
        sg._obs_sweep = sweeps[1][1]


if __name__ == "__main__":
    main()
