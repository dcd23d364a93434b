"""`compress-ir run ARTIFACT`: feed an artifact inputs, print or save its outputs, time it.

The `run` subcommand of the CLI (see cli.py); the runtime itself is in backend/.
"""

from __future__ import annotations

import argparse
import io
import sys
from typing import Any

import numpy as np

from compress_ir.backend.artifact import META_FILE, Artifact, artifact_inputs, load_artifact
from compress_ir.core import validate
from compress_ir.core.array_files import read_npy, read_npz
from compress_ir.core.errors import EXIT_OK, UsageError
from compress_ir.core.limits import DEFAULT_RPC_TIMEOUT, MAX_TENSOR_BYTES
from compress_ir.core.safety import Commit, Destination, OutputPlan


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("artifact", help="artifact directory written by --target")
    parser.add_argument("--input", action="append", default=[], metavar="[NAME=]FILE.npy",
                        help="an input array; without NAME= the inputs are filled in order "
                             "(repeatable)")
    parser.add_argument("--inputs", metavar="FILE.npz", help="all inputs, arrays by input name")
    parser.add_argument("--output", metavar="FILE.npz", help="write the outputs here")
    parser.add_argument("--rpc", metavar="HOST:PORT[:KEY]",
                        help="run on a TVM RPC server, or a tracker's device KEY")
    parser.add_argument("--repeat", type=int, default=0, metavar="N",
                        help="also time N runs (TVM time_evaluator) and print median/min ms")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the random inputs used when none are given")
    parser.add_argument("--rpc-timeout", type=float, default=DEFAULT_RPC_TIMEOUT, metavar="S",
                        help="seconds allowed for the RPC connection and each remote call "
                             f"(default {DEFAULT_RPC_TIMEOUT:g})")


def _load_array(path: str, what: str) -> np.ndarray:
    try:
        return read_npy(path, MAX_TENSOR_BYTES)
    except UsageError as exc:
        raise UsageError(f"{what}: {exc}") from None


def collect_inputs(art: Artifact, items: list[str], npz: str | None, seed: int
                   ) -> dict[str, np.ndarray]:
    """Inputs from --inputs and --input; seeded random ones when none are given."""
    names = [s.name for s in art.inputs]
    feeds: dict[str, np.ndarray] = {}
    if npz:
        try:
            feeds.update(read_npz(npz, MAX_TENSOR_BYTES))
        except UsageError as exc:
            raise UsageError(f"--inputs: {exc}") from None
    positional = [n for n in names if n not in feeds]
    for item in items:
        name, eq, path = item.partition("=")
        if eq and name in names:
            feeds[name] = _load_array(path, f"input {name!r}")
            continue
        free = [n for n in positional if n not in feeds]
        if not free:
            raise UsageError(f"--input {item}: every input already has a value "
                             f"(inputs: {', '.join(names)}); use NAME=FILE")
        feeds[free[0]] = _load_array(item, f"input {free[0]!r}")
    if not items and not npz:
        return artifact_inputs(art.inputs, seed)
    return feeds


def run_main(args: argparse.Namespace) -> int:
    from compress_ir.backend.runner import Session

    art = load_artifact(args.artifact)
    if args.repeat < 0:
        raise UsageError(f"--repeat must be >= 0, got {args.repeat}")
    validate.seed(args.seed, "--seed")
    validate.finite(args.rpc_timeout, "--rpc-timeout", above=0.0)
    dest = None
    if args.output:
        plan = OutputPlan()
        plan.add_input("artifact's meta.json", art.path / META_FILE)
        plan.add_input("artifact's library", art.library)
        for item in [*args.input, *([args.inputs] if args.inputs else [])]:
            plan.add_input("input", item.partition("=")[2] or item)
        dest = plan.add("--output", args.output)
    feeds = collect_inputs(art, args.input, args.inputs, args.seed)
    with Session(art, args.rpc, args.rpc_timeout) as session:
        return _run(args, art, session, feeds, dest)


def _run(args: argparse.Namespace, art: Artifact, session: Any, feeds: dict[str, np.ndarray],
         dest: Destination | None = None) -> int:
    outputs = session.run(feeds)
    if dest is not None:
        buf = io.BytesIO()
        np.savez(buf, **outputs)
        with Commit() as commit:
            commit.stage_file(dest, buf.getvalue())
            commit.commit()
    if not args.quiet and (dest is None or dest.mode != "stdout"):
        print(f"artifact {art.path} ({art.target}, {session.where})")
        for name, value in outputs.items():
            finite = value[np.isfinite(value)] if value.dtype.kind == "f" else value
            stats = (f" min {finite.min():.4g} max {finite.max():.4g} mean {finite.mean():.4g}"
                     if finite.size else "")
            print(f"  {name}: {list(value.shape)} {value.dtype}{stats}")
    if args.repeat:
        timing = session.time(feeds, args.repeat)
        print(f"  latency: median {timing['median_ms']:.3f} ms, min {timing['min_ms']:.3f} ms "
              f"over {args.repeat} runs ({timing['method']})",
              file=sys.stderr if dest is not None and dest.mode == "stdout" else sys.stdout)
    return EXIT_OK
