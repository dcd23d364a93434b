"""Does `distill` (a refit to the model output) recover what layer-wise refits leave?

Why: on MiniLM every layer-wise refit leaves 2:4 sparsity about 8 % and heads + FFN
pruning about 20 % below dense recall on the large evaluation (NOTES.md, stop 32). Per
base pipeline this runs the pipeline once, scores it, then runs `distill` on its result
(against the dense model, same calibration set) and scores that: both rows come from one
compressed model, so the paired interval `vs base` is distill's own effect.

Calibration: `--calib` windows of the benchmark's pool text plus `--calib-extra` windows
of scipy/scikit-learn/sympy docstrings (`transformer_data.extra_docstrings`: no text of
the evaluation). Distillation moves millions of weights and overfits 64 windows.

    python tools/distill_transformer.py 'sparsify{pattern=2:4}' --eval large \\
        --distill 'distill{epochs=8,lr=1e-4}' --calib-extra 512
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))

import transformer_data as td  # noqa: E402
from paired_stats import encode_hits, paired_change  # noqa: E402

from compress_ir.api import compress  # noqa: E402
from compress_ir.core.calibration import CalibrationSet  # noqa: E402
from compress_ir.core.model import Model  # noqa: E402
from compress_ir.core.passes import PassContext  # noqa: E402
from compress_ir.core.pipeline import build_passes  # noqa: E402


def calibration(tok, pool: list[td.Docstring], windows: int, extra: int  # noqa: ANN001
                ) -> CalibrationSet:
    arrays = td.calibration_windows(tok, pool, windows)
    source = f"python-docstrings:{windows}x{td.SEQ}"
    if extra:
        more = td.calibration_windows(tok, td.extra_docstrings(), extra)
        arrays = {k: np.concatenate([v, more[k]]) for k, v in arrays.items()}
        source += f" + scipy/sklearn/sympy-docstrings:{extra}x{td.SEQ}"
    return CalibrationSet(arrays, source)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="+", help="base pipelines (';'-separated passes)")
    parser.add_argument("--distill", default="distill{epochs=8,lr=1e-4}")
    parser.add_argument("--eval", choices=("test", "large"), default="large")
    parser.add_argument("--calib", type=int, default=64, help="pool windows")
    parser.add_argument("--calib-extra", type=int, default=512, help="extra-text windows")
    parser.add_argument("--out", type=Path, default=None, help="append JSON lines here")
    args = parser.parse_args(argv)
    pairs, pool = td.split(500)
    if args.eval == "large":
        pairs = td.large_pairs()
    tok = td.tokenizer()
    calib = calibration(tok, pool, args.calib, args.calib_extra)
    metric = td.Retrieval(pairs)
    with tempfile.TemporaryDirectory() as tmp:
        dense = onnx.load(td.export_onnx(Path(tmp) / "minilm.onnx"))
    dense_hits = metric.hits(dense)
    print(f"{len(pairs)} pairs, dense recall@1 {dense_hits.mean():.4f}; calibration "
          f"{calib.source}", flush=True)
    print("| pipeline | recall@1 | vs dense | vs base | distill held-out error | seconds |")
    print("|---|---:|---:|---:|---:|---:|")
    for spec in args.specs:
        t0 = time.perf_counter()
        base = compress(dense, spec.split(";"), calibration=calib).model
        base_s = time.perf_counter() - t0
        base_hits = metric.hits(base)
        t0 = time.perf_counter()
        step = build_passes(args.distill)[0]
        result = step.run(Model.from_proto(base),
                          PassContext(original=dense, calibration=calib, seed=0))
        out = result.model.to_proto()
        dist_s = time.perf_counter() - t0
        hits = metric.hits(out)
        st = result.stats
        print(f"| `{spec}` | {base_hits.mean():.4f} | {paired_change(dense_hits, base_hits).text()}"
              f" | | | {base_s:.0f} |")
        print(f"| + `{args.distill}` | {hits.mean():.4f} | "
              f"{paired_change(dense_hits, hits).text()} | "
              f"{paired_change(base_hits, hits).text()} | "
              f"{st['heldout_rel_error_before']:.3f} -> {st['heldout_rel_error_after']:.3f}"
              f" (epoch {st['best_epoch']}) | {dist_s:.0f} |", flush=True)
        if args.out:
            with args.out.open("a") as f:
                f.write(json.dumps({
                    "spec": spec, "distill": args.distill, "eval": args.eval,
                    "calibration": calib.source, "dense": float(dense_hits.mean()),
                    "base": float(base_hits.mean()), "distilled": float(hits.mean()),
                    "base_hits": encode_hits(base_hits), "hits": encode_hits(hits),
                    "dense_hits": encode_hits(dense_hits), "stats": st,
                    "epochs": result.details.get("epochs"),
                    "seconds": {"base": round(base_s), "distill": round(dist_s)}}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
