"""`compress-ir` command line: stable exit codes, a table on stdout, JSON on request.

Exit codes: 0 ok, 1 numeric check failed, 2 usage error, 3 unsupported/invalid model,
70 internal error (a bug), 130 interrupted. Every failure prints one line on stderr,
never a traceback (`--debug` adds it, with the same exit code); see core/boundary.py.

Argparse subcommands: `compress-ir [compress] MODEL [--pass P] [--target T]`
(compress, optionally compile; `compress` is implied when the first argument is not
a command), `compress-ir run ARTIFACT` (run a compiled artifact) and `compress-ir
report R1.json R2.json -o compare.html` (compare runs). Options of a
compress run may come from a recipe (`--config`, see recipe.py); flags override it.
Exit 4: a CI gate failed (see gates.py).
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Callable

import compress_ir.passes  # noqa: F401 - registers the passes
from compress_ir import __version__
from compress_ir.core import validate
from compress_ir.core.boundary import run_guarded
from compress_ir.core.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from compress_ir.core.limits import DEFAULT_RPC_TIMEOUT
from compress_ir.core.passes import PASSES, describe_options
from compress_ir.core.safety import means_stdout
from compress_ir.options import CompressOptions
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


def _compress_parser_settings() -> dict:
    return dict(
        prog="compress-ir",
        description="Compress an ONNX model with a pipeline of passes.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="passes:\n" + passes_help() + textwrap.dedent("""

            examples:
              compress-ir model.onnx --pass 'channel-prune{ratio=0.5}' -o small.onnx
              compress-ir model.onnx --pass 'channel-prune{ratio=0.3,scope=global}' --report r.json
              compress-ir model.onnx --pass 'channel-prune{ratio=0.5}' -o small.onnx --target x86
              compress-ir --config recipe.yaml --gate 'fidelity >= 0.98' --report r.html
              compress-ir run small.x86 --input x.npy --output y.npz   (compress-ir run --help)
              compress-ir report r25.json r50.json r75.json -o compare.html
            exit codes: 0 ok, 1 numeric check failed, 2 usage, 3 unsupported/invalid model,
            4 a gate failed, 70 internal error (please report), 130 interrupted"""),
    )


def build_parser() -> argparse.ArgumentParser:
    """The `compress` command's parser (also what `compress-ir --help` shows)."""
    parser = _Parser(**_compress_parser_settings())
    _add_compress_arguments(parser)
    return parser


