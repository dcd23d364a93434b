"""Pipelines as text: `channel-prune{ratio=0.5,criterion=l2},fold-bn`.

The text parses into pass instances and prints back (defaults omitted), so the
report can record exactly what ran. The runner verifies the model after every
transform and names the failing pass and the passes that ran before it.
"""

from __future__ import annotations

import re
import resource
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from compress_ir.core.boundary import is_onnxruntime_error
from compress_ir.core.errors import (
    EXIT_INTERNAL,
    CompressIRError,
    NumericMismatchError,
    PassError,
    UsageError,
)
from compress_ir.core.model import Model
from compress_ir.core.passes import PASSES, Pass, PassContext, PassResult, make_options

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")


def _split_top(text: str, sep: str = ",") -> list[str]:
    """Split on `sep` outside braces and brackets."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth < 0:
                raise UsageError(f"pipeline {text!r}: unbalanced {ch!r} at column {i + 1}")
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth != 0:
        raise UsageError(f"pipeline {text!r}: unclosed brace or bracket")
    parts.append(text[start:])
    return parts


def _parse_value(raw: str) -> Any:
    raw = raw.strip()
    if raw.startswith("[") and raw.endswith("]"):
        inner = raw[1:-1].strip()
        return [v.strip() for v in _split_top(inner)] if inner else []
    return raw


def parse_pipeline(text: str) -> list[tuple[str, dict[str, Any]]]:
    """Parse pipeline text into (pass name, raw options) pairs."""
    specs = []
    for part in _split_top(text.strip()):
        part = part.strip()
        if not part:
            raise UsageError(f"pipeline {text!r}: empty pass name")
        match = _NAME.match(part)
        if not match:
            raise UsageError(f"pipeline {text!r}: bad pass name in {part!r}")
        name, rest = match.group(0), part[match.end() :].strip()
        options: dict[str, Any] = {}
        if rest:
            if not (rest.startswith("{") and rest.endswith("}")):
                raise UsageError(f"pass {name!r}: options must be written {{key=value,...}}")
            body = rest[1:-1].strip()
            for item in _split_top(body) if body else []:
                key, eq, value = item.partition("=")
                if not eq or not key.strip():
                    raise UsageError(f"pass {name!r}: option {item.strip()!r} is not key=value")
                options[key.strip()] = _parse_value(value)
        specs.append((name, options))
    return specs


def build_passes(text: str | list[str]) -> list[Pass]:
    """Instantiate the passes of one or more pipeline strings."""
    texts = [text] if isinstance(text, str) else list(text)
    passes = []
    for chunk in texts:
        for name, options in parse_pipeline(chunk):
            cls = PASSES.get(name)
            passes.append(cls(make_options(cls, options)))
    return passes


def format_pipeline(passes: list[Pass]) -> str:
    return ",".join(p.spec() for p in passes)


@dataclass
class PipelineResult:
    model: Model
    results: list[tuple[Pass, PassResult]] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)
    # per pass: wall seconds, the process's peak RSS after it (and how much the pass
    # raised it); the tracemalloc peak too when tracing is on (`python -X tracemalloc`),
    # not by default: it doubles channel-prune's time on ResNet-50
    profile: list[dict[str, Any]] = field(default_factory=list)


def _peak_rss_mb() -> float:
    """The process's peak resident set so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1 << 20 if sys.platform == "darwin" else 1 << 10), 1)


Verifier = Callable[[Model], None]
NumericCheck = Callable[[Pass, PassResult], dict[str, Any]]
OnMismatch = Callable[[Pass, Model, dict[str, Any]], None]


def _fingerprint(model: Model) -> tuple:
    """What a functional pass must leave as it was: nodes (op, attributes, which tensor
    objects they read and write), tensors (names, shapes, dtypes, which array a constant
    holds) and the graph's inputs and outputs. Weight *contents* are guarded by making
    the arrays read-only while the pass runs (`_read_only`), which costs nothing."""
    graph = model.graph
    tensors = tuple(
        (id(t), t.name, id(t.values), t.values.shape, str(t.values.dtype))
        if isinstance(t, gs.Constant) else (id(t), t.name, str(t.dtype), repr(t.shape))
        for t in graph.tensors().values())
    nodes = tuple((id(n), n.name, n.op, n.domain, repr(sorted(n.attrs.items())),
                   tuple(map(id, n.inputs)), tuple(map(id, n.outputs))) for n in graph.nodes)
    return (nodes, tensors, tuple(map(id, graph.inputs)), tuple(map(id, graph.outputs)),
            dict(model.opset_imports), dict(model.metadata), model.ir_version)


