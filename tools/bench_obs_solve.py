"""Time one SparseGPT/OBS solve (`obs_prune`, 2:4) per TinyLlama layer shape.

Random weights, Hessian from 512 random calibration rows. Prints per-shape seconds
and the implied solve time of one decoder layer (2x k/v, 2x q/o, 2x gate/up, 1x down)
and of 22 layers. Solve only: the calibration forward passes are not included.

    OPENBLAS_NUM_THREADS=1 nice -n 5 .venv/bin/python tools/bench_obs_solve.py [--float32]

(obs_prune_s excludes the factorisation, timed separately as inverse_cholesky_s.)
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

from compress_ir.passes.analysis.sparsegpt import inverse_cholesky, obs_prune
from compress_ir.passes.analysis.sparsity_masks import parse_pattern

SHAPES = [("k/v", 256, 2048, 2), ("q/o", 2048, 2048, 2), ("gate/up", 5632, 2048, 2),
          ("down", 2048, 5632, 1)]


DTYPE = np.float32 if "--float32" in sys.argv else np.float64


def main() -> None:
    rng = np.random.default_rng(0)
    per_layer = 0.0
    for name, out, k, per in SHAPES:
        x = rng.standard_normal((512, k)).astype(np.float32)
        h = 2.0 * (x.T.astype(np.float64) @ x) / 512
        w = rng.standard_normal((out, k)) * 0.02
        t = time.perf_counter()
        u = inverse_cholesky(h, 0.01)
        tinv = time.perf_counter() - t
        t = time.perf_counter()
        new, _ = obs_prune(w, h, parse_pattern("2:4"), 0, inv_chol=u, dtype=DTYPE)
        tt = time.perf_counter() - t
        per_layer += per * tt
        print(json.dumps({"shape": name, "out": out, "k": k, "obs_prune_s": round(tt, 1),
                          "inverse_cholesky_s": round(tinv, 1),
                          "zeros": float((new == 0).mean())}), flush=True)
    print(json.dumps({"per_decoder_layer_s": round(per_layer, 1),
                      "22_layers_s": round(22 * per_layer)}))


if __name__ == "__main__":
    main()
