"""The run report: one JSON document for pipelines, one table for people."""

from __future__ import annotations

import json
import os
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


def _human(n: float) -> str:
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1000:
            return f"{n:.4g}{unit}"
        n /= 1000
    return f"{n:.4g}P"


def format_report(report: dict[str, Any], max_groups: int = 25) -> str:
    """A terminal summary: totals, per-pass stats, groups, blocked reasons, checks."""
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
            f"{key:8}{_human(b):>12}{_human(a):>12}{ratio if ratio is not None else '-':>8}"
        )
    for entry in report["passes"]:
        stats = ", ".join(f"{k}={v}" for k, v in entry["stats"].items())
        lines += ["", f"pass {entry['spec']}: {stats}"]
        groups = entry.get("details", {}).get("groups", [])
        if groups:
            lines.append(f"  {'group':>5} {'size':>6} {'kept':>6}  status    producers")
            shown = [g for g in groups if g["status"] == "pruned"][:max_groups]
            for g in shown:
                prods = ", ".join(g["producers"][:3]) + (" ..." if len(g["producers"]) > 3 else "")
                lines.append(
                    f"  {g['group']:>5} {g['size']:>6} {g['kept']:>6}  {g['status']:9} {prods}"
                )
            hidden = sum(1 for g in groups if g["status"] == "pruned") - len(shown)
            if hidden > 0:
                lines.append(f"  ... {hidden} more pruned groups (see --report)")
            reasons: dict[str, int] = {}
            for g in groups:
                for r in g["blocked_by"]:
                    reasons[r] = reasons.get(r, 0) + 1
            for reason, count in sorted(reasons.items(), key=lambda kv: -kv[1])[:10]:
                lines.append(f"  blocked ({count} group{'s' if count > 1 else ''}): {reason}")
    for check in report["checks"]:
        state = "ok" if check["ok"] else "FAILED"
        lines.append(
            f"check {check['pass']}: {check['against']} rel. error "
            f"{check['rel_error']:.2e} (tolerance {check['tolerance']:.0e}) {state}"
        )
    return "\n".join(lines)


def write_json_atomic(data: dict[str, Any], path: str | os.PathLike) -> None:
    text = json.dumps(data, indent=2, default=_json_default) + "\n"
    write_atomic(path, text.encode())


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