def _add_compress_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", help="input ONNX file (never modified)")
    parser.add_argument("--pass", dest="passes", action="append", default=[],
                        metavar="PIPELINE", help="pass or comma list of passes (repeatable)")
    parser.add_argument("-o", "--output", help="write the compressed model here (atomically; "
                        "'-' for stdout)")
    parser.add_argument("--stream", choices=("auto", "on", "off"), default="auto",
                        help="stream weights from external data, one tensor in memory (auto: "
                        "when external data > 2 GiB; only magnitude sparsify; else exit 2)")
    parser.add_argument("--report", action="append", metavar="FILE",
                        help="write the report here: .json, .html (self-contained page), .md "
                        "(PR comment); '-' prints the JSON to stdout and nothing else "
                        "(repeatable; written also when the run fails)")
    parser.add_argument("--plan", metavar="FILE",
                        help="write the pruning plan (JSON: groups, module paths, kept/removed "
                        "indices, scores) here; needs channel-prune")
    parser.add_argument("--repro", metavar="FILE",
                        help="when a numeric check fails, write a reproducer here: the failing "
                        "pass's input cut to the outputs that differ (ONNX, the pass in its "
                        "metadata)")
    parser.add_argument("--input-shape", action="append", metavar="NAME=D0,D1,...",
                        help="fix an input's shape, e.g. x=1,3,640,640 (repeatable): symbolic "
                        "dims for the check, MACs, --calib random and --target; dims shared "
                        "by name (batch, sequence) follow. Default: the calibration data's "
                        "shapes, else batch 1, sequence 128, spatial 224 (the report says "
                        "which were assumed)")
    parser.add_argument("--no-check", action="store_true",
                        help="skip the onnxruntime comparison against each pass's reference")
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="max error of the numeric check (default 1e-4): max |got-want| / "
                        "(|want| + max(std(want), 0.01)), i.e. allclose with rtol=atol/spread")
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
    build.add_argument("--tune-budget", type=float, default=0.0, metavar="SECONDS",
                       help="tune for about this many seconds, the ops with the most run "
                            "time first; the faster of tuned and default build is kept")
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
    build.add_argument("--rpc-timeout", type=float, default=DEFAULT_RPC_TIMEOUT, metavar="S",
                       help="seconds allowed for the RPC connection and each remote call "
                            f"(default {DEFAULT_RPC_TIMEOUT:g})")
    build.add_argument("--list-targets", action="store_true", help="list targets and exit")
    recipe = parser.add_argument_group("recipes and CI gates")
    recipe.add_argument("--config", metavar="RECIPE", help="read options from a YAML/JSON "
                        "recipe (schema: compress_ir/recipe.schema.json); flags override it")
    recipe.add_argument("--print-config", action="store_true",
                        help="print this call as a YAML recipe and exit")
    recipe.add_argument("--gate", action="append", metavar="EXPR",
                        help="fail with exit 4 unless EXPR holds, e.g. 'macs <= 0.6', "
                        "'fidelity >= 0.98', 'latency <= 0.8', 'accuracy >= 0.97' (repeatable)")
    recipe.add_argument("--require-verified", action="store_true",
                        help="fail with exit 4 when the --target build was not verified")
    recipe.add_argument("--eval", metavar="MODULE:FUNCTION",
                        help="call FUNCTION(output model path) -> {metric: number}; "
                        "the metrics go to the report and feed --gate")
    parser.add_argument("--list-passes", action="store_true", help="list passes and exit")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="no table on stdout, no progress, errors only on stderr")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log more on stderr (-v info, -vv debug)")
    parser.add_argument("--log-file", metavar="FILE",
                        help="append a DEBUG log (TVM and onnxruntime included) to FILE")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--version", action="version", version=f"compress-ir {__version__}")


def _add_run_command_arguments(parser: argparse.ArgumentParser) -> None:
    from compress_ir.cli_run import add_run_arguments

    add_run_arguments(parser)
    parser.add_argument("-q", "--quiet", action="store_true", help="no summary on stdout")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def _report_main(args: argparse.Namespace) -> int:
    from compress_ir.report_compare import write_comparison

    write_comparison(args.reports, args.output)
    return EXIT_OK


COMMANDS = ("compress", "run", "report")


def build_root_parser() -> argparse.ArgumentParser:
    """`compress-ir {compress,run,report} ...` as argparse subcommands."""
    root = _Parser(prog="compress-ir", description="A model compression compiler.")
    sub = root.add_subparsers(dest="command", required=True, parser_class=_Parser)
    compress = sub.add_parser("compress", help="compress (and compile) a model (default)",
                              **_compress_parser_settings())
    _add_compress_arguments(compress)
    run = sub.add_parser("run", prog="compress-ir run",
                         help="run a compiled artifact",
                         description="Run a compiled artifact (local TVM runtime or TVM RPC).",
                         epilog="exit codes: 0 ok, 2 usage (bad input name/shape/dtype), "
                                "3 unreadable artifact")
    _add_run_command_arguments(run)
    report = sub.add_parser("report", prog="compress-ir report",
                            help="compare the JSON reports of several runs",
                            description="Compare runs: a table and fidelity (and --eval "
                            "metrics) vs MACs kept, as one HTML page or Markdown.")
    report.add_argument("reports", nargs="+", metavar="REPORT.json")
    report.add_argument("-o", "--output", required=True, metavar="FILE.html|FILE.md")
    report.add_argument("--debug", action="store_true", help="show tracebacks")
    return root


