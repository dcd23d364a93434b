"""`python -m compress_ir.stream SRC DST [--pattern 2:4] [--sparsity S]`: streamed sparsify.

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
from compress_ir.stream.engine import stream_sparsify


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m compress_ir.stream", description=__doc__)
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--pattern", default="2:4")
    ap.add_argument("--sparsity", type=float, default=None)
    ap.add_argument("--no-skip-first", action="store_true")
    ap.add_argument("--no-skip-last", action="store_true")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    try:
        report = stream_sparsify(args.src, args.dst, args.pattern, args.sparsity,
                                 not args.no_skip_first, not args.no_skip_last)
    except CompressIRError as exc:
        print(f"compress_ir.stream: {exc}", file=sys.stderr)
        return exc.exit_code
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"layers": len(report.layers), "skipped": report.skipped,
                      "sparsity": report.sparsity, "bytes_written": report.bytes_written,
                      "wall_s": round(time.perf_counter() - start, 2),
                      "peak_rss_bytes": peak}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
