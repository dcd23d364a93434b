"""`compress-ir` command line: stable exit codes, a table on stdout, JSON on request.

Exit codes: 0 ok, 1 numeric check failed, 2 usage error, 3 unsupported/invalid model.
User errors print one line on stderr, never a traceback (`--debug` shows it).
"""

from __future__ import annotations

import argparse
import sys
import textwrap

import compress_ir.passes  # noqa: F401 - registers the passes
from compress_ir import __version__
from compress_ir.core.errors import EXIT_OK, EXIT_USAGE, CompressIRError
from compress_ir.core.passes import PASSES, describe_options
from compress_ir.passes.analysis.importance import CRITERIA


def passes_help() -> str:
    """Every registered pass with its options, generated from the registry."""
    lines = []
    for name in PASSES.names():
        cls = PASSES.get(name)
        lines.append(f"  {name}: {cls.summary}")
        for opt, default, help_ in describe_options(cls):
            lines.append(f"      {opt}={default}  {help_}")
    lines.append(f"  criteria: {', '.join(CRITERIA.names())}")
    return "\n".join(lines)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        self.exit(EXIT_USAGE, f"compress-ir: error: {message}\n")


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None


def _pair(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW, got {text!r}") from None
    return h, w


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="compress-ir",
        description="Compress an ONNX model with a pipeline of passes.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="passes:\n" + passes_help() + textwrap.dedent("""

            examples:
              compress-ir model.onnx --pass 'channel-prune{ratio=0.5}' -o small.onnx
              compress-ir model.onnx --pass 'channel-prune{ratio=0.3,scope=global}' --report r.json
            exit codes: 0 ok, 1 numeric check failed, 2 usage, 3 unsupported/invalid model"""),
    )
    parser.add_argument("model", nargs="?", help="input ONNX file (never modified)")
    parser.add_argument("--pass", dest="passes", action="append", default=[],
                        metavar="PIPELINE", help="pass or comma list of passes (repeatable)")
    parser.add_argument("-o", "--output", help="write the compressed model here (atomically)")
    parser.add_argument("--report", help="write the JSON report here")
    parser.add_argument("--no-check", action="store_true",
                        help="skip the onnxruntime comparison against each pass's reference")
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="max relative error of the numeric check (default 1e-4)")
    parser.add_argument("--seed", type=int, default=0, help="seed for random check inputs")
    calib = parser.add_argument_group("calibration (for data-driven criteria and reconstruct)")
    calib.add_argument("--calib", metavar="SPEC",
                       help="random[:N] | x.npy | x.npz (arrays by input name) | image folder")
    calib.add_argument("--calib-samples", type=int, help="use at most this many samples")
    calib.add_argument("--calib-size", type=_pair, help="image folder: HxW to resize to")
    calib.add_argument("--calib-mean", type=_floats, default=(0.0,), help="image mean, e.g. "
                       "0.485,0.456,0.406 (after scaling to [0,1])")
    calib.add_argument("--calib-std", type=_floats, default=(1.0,), help="image std")
    calib.add_argument("--calib-layout", choices=["NCHW", "NHWC"], default="NCHW")
    calib.add_argument("--calib-color", choices=["RGB", "BGR", "L"], default="RGB")
    parser.add_argument("--list-passes", action="store_true", help="list passes and exit")
    parser.add_argument("--quiet", action="store_true", help="no table on stdout")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--version", action="version", version=f"compress-ir {__version__}")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_passes:
        print(passes_help())
        return EXIT_OK
    if not args.model:
        parser.error("the input model is required")
    if not args.passes:
        parser.error("give at least one --pass")
    if not args.tolerance >= 0:  # also rejects nan
        parser.error(f"--tolerance must be >= 0, got {args.tolerance}")
    from compress_ir.api import compress
    from compress_ir.core.calibration import ImageOptions
    from compress_ir.core.report import format_report, write_json_atomic

    try:
        image = ImageOptions(size=args.calib_size, mean=args.calib_mean, std=args.calib_std,
                             layout=args.calib_layout, channel_order=args.calib_color)
        result = compress(args.model, args.passes, output=args.output,
                          check=not args.no_check, tolerance=args.tolerance, seed=args.seed,
                          calibration=args.calib, calib_samples=args.calib_samples,
                          image_options=image)
        if args.report:
            write_json_atomic(result.report, args.report)
    except CompressIRError as exc:
        if args.debug:
            raise
        print(f"compress-ir: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # -o / --report not writable: the user's path, not a bug
        if args.debug:
            raise
        print(f"compress-ir: error: cannot write {exc.filename or ''}: {exc.strerror or exc}",
              file=sys.stderr)
        return EXIT_USAGE
    if not args.quiet:
        print(format_report(result.report))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
