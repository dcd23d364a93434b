"""`python -m compress_ir.stream SRC DST [--pattern 2:4] [--sparsity S] [--criterion obs
--calib random:N]`: streamed sparsify (magnitude tensor by tensor; obs block by block).

Prints a JSON summary (sparsity counted from the written tensors, wall time, peak RSS of
this process); usage errors exit 2, unreadable models 3 (compress_ir.core.errors).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

from compress_ir.core.errors import CompressIRError
from compress_ir.stream.engine import StreamReport, stream_sparsify


def _obs(args: argparse.Namespace) -> StreamReport:
    from compress_ir.core.calibration import load_calibration
    from compress_ir.passes.transform.sparsify import SparsifyOptions
    from compress_ir.stream.external import load_graph
    from compress_ir.stream.sequential import stream_obs

    opts = SparsifyOptions(criterion="obs", solver="obs", pattern=args.pattern,
                           sparsity=args.sparsity,
                           skip_first=not args.no_skip_first, skip_last=not args.no_skip_last,
                           correct=not args.no_correct, samples=args.samples)
    calib = load_calibration(args.calib or "random:128", load_graph(args.src), seed=args.seed)

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    import numpy as np

    return stream_obs(args.src, args.dst, calib, opts, seed=args.seed, log=log,
                      solve_dtype=np.dtype(args.solve_dtype).type)


def _prune(args: argparse.Namespace, start: float) -> int:
    from compress_ir.stream.blockwise import stream_blockwise

    calib = None
    if args.calib is not None:
        from compress_ir.core.calibration import load_calibration
        from compress_ir.stream.external import load_graph

        calib = load_calibration(args.calib, load_graph(args.src), seed=args.seed)

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    report = stream_blockwise(args.src, args.dst, args.prune, calib, seed=args.seed, log=log)
    if args.layers_json:
        with open(args.layers_json, "w") as f:
            json.dump({"blocks": report.blocks}, f, indent=1)
    print(json.dumps({"blocks": len(report.blocks), "params_before": report.params_before,
                      "params_after": report.params_after,
                      "bytes_written": report.bytes_written,
                      "wall_s": round(time.perf_counter() - start, 2),
                      "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                      * 1024}))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m compress_ir.stream", description=__doc__)
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--pattern", default="2:4")
    ap.add_argument("--sparsity", type=float, default=None)
    ap.add_argument("--criterion", choices=("magnitude", "obs"), default="magnitude")
    ap.add_argument("--calib", default=None,
                    help="calibration data (--calib); obs default random:128")
    ap.add_argument("--samples", type=int, default=8192, help="obs: rows per layer at most")
    ap.add_argument("--no-correct", action="store_true", help="obs: plain SparseGPT, no refit")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--solve-dtype", choices=("float64", "float32"), default="float64",
                    help="obs: precision of the plain OBS sweeps")
    ap.add_argument("--no-skip-first", action="store_true")
    ap.add_argument("--no-skip-last", action="store_true")
    ap.add_argument("--layers-json", default=None, help="write the per-layer report here")
    ap.add_argument("--prune", default=None, metavar="PASSES",
                    help="block-wise structured pruning instead of sparsify, e.g. "
                         "'channel-prune{ratio=0.5}' (--calib used only if given explicitly)")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    try:
        if args.prune:
            return _prune(args, start)
        if args.criterion == "obs":
            report = _obs(args)
        else:
            report = stream_sparsify(args.src, args.dst, args.pattern, args.sparsity,
                                     not args.no_skip_first, not args.no_skip_last)
    except CompressIRError as exc:
        print(f"compress_ir.stream: {exc}", file=sys.stderr)
        return exc.exit_code
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if args.layers_json:
        with open(args.layers_json, "w") as f:
            json.dump({"layers": report.layers, "skipped": report.skipped}, f, indent=1)
    print(json.dumps({"layers": len(report.layers), "skipped": report.skipped,
                      "sparsity": report.sparsity, "bytes_written": report.bytes_written,
                      "wall_s": round(time.perf_counter() - start, 2),
                      "peak_rss_bytes": peak}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