@contextmanager
def _read_only(model: Model) -> Iterator[None]:
    """Make every weight array of `model` read-only for the duration (then restore)."""
    flipped = []
    for t in model.graph.tensors().values():
        if isinstance(t, gs.Constant):
            values = t.values
            if isinstance(values, np.ndarray) and values.flags.writeable:
                values.flags.writeable = False
                flipped.append(values)
    try:
        yield
    finally:
        for values in flipped:
            values.flags.writeable = True


def run_checked(p: Pass, model: Model, ctx: PassContext) -> PassResult:
    """Run one pass and hold it to its declared mutation contract (`Pass.in_place`).

    In place: it must return the model it was given. Functional: it must leave that
    model as it was (graph, attributes, weights: the weights are read-only while it
    runs, so a write raises) and return a new one when it reports a change. A change
    drops the cached analyses the pass does not preserve (`Pass.preserves`).
    """
    if p.in_place is None:
        raise TypeError(f"pass {p.name!r} does not declare in_place")
    if p.in_place:
        result = p.run(model, ctx)
        if result.model is not model:
            raise RuntimeError(f"pass {p.name!r} is declared in place but returned a "
                               "different model object")
        if result.modified:
            ctx.analyses.invalidate(result.model, p.preserves)
        return result
    before = _fingerprint(model)
    with _read_only(model):
        result = p.run(model, ctx)
    if _fingerprint(model) != before:
        raise RuntimeError(f"pass {p.name!r} is declared functional (in_place = False) but "
                           "changed the model it was given")
    if result.modified and result.model is model:
        raise RuntimeError(f"pass {p.name!r} is declared functional but reported a change "
                           "and returned the model it was given")
    if result.modified:
        ctx.analyses.invalidate(result.model, p.preserves)
    return result


def run_pipeline(
    model: Model,
    passes: list[Pass],
    ctx: PassContext,
    verify: Verifier,
    numeric_check: NumericCheck | None = None,
    on_mismatch: OnMismatch | None = None,
) -> PipelineResult:
    """Run passes in order; verify after each transform; wrap failures with context.

    `on_mismatch(pass, its input model, check)` is called when a numeric check fails,
    before the error is raised (a reproducer writer); with it, the input of an in-place
    pass is copied first, so what it gets is the model as the pass was given it.
    """
    out = PipelineResult(model=model)
    done: list[str] = []
    for p in passes:
        given = out.model.copy() if on_mismatch is not None and p.in_place else out.model
        where = f"pass {p.spec()!r}" + (f" (after {', '.join(done)})" if done else "")
        started, rss_before = time.perf_counter(), _peak_rss_mb()
        if tracemalloc.is_tracing():
            tracemalloc.reset_peak()
        try:
            result = run_checked(p, out.model, ctx)
            rss = _peak_rss_mb()
            entry = {"pass": p.name, "seconds": round(time.perf_counter() - started, 4),
                     "peak_rss_mb": rss, "peak_rss_growth_mb": round(rss - rss_before, 1)}
            if tracemalloc.is_tracing():
                entry["peak_alloc_mb"] = round(tracemalloc.get_traced_memory()[1] / (1 << 20), 1)
            out.profile.append(entry)
            if p.transforms and result.modified:
                verify(result.model)
            if numeric_check is not None and result.reference is not None:
                check = numeric_check(p, result)
                out.checks.append(check)
                if not check["ok"]:
                    if on_mismatch is not None:
                        on_mismatch(p, given, check)
                    raise NumericMismatchError(
                        f"output differs from its reference: rel. error {check['rel_error']:.3g}"
                        f" > tolerance {check['tolerance']:.3g}"
                    )
        except NumericMismatchError as exc:  # callers catch it by class: keep the class
            raise NumericMismatchError(f"{where}: {exc}") from exc
        except CompressIRError as exc:
            raise PassError(f"{where}: {exc}", getattr(exc, "exit_code", 3)) from exc
        except MemoryError:
            raise PassError(f"{where}: out of memory") from None
        except Exception as exc:  # a bug: still name the pass; the CLI says where to report
            if not is_onnxruntime_error(exc):
                raise PassError(f"{where}: internal error {type(exc).__name__}: {exc}",
                                EXIT_INTERNAL) from exc
            raise PassError(f"{where}: onnxruntime cannot run the model: {exc}") from exc
        out.model = result.model
        out.results.append((p, result))
        done.append(p.name)
    return out