def build_run_parser() -> argparse.ArgumentParser:
    """The `run` subcommand's parser."""
    root = build_root_parser()
    action = next(a for a in root._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices["run"]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in COMMANDS:
        argv = ["compress", *argv]  # `compress-ir MODEL ...` is the compress command
    args = build_root_parser().parse_args(argv)
    if args.command == "run":
        from compress_ir.cli_run import run_main

        return _guarded(args, lambda: run_main(args))
    if args.command == "report":
        return _guarded(args, lambda: _report_main(args))
    parser = build_parser()
    if args.list_passes:
        print(passes_help())
        return EXIT_OK
    if args.list_targets:
        print(targets_help())
        return EXIT_OK
    return _guarded(args, lambda: _compress_command(parser, args, argv[1:]))


def _compress_command(parser: argparse.ArgumentParser, args: argparse.Namespace,
                      argv: list[str]) -> int:
    """Resolve the options (recipe + flags), check them, set up logging, run."""
    from compress_ir.cli_options import options_from_cli
    from compress_ir.logs import setup_logging

    options = options_from_cli(build_parser, args, argv)
    if args.print_config:
        from compress_ir.recipe import dump_recipe

        sys.stdout.write(dump_recipe(options))
        return EXIT_OK
    if not options.model:
        parser.error("the input model is required")
    if not options.passes and not options.target:
        parser.error("give at least one --pass (or a --target to compile the model as is)")
    if not options.tolerance >= 0:  # also rejects nan
        parser.error(f"--tolerance must be >= 0, got {options.tolerance}")
    if options.sparse_storage and not options.output:
        parser.error("--sparse-storage needs -o")
    target_only = ("artifact", "tuning_db", "sparse_kernels", "rpc")
    if options.output and means_stdout(options.output) and any(
            means_stdout(str(r)) for r in options.report):
        parser.error("-o and --report cannot both go to standard output")
    if options.rpc:
        from compress_ir.backend import parse_rpc

        parse_rpc(options.rpc)  # a bad address fails now, not after the work
    validate.finite(options.rpc_timeout, "--rpc-timeout", above=0.0)
    for name in target_only + ("benchmark",):
        if getattr(options, name) and not options.target:
            parser.error(f"--{name.replace('_', '-')} needs --target")
    setup_logging(-1 if args.quiet else min(args.verbose, 2), options.log_file)
    from compress_ir.stream.api import describe, run_streamed, should_stream

    if options.passes and should_stream(args.stream, options.model):
        report = run_streamed(options)
        if not args.quiet:
            print(describe(report, options.output))
        return EXIT_OK
    return _compress_main(args, options)


def _compress_main(args: argparse.Namespace, options: CompressOptions) -> int:
    from compress_ir.api import run
    from compress_ir.gates import GateFailedError

    try:
        result = run(None, options)
    except GateFailedError as exc:  # the run itself completed: show it, then fail
        _print_table(args, options, exc.result.report)
        raise
    _print_table(args, options, result.report)
    return EXIT_OK


def _print_table(args: argparse.Namespace, options: CompressOptions, report: dict) -> None:
    from compress_ir.core.report import format_report

    # `--report -` or `-o -`: stdout holds that output only
    if args.quiet or any(means_stdout(str(r)) for r in options.report) or (
            options.output is not None and means_stdout(options.output)):
        return
    text = format_report(report)
    if "target" in report:
        from compress_ir.backend.report import format_target

        text = "\n".join([text, *format_target(report["target"])])
    print(text)


def _guarded(args: argparse.Namespace, fn: Callable[[], int]) -> int:
    """Run `fn` inside the error boundary: one stderr line and a documented exit code."""
    return run_guarded(fn, debug=bool(getattr(args, "debug", False)))


def entry() -> None:
    """The `compress-ir` executable: `main()`, then exit with its code, whatever arrives late.

    `main()` restores the signal handlers it found, so a Ctrl-C/SIGTERM landing after
    the run (during interpreter teardown, or one that TVM held back) would otherwise kill
    the process by signal and hide the exit code that the run already decided.
    """
    import signal

    try:
        code = main()
    except KeyboardInterrupt:  # arrived between the guarded run and here
        print("compress-ir: error: interrupted", file=sys.stderr)
        code = EXIT_INTERRUPTED
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    sys.exit(code)


if __name__ == "__main__":
    entry()
