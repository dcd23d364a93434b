"""Run channel-prune over the model zoo and print one markdown table.

Why: a single view of how channel pruning fares on real-world topologies -- how
many channel groups each model has, how many are blocked and why, what MACs and
parameters remain, whether the pruned model reproduces its masked reference in
onnxruntime, and how long the pass takes. It is what goes into the docs and
pull-request descriptions when the analysis or the slicing changes.

The zoo is the nine ``onnx/backend/test/data/light/*.onnx`` models shipped with
the ``onnx`` package, the weight-stripped ``tests/fixtures/torchvision/*.onnx``
fixtures and the corpus of real exports ``tests/fixtures/real/*.onnx`` (issue 9:
dynamic axes, both torch exporters, transformers, timm, paddle2onnx-style); all
store weights as ``ConstantOfShape`` placeholders, which are filled with
``fill_placeholders(proto, seed)``. MACs of a real-corpus model are counted at its
stated input shape (``tests/fixtures/real/input_shapes.json``, passed to
``model_metrics`` as ``input_shapes``); other models at their own static shapes. Each model gets
``channel-prune{ratio=0.5}`` (uniform scope, l2 criterion) via the pass alone
(no pipeline verification), then the pruned model is compared with
``result.reference`` (the channel-masked original) by
``compress_ir.core.numeric.compare``. A model that fails is shown with its error
and the table goes on. ``--compile`` also builds each pruned model with
``--target x86`` and verifies it against onnxruntime (slow: TVM builds; a
real-corpus model with dynamic dims other than the batch gets its stated shape as
``input_shapes``). The blocking-reasons column gathers why groups were left whole
and why the prune, the check or the compile failed. Run from the repository root::

    python tools/zoo_table.py
    python tools/zoo_table.py --no-light --no-torchvision --compile   # real corpus + x86
    python tools/zoo_table.py --pipeline 'channel-prune{ratio=0.3}' --json /tmp/zoo.json
    python tools/zoo_table.py path/to/extra.onnx --no-light --no-torchvision
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
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
FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
TORCHVISION = FIXTURES / "torchvision"
REAL = FIXTURES / "real"
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
    error_stage: str | None = None  # load, prune or check: where `error` happened
    macs_shape: str | None = None  # the input shape MACs were counted at, when stated
    compile_ok: bool | None = None  # None: not compiled (no --compile, or the prune failed)
    compile_s: float | None = None
    compile_error: str | None = None


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
    if path.resolve().parent == REAL:
        return "real/" + path.stem
    return path.name


def stated_shapes(path: Path) -> dict[str, list[int]] | None:
    """The stated input shape of a real-corpus fixture (None for other models)."""
    table = REAL / "input_shapes.json"
    if path.resolve().parent != REAL or not table.exists():
        return None
    return json.loads(table.read_text()).get(path.stem)


def dynamic_non_batch(proto: onnx.ModelProto) -> bool:
    """Whether an input has a symbolic dim other than dim 0 (TVM needs it fixed)."""
    inits = {i.name for i in proto.graph.initializer}
    return any(d.dim_param or not d.HasField("dim_value")
               for vi in proto.graph.input if vi.name not in inits
               for d in vi.type.tensor_type.shape.dim[1:])


def compile_x86(row: Row, proto: onnx.ModelProto, shapes: dict[str, list[int]] | None,
                seed: int) -> None:
    """Build `proto` for x86 with TVM and verify it; the outcome goes into `row`."""
    from compress_ir.api import compress

    kwargs: dict = {}
    if shapes and dynamic_non_batch(proto):
        kwargs["input_shapes"] = {k: tuple(v) for k, v in shapes.items()}
    start = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            result = compress(proto, None, target="x86", artifact=Path(tmp) / "art",
                              check=True, seed=seed, **kwargs)
        verify = result.report["target"]["verify"]
        row.compile_ok = bool(verify.get("ran") and verify.get("ok"))
        if not row.compile_ok:
            row.compile_error = f"verify: {verify}"
    except Exception as exc:  # noqa: BLE001 - report, go on
        row.compile_ok = False
        row.compile_error = _one_line(exc)
    row.compile_s = time.perf_counter() - start


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def run_model(path: Path, pipeline: str, seed: int, compile_: bool = False) -> Row:
    """Fill, load, prune and check one model (and compile it); errors end up in the row."""
    row = Row(model=label(path))
    shapes = stated_shapes(path)
    if shapes:
        row.macs_shape = " ".join(f"{k}={','.join(map(str, v))}" for k, v in shapes.items())
    after = None
    stage = "load"
    try:
        proto = fill_placeholders(onnx.load(str(path)), seed)
        model = load_onnx(proto)
        before = model.to_proto()
        m = model_metrics(before, shapes)
        row.macs_before, row.params_before = m["macs"], m["params"]
        (prune,) = build_passes(pipeline)
        stage = "prune"
        start = time.perf_counter()
        result = prune.run(model, PassContext(seed=seed))
        row.pass_s = time.perf_counter() - start
        row.groups = int(result.stats["groups"])
        row.blocked = int(result.stats["groups_blocked"])
        row.reasons = dict(Counter(reason for g in result.details["groups"]  # per group
                                   for reason in {shorten(r) for r in g["blocked_by"]}))
        after = result.model.to_proto()
        m = model_metrics(after, shapes)
        row.macs_after, row.params_after = m["macs"], m["params"]
        if result.reference is not None:
            stage = "check"
            row.rel_error = numeric.compare(after, result.reference, seed=seed)
    except Exception as exc:  # noqa: BLE001 - CompressIRError or a bug: report, go on
        row.error, row.error_stage = _one_line(exc), stage
    if compile_ and row.error is None and after is not None:
        compile_x86(row, after, shapes, seed)
    return row


def prune_ok(r: Row) -> bool:
    """The pass ran, the check matched and something was removed."""
    return (r.error is None and r.rel_error is not None and r.rel_error <= TOLERANCE
            and r.macs_after is not None and r.macs_before is not None
            and r.macs_after < r.macs_before)


def _m(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.1f}M"


def _ratio(a: int | None, b: int | None) -> str:
    return "-" if a is None or not b else f"{a / b:.3f}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _yes(flag: bool | None) -> str:
    return "-" if flag is None else ("yes" if flag else "**no**")


def markdown(rows: list[Row], compiled: bool = False) -> str:
    """The table: one line per model; blocking reasons as `reason (×groups blocked by it)`,
    then why the prune, the check or the compile failed."""
    head = ["model", "prune ok", "groups", "blocked", "MACs before", "MACs after",
            "MACs ratio", "params ratio", "rel. error", "pass s"]
    align = ["---", ":-:", "--:", "--:", "--:", "--:", "--:", "--:", "--:", "--:"]
    if compiled:
        head += ["compile x86", "compile s"]
        align += [":-:", "--:"]
    head.append("blocking reasons")
    align.append("---")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    for r in rows:
        reasons = [f"{k} (×{v})" if v > 1 else k
                   for k, v in sorted(r.reasons.items(), key=lambda kv: (-kv[1], kv[0]))]
        if r.error is not None:
            reasons.insert(0, f"**{r.error_stage or 'prune'} failed:** {r.error}")
        if r.rel_error is None:
            err = "- (unchanged)" if r.error is None else "-"
        else:
            err = f"{r.rel_error:.1e}" + ("" if r.rel_error <= TOLERANCE else " **FAIL**")
            if r.rel_error > TOLERANCE:
                reasons.insert(0, f"**check failed:** rel. error {r.rel_error:.1e}")
        if r.error is None and r.macs_before is not None and r.macs_after == r.macs_before:
            reasons.insert(0, "**nothing pruned**")
        if r.compile_error is not None:
            reasons.append(f"**compile:** {r.compile_error}")
        cells = [r.model, _yes(prune_ok(r) if r.groups is not None or r.error else None),
                 "-" if r.groups is None else str(r.groups),
                 "-" if r.blocked is None else str(r.blocked),
                 _m(r.macs_before), _m(r.macs_after), _ratio(r.macs_after, r.macs_before),
                 _ratio(r.params_after, r.params_before), err,
                 "-" if r.pass_s is None else f"{r.pass_s:.2f}"]
        if compiled:
            cells += [_yes(r.compile_ok),
                      "-" if r.compile_s is None else f"{r.compile_s:.0f}"]
        cells.append(_cell("; ".join(reasons)) or "-")
        lines.append("| " + " | ".join(cells) + " |")
    shapes = [f"{r.model}: {r.macs_shape}" for r in rows if r.macs_shape]
    if shapes:
        lines += ["", "MACs counted at: " + "; ".join(shapes)]
    return "\n".join(lines)


def zoo_paths(light: bool, torchvision: bool, extra: list[Path], real: bool = True) -> list[Path]:
    paths: list[Path] = []
    if light:
        paths += sorted(LIGHT_ZOO.glob("*.onnx"))
    if torchvision:
        paths += sorted(TORCHVISION.glob("*.onnx"))
    if real:
        paths += sorted(REAL.glob("*.onnx"))
    return paths + extra


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="channel-prune over the onnx light zoo, torchvision fixtures and real exports")
    parser.add_argument("models", nargs="*", type=Path, help="extra ONNX models to include")
    parser.add_argument("--pipeline", default=DEFAULT_PIPELINE,
                        help=f"a single channel-prune pass (default {DEFAULT_PIPELINE!r})")
    parser.add_argument("--seed", type=int, default=0,
                        help="placeholder and check-input seed (default 0)")
    parser.add_argument("--no-light", action="store_true", help="skip the onnx light zoo")
    parser.add_argument("--no-torchvision", action="store_true",
                        help="skip tests/fixtures/torchvision")
    parser.add_argument("--no-real", action="store_true",
                        help="skip tests/fixtures/real (the corpus of real exports)")
    parser.add_argument("--compile", action="store_true",
                        help="also build each pruned model with --target x86 and verify it "
                             "(slow: one TVM build per model)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument("--quiet", action="store_true", help="no per-model progress on stderr")
    args = parser.parse_args(argv)
    if len(build_passes(args.pipeline)) != 1:
        parser.error("--pipeline must be a single pass")

    rows = []
    for path in zoo_paths(not args.no_light, not args.no_torchvision, args.models,
                          not args.no_real):
        row = run_model(path, args.pipeline, args.seed, args.compile)
        if not args.quiet:
            built = "" if row.compile_ok is None else (
                f", x86 {'ok' if row.compile_ok else 'failed'} ({row.compile_s:.0f} s)")
            print(f"{row.model}: {'failed' if row.error else 'ok'}"
                  f"{'' if row.pass_s is None else f' ({row.pass_s:.2f} s)'}{built}",
                  file=sys.stderr, flush=True)
        rows.append(row)
    print(f"pipeline `{args.pipeline}`, seed {args.seed}; rel. error = max relative error "
          f"vs the masked reference in onnxruntime (tolerance {TOLERANCE:.0e}); "
          "pass s = the pass alone; prune ok = no error, check within tolerance and fewer MACs; "
          "light = onnx light zoo, tv = torchvision fixtures, real = corpus of real exports"
          + ("; compile x86 = TVM build of the pruned model + verify vs onnxruntime"
             if args.compile else "") + "\n")
    print(markdown(rows, args.compile))
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    failed = [r for r in rows if r.error is not None or r.compile_ok is False
              or (r.rel_error is not None and r.rel_error > TOLERANCE)]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
