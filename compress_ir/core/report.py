"""The run report: one JSON document for pipelines, one table for people."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from typing import Any

from compress_ir.core.files import write_atomic

SCHEMA_VERSION = 1


def _ratio(after: int, before: int) -> float | None:
    return round(after / before, 4) if before else None


def build_report(
    source: str,
    output: str | None,
    pipeline: str,
    before: dict[str, int],
    after: dict[str, int],
    passes: list[dict[str, Any]],
    checks: list[dict[str, Any]],
) -> dict[str, Any]:
    return {
        "schema": SCHEMA_VERSION,
        "input": source,
        "output": output,
        "pipeline": pipeline,
        "before": before,
        "after": after,
        "ratios": {k: _ratio(after[k], before[k]) for k in before},
        "passes": passes,
        "checks": checks,
    }


# Formatters of report sections owned by other layers (the weight-size table of
# passes/analysis/size_report.py), registered there: report key -> lines.
SECTIONS: dict[str, Callable[[Any], list[str]]] = {}


def human(n: float) -> str:
    """1234567 -> 1.235M: counts and bytes for people."""
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1000:
            return f"{n:.4g}{unit}"
        n /= 1000
    return f"{n:.4g}P"


def format_report(report: dict[str, Any], max_groups: int = 25) -> str:
    """A terminal summary: totals, per-pass stats and the lines each pass formats from its
    own details (`Pass.format_details`), checks, and registered sections (`SECTIONS`)."""
    lines = [
        f"compress-ir: {report['input']} -> {report['output'] or '(not written)'}",
        f"pipeline: {report['pipeline']}",
        "",
        f"{'':8}{'before':>12}{'after':>12}{'ratio':>8}",
    ]
    for key in ("params", "macs", "bytes"):
        b, a = report["before"][key], report["after"][key]
        ratio = report["ratios"][key]
        lines.append(
            f"{key:8}{human(b):>12}{human(a):>12}{ratio if ratio is not None else '-':>8}"
        )
    lines += format_shapes(report.get("shapes"))
    for entry in report["passes"]:
        stats = ", ".join(f"{k}={v}" for k, v in entry["stats"].items())
        lines += ["", f"pass {entry['spec']}: {stats}"]
        lines += _pass_details(entry, max_groups)
    for check in report["checks"]:
        state = "ok" if check["ok"] else "FAILED"
        on = f" on {check['inputs']}" if check.get("inputs") else ""
        lines.append(
            f"check {check['pass']}: {check['against']} rel. error "
            f"{check['rel_error']:.2e} (tolerance {check['tolerance']:.0e}){on} {state}"
        )
    for key, section in SECTIONS.items():
        if report.get(key):
            lines += ["", *section(report[key])]
    return "\n".join(lines)


def _pass_details(entry: dict[str, Any], max_rows: int) -> list[str]:
    """The pass's own lines for its details (the pass knows their format, not the core)."""
    from compress_ir.core.passes import PASSES

    if entry.get("name") not in PASSES:
        return []
    return PASSES.get(entry["name"]).format_details(entry.get("details") or {}, max_rows)


def format_shapes(shapes: dict[str, Any] | None) -> list[str]:
    """Input shapes the MACs and checks used; assumed symbolic dims are called out."""
    if not shapes:
        return []
    given = ", ".join(f"{k}={'x'.join(map(str, v))}" for k, v in shapes["inputs"].items())
    lines = [f"shapes: {given}"]
    if shapes.get("assumed"):
        items = ", ".join(f"{k}={v}" for k, v in shapes["assumed"].items())
        lines.append(f"  assumed symbolic dims: {items} (set them with --input-shape)")
    lines += [f"  note: {n}" for n in shapes.get("notes", [])]
    if shapes.get("macs_unresolved"):
        n = len(shapes["macs_unresolved"])
        lines.append(f"  MACs: {n} op(s) with unknown shapes counted as 1 (see --report)")
    return lines


def to_json(data: dict[str, Any]) -> str:
    """The report as strict JSON text (numpy values as lists/numbers, NaN/inf as null,
    anything else as text)."""
    return json.dumps(_finite(data), indent=2, default=_json_default) + "\n"


def report_json(data: dict[str, Any]) -> bytes:
    """The report as UTF-8 JSON bytes."""
    return to_json(data).encode()


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def write_json_atomic(data: dict[str, Any], path: str | os.PathLike) -> None:
    write_atomic(path, report_json(data))


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
