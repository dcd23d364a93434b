"""Run channel-prune over the model zoo and print one markdown table.

Why: a single view of how channel pruning fares on real-world topologies -- how
many channel groups each model has, how many are blocked and why, what MACs and
parameters remain, whether the pruned model reproduces its masked reference in
onnxruntime, and how long the pass takes. It is what goes into the docs and
pull-request descriptions when the analysis or the slicing changes.

The zoo is the nine ``onnx/backend/test/data/light/*.onnx`` models shipped with
the ``onnx`` package plus the weight-stripped ``tests/fixtures/torchvision/*.onnx``
fixtures; both store weights as ``ConstantOfShape`` placeholders, which are
filled with ``fill_placeholders(proto, seed)``. Each model gets
``channel-prune{ratio=0.5}`` (uniform scope, l2 criterion) via the pass alone
(no pipeline verification), then the pruned model is compared with
``result.reference`` (the channel-masked original) by
``compress_ir.core.numeric.compare``. A model that fails is shown with its error
and the table goes on. Run from the repository root::

    python tools/zoo_table.py
    python tools/zoo_table.py --pipeline 'channel-prune{ratio=0.3}' --json /tmp/zoo.json
    python tools/zoo_table.py path/to/extra.onnx --no-light --no-torchvision
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import onnx

import compress_ir.passes  # noqa: F401 - registers the passes
from compress_ir.core import numeric
from compress_ir.core.metrics import model_metrics
from compress_ir.core.passes import PassContext
from compress_ir.core.pipeline import build_passes
from compress_ir.frontends.onnx import load_onnx
from compress_ir.frontends.placeholders import fill_placeholders

DEFAULT_PIPELINE = "channel-prune{ratio=0.5,scope=uniform,criterion=l2}"
LIGHT_ZOO = Path(os.path.dirname(onnx.__file__)) / "backend" / "test" / "data" / "light"
TORCHVISION = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "torchvision"
TOLERANCE = 1e-4


@dataclass
class Row:
    """One model's figures (None where the run failed before that figure existed)."""

    model: str
    groups: int | None = None
    blocked: int | None = None
    reasons: dict[str, int] = field(default_factory=dict)
    macs_before: int | None = None
    macs_after: int | None = None
    params_before: int | None = None
    params_after: int | None = None
    rel_error: float | None = None
    pass_s: float | None = None
    error: str | None = None


def shorten(reason: str, width: int = 60) -> str:
    """Drop node and tensor names so equal causes in different layers read the same."""
    text = re.sub(r"\s*node '[^']*'", "", reason)
    text = re.sub(r"\s*'[^']*'", "", text).replace(" :", ":").strip()
    parts = text.split(": ")  # "LRN: LRN normalises ..." -> "LRN normalises ..."
    while len(parts) > 1 and parts[1].split(" ")[0] == parts[0]:
        parts.pop(0)
    text = ": ".join(parts)
    return text if len(text) <= width else text[: width - 1] + "…"


def label(path: Path) -> str:
    """`light/resnet50`, `tv/resnet50`, or the file name for other models."""
    if path.parent == LIGHT_ZOO:
        return "light/" + path.stem.removeprefix("light_")
    if path.resolve().parent == TORCHVISION:
        return "tv/" + path.stem
    return path.name


def run_model(path: Path, pipeline: str, seed: int) -> Row:
    """Fill, load, prune and check one model; errors end up in `Row.error`."""
    row = Row(model=label(path))
    try:
        proto = fill_placeholders(onnx.load(str(path)), seed)
        model = load_onnx(proto)
        before = model.to_proto()
        m = model_metrics(before)
        row.macs_before, row.params_before = m["macs"], m["params"]
        (prune,) = build_passes(pipeline)
        start = time.perf_counter()
        result = prune.run(model, PassContext(seed=seed))
        row.pass_s = time.perf_counter() - start
        row.groups = int(result.stats["groups"])
        row.blocked = int(result.stats["groups_blocked"])
        row.reasons = dict(Counter(reason for g in result.details["groups"]  # per group
                                   for reason in {shorten(r) for r in g["blocked_by"]}))
        after = result.model.to_proto()
        m = model_metrics(after)
        row.macs_after, row.params_after = m["macs"], m["params"]
        if result.reference is not None:
            row.rel_error = numeric.compare(after, result.reference, seed=seed)
    except Exception as exc:  # noqa: BLE001 - CompressIRError or a bug: report, go on
        row.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return row


