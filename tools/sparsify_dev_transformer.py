"""Rank `sparsify` options on MiniLM with a *development* split, never the benchmark's pairs.

Why: choosing defaults on the 500 evaluation pairs of bench_transformer_accuracy.py would
tune on the test set. The 468 docstrings that benchmark leaves for calibration are split
here: the first ones (in the benchmark's order) are packed into calibration windows (the
benchmark's own calibration is the first 70 of them), the last `--dev` are summary -> body
dev pairs, disjoint from both. Per spec it prints dev recall@1, the mean cosine between the
sparse and dense embeddings of the dev texts (a smoother signal than recall on few pairs),
the output rel. error the pass reports, the measured weight sparsity and the seconds.
`vs_dense` is the relative change of dev recall with its paired 95 % interval.

    python tools/sparsify_dev_transformer.py 'sparsify{pattern=2:4,criterion=obs}' ...
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))

import transformer_data as td  # noqa: E402
from bench_transformer_accuracy import weight_sparsity  # noqa: E402
from paired_stats import paired_change  # noqa: E402

from compress_ir.api import compress  # noqa: E402
from compress_ir.core.calibration import CalibrationSet  # noqa: E402


def embeddings(metric: td.Retrieval, model: onnx.ModelProto) -> tuple[np.ndarray, np.ndarray]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    return metric.embed(sess, metric.queries), metric.embed(sess, metric.docs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="+", help="pipelines (comma-separated passes)")
    parser.add_argument("--calib", type=int, default=64, help="calibration windows")
    parser.add_argument("--calib-kind", choices=("windows", "texts", "mixed"), default="windows",
                        help="mixed: --calib windows and --texts single texts")
    parser.add_argument("--texts", type=int, default=256, help="texts of --calib-kind mixed")
    parser.add_argument("--dev", type=int, default=300, help="dev pairs (end of the rest)")
    parser.add_argument("--model", type=Path, default=Path("/tmp/minilm_dev.onnx"),
                        help="exported once, reused")
    parser.add_argument("--log", type=Path, default=None, help="append JSON lines here")
    parser.add_argument("--save", type=Path, default=None, help="write each output model "
                        "here as <index>.onnx (for later analysis)")
    args = parser.parse_args()
    _, rest = td.split(500)
    dev, pool = rest[-args.dev:], rest[:-args.dev]
    tok = td.tokenizer()
    if args.calib_kind == "texts":
        arrays = td.calibration_texts(tok, pool, args.calib)
    elif args.calib_kind == "mixed":
        arrays = td.calibration_mixed(tok, pool, args.calib, args.texts)
    else:
        arrays = td.calibration_windows(tok, pool, args.calib)
    texts = f"+{args.texts}" if args.calib_kind == "mixed" else ""
    calib = CalibrationSet(arrays, f"dev-{args.calib_kind}:{args.calib}{texts}")
    if not args.model.exists():
        td.export_onnx(args.model)
    model = onnx.load(args.model)
    metric = td.Retrieval(dev)
    dq, dd = embeddings(metric, model)

    def hits(q: np.ndarray, d: np.ndarray) -> np.ndarray:
        return np.argmax(q @ d.T, axis=1) == np.arange(len(q))

    dense_hits = hits(dq, dd)
    print(f"dense dev recall {dense_hits.mean():.4f} ({len(dev)} pairs)", flush=True)
    for index, spec in enumerate(args.specs):
        t0 = time.perf_counter()
        result = compress(model, spec.split(";"), calibration=calib)
        seconds = time.perf_counter() - t0
        if args.save:
            args.save.mkdir(parents=True, exist_ok=True)
            onnx.save(result.model, args.save / f"{index}.onnx")
        q, d = embeddings(metric, result.model)
        cos = float(np.mean(np.concatenate([(q * dq).sum(1), (d * dd).sum(1)])))
        stats = result.report["passes"][-1].get("stats", {})
        got = hits(q, d)
        row = {"spec": spec, "calib": calib.source, "dev_recall": round(float(got.mean()), 4),
               "vs_dense": paired_change(dense_hits, got).text(), "cos": round(cos, 5),
               "output_rel_error": stats.get("output_rel_error"),
               "sparsity": weight_sparsity(model, result.model), "seconds": round(seconds),
               "last_pass": {"name": result.report["passes"][-1].get("name"), "stats": stats}}
        print(json.dumps(row), flush=True)
        if args.log:
            with args.log.open("a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
