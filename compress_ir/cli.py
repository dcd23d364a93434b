"""`compress-ir` command line: stable exit codes, a table on stdout, JSON on request.

Exit codes: 0 ok, 1 numeric check failed, 2 usage error, 3 unsupported/invalid model.
User errors print one line on stderr, never a traceback (`--debug` shows it).

Two commands: `compress-ir MODEL [--pass P] [--target T]` (compress, optionally
compile) and `compress-ir run ARTIFACT` (run a compiled artifact), told apart by
the first argument being `run`.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Callable

import compress_ir.passes  # noqa: F401 - registers the passes
from compress_ir import __version__
from compress_ir.core.errors import EXIT_OK, EXIT_USAGE, CompressIRError
from compress_ir.core.passes import PASSES, describe_options
from compress_ir.passes.analysis.importance import CRITERIA
from compress_ir.targets import list_targets


def targets_help() -> str:
    """Every registered target, from the registry."""
    lines = [f"  {name:12} {summary}" for name, summary in list_targets()]
    lines.append("  or a TVM target dict as JSON, e.g. "
                 "'{\"kind\": \"llvm\", \"mcpu\": \"skylake-avx512\"}'")
    return "\n".join(lines)


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


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


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
              compress-ir model.onnx --pass 'channel-prune{ratio=0.5}' -o small.onnx --target x86
              compress-ir run small.x86 --input x.npy --output y.npz
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
    parser.add_argument("--sizes", action=argparse.BooleanOptionalAction, default=None,
                        help="report dense/CSR/BSR/Deep-Compression bytes per layer (default: "
                        "when the pipeline sparsifies or shares weights)")
    parser.add_argument("--sparse-storage", action="store_true",
                        help="write sparse weights of -o as ONNX sparse_initializers")
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
    build = parser.add_argument_group(
        "compile with TVM (artifact dir default: <output or input stem>.<target>, ':' -> '-',"
        " next to the output or else the input)")
    build.add_argument("--target", metavar="T", help="arm | arm:rpi4 | x86 | cuda:sm_80 | ... "
                       "(--list-targets) or a TVM target dict as JSON")
    build.add_argument("--artifact", metavar="DIR", help="write the compiled artifact here")
    build.add_argument("--batch", type=_positive, default=1,
                       help="value of a dynamic batch dim in the compiled model (default 1)")
    build.add_argument("--tune-trials", type=int, default=0, metavar="N",
                       help="MetaSchedule trials per task (0: default schedules, no tuning)")
    build.add_argument("--tuning-db", metavar="DIR", help="tuning database reused across runs")
    build.add_argument("--sparse-kernels", type=float, nargs="?", const=0.7, default=None,
                       metavar="MIN_SPARSITY", help="use sparse TVM kernels for weights at "
                       "least this sparse (default 0.7)")
    build.add_argument("--benchmark", action="store_true",
                       help="time onnxruntime (original, compressed) and the artifact")
    build.add_argument("--repeat", type=_positive, default=20,
                       help="timed runs per benchmark entry (default 20)")
    build.add_argument("--rpc", metavar="HOST:PORT[:KEY]",
                       help="verify/benchmark on a TVM RPC server or a tracker's device KEY")
    build.add_argument("--list-targets", action="store_true", help="list targets and exit")
    parser.add_argument("--list-passes", action="store_true", help="list passes and exit")
    parser.add_argument("--quiet", action="store_true", help="no table on stdout")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--version", action="version", version=f"compress-ir {__version__}")
    return parser


def build_run_parser() -> argparse.ArgumentParser:
    from compress_ir.backend.run_cli import add_run_arguments

    parser = _Parser(prog="compress-ir run",
                     description="Run a compiled artifact (local TVM runtime or TVM RPC).",
                     epilog="exit codes: 0 ok, 2 usage (bad input name/shape/dtype), "
                            "3 unreadable artifact")
    add_run_arguments(parser)
    parser.add_argument("--quiet", action="store_true", help="no summary on stdout")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "run":
        args = build_run_parser().parse_args(argv[1:])
        from compress_ir.backend.run_cli import run_main

        return _guarded(args, lambda: run_main(args))
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_passes:
        print(passes_help())
        return EXIT_OK
    if args.list_targets:
        print(targets_help())
        return EXIT_OK
    if not args.model:
        parser.error("the input model is required")
    if not args.passes and not args.target:
        parser.error("give at least one --pass (or a --target to compile the model as is)")
    if not args.tolerance >= 0:  # also rejects nan
        parser.error(f"--tolerance must be >= 0, got {args.tolerance}")
    if args.sparse_storage and not args.output:
        parser.error("--sparse-storage needs -o")
    target_only = ("artifact", "tuning_db", "sparse_kernels", "rpc")
    for name in target_only + ("benchmark",):
        if getattr(args, name) and not args.target:
            parser.error(f"--{name.replace('_', '-')} needs --target")
    return _guarded(args, lambda: _compress_main(args))


def _compress_main(args: argparse.Namespace) -> int:
    from compress_ir.api import compress
    from compress_ir.core.calibration import ImageOptions
    from compress_ir.core.report import format_report, write_json_atomic

    image = ImageOptions(size=args.calib_size, mean=args.calib_mean, std=args.calib_std,
                         layout=args.calib_layout, channel_order=args.calib_color)
    build_options = None
    if args.target:
        from compress_ir.backend import BuildOptions

        build_options = BuildOptions(
            batch=args.batch, tune_trials=args.tune_trials, tuning_db=args.tuning_db,
            sparse_kernels=args.sparse_kernels, verify=not args.no_check,
            tolerance=args.tolerance, seed=args.seed, rpc=args.rpc)
    result = compress(args.model, args.passes, output=args.output,
                      check=not args.no_check, tolerance=args.tolerance, seed=args.seed,
                      calibration=args.calib, calib_samples=args.calib_samples,
                      image_options=image, target=args.target, artifact=args.artifact,
                      build_options=build_options, benchmark=args.benchmark,
                      benchmark_repeat=args.repeat, sizes=args.sizes,
                      sparse_storage=args.sparse_storage)
    if args.report:
        write_json_atomic(result.report, args.report)
    if not args.quiet:
        text = format_report(result.report)
        if "target" in result.report:
            from compress_ir.backend.report import format_target

            text = "\n".join([text, *format_target(result.report["target"])])
        print(text)
    return EXIT_OK


def _guarded(args: argparse.Namespace, fn: Callable[[], int]) -> int:
    """Run `fn`, turning user errors into one line on stderr and their exit code."""
    try:
        return fn()
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


if __name__ == "__main__":
    sys.exit(main())