def _m(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.1f}M"


def _ratio(a: int | None, b: int | None) -> str:
    return "-" if a is None or not b else f"{a / b:.3f}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown(rows: list[Row]) -> str:
    """The table: one line per model, blocking reasons as `reason (×groups blocked by it)`."""
    head = ("| model | groups | blocked | blocking reasons | MACs before | MACs after "
            "| MACs ratio | params ratio | rel. error | pass s |")
    lines = [head, "|" + "|".join(["---", "--:", "--:", "---", "--:", "--:", "--:", "--:",
                                   "--:", "--:"]) + "|"]
    for r in rows:
        if r.error is not None and r.groups is None:
            lines.append(f"| {r.model} | - | - | **failed:** {_cell(r.error)} "
                         "| - | - | - | - | - | - |")
            continue
        reasons = "; ".join(f"{k} (×{v})" if v > 1 else k
                            for k, v in sorted(r.reasons.items(), key=lambda kv: (-kv[1], kv[0])))
        if r.error is not None:
            reasons += f"; **failed:** {r.error}"
        if r.rel_error is None:
            err = "- (unchanged)" if r.error is None else "-"
        else:
            err = f"{r.rel_error:.1e}" + ("" if r.rel_error <= TOLERANCE else " **FAIL**")
        lines.append(
            f"| {r.model} | {r.groups} | {r.blocked} | {_cell(reasons) or '-'} "
            f"| {_m(r.macs_before)} | {_m(r.macs_after)} "
            f"| {_ratio(r.macs_after, r.macs_before)} "
            f"| {_ratio(r.params_after, r.params_before)} | {err} "
            f"| {'-' if r.pass_s is None else f'{r.pass_s:.2f}'} |")
    return "\n".join(lines)


def zoo_paths(light: bool, torchvision: bool, extra: list[Path]) -> list[Path]:
    paths: list[Path] = []
    if light:
        paths += sorted(LIGHT_ZOO.glob("*.onnx"))
    if torchvision:
        paths += sorted(TORCHVISION.glob("*.onnx"))
    return paths + extra


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="channel-prune over the onnx light zoo and torchvision fixtures")
    parser.add_argument("models", nargs="*", type=Path, help="extra ONNX models to include")
    parser.add_argument("--pipeline", default=DEFAULT_PIPELINE,
                        help=f"a single channel-prune pass (default {DEFAULT_PIPELINE!r})")
    parser.add_argument("--seed", type=int, default=0,
                        help="placeholder and check-input seed (default 0)")
    parser.add_argument("--no-light", action="store_true", help="skip the onnx light zoo")
    parser.add_argument("--no-torchvision", action="store_true",
                        help="skip tests/fixtures/torchvision")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument("--quiet", action="store_true", help="no per-model progress on stderr")
    args = parser.parse_args(argv)
    if len(build_passes(args.pipeline)) != 1:
        parser.error("--pipeline must be a single pass")

    rows = []
    for path in zoo_paths(not args.no_light, not args.no_torchvision, args.models):
        row = run_model(path, args.pipeline, args.seed)
        if not args.quiet:
            print(f"{row.model}: {'failed' if row.error else 'ok'}"
                  f"{'' if row.pass_s is None else f' ({row.pass_s:.2f} s)'}",
                  file=sys.stderr, flush=True)
        rows.append(row)
    print(f"pipeline `{args.pipeline}`, seed {args.seed}; rel. error = max relative error "
          f"vs the masked reference in onnxruntime (tolerance {TOLERANCE:.0e}); "
          "pass s = the pass alone; light = onnx light zoo, tv = torchvision fixtures\n")
    print(markdown(rows))
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    failed = [r for r in rows if r.error is not None
              or (r.rel_error is not None and r.rel_error > TOLERANCE)]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
