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
    lines += format_shapes(report.get("shapes"))
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
        on = f" on {check['inputs']}" if check.get("inputs") else ""
        lines.append(
            f"check {check['pass']}: {check['against']} rel. error "
            f"{check['rel_error']:.2e} (tolerance {check['tolerance']:.0e}){on} {state}"
        )
    if report.get("sizes"):
        lines += ["", *format_sizes(report["sizes"])]
    return "\n".join(lines)


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


_SIZE_FORMATS = (
    ("dense", "dense fp32"), ("csr", "CSR"), ("bsr", "BSR {r}x{c}"),
    ("dc_pq", "DC prune+quant"), ("dc", "DC +Huffman"),
)


def _tail(name: str, width: int) -> str:
    """Keep the informative end of a long node name, marked as cut."""
    return name if len(name) <= width else "…" + name[-(width - 1):]


def format_sizes(sizes: dict[str, Any], max_layers: int = 8) -> list[str]:
    """Weight storage per format (totals, factor vs dense fp32) and the largest layers."""
    total = sizes["total"]
    r, c = sizes["block"]
    lines = [
        f"weight sizes: {total['layers']} layers, {_human(total['params'])} params, "
        f"sparsity {total['sparsity']:.1%}",
        f"  {'format':16}{'bytes':>10}{'factor':>9}",
    ]
    for key, label in _SIZE_FORMATS:
        factor = total["factors"][key]
        lines.append(f"  {label.format(r=r, c=c):16}{_human(total['bytes'][key]):>10}"
                     f"{f'{factor:.2f}x' if factor else '-':>9}")
    layers = sorted(sizes["layers"], key=lambda row: -row["bytes"]["dense"])
    if layers:
        lines.append(f"  {'layer':24}{'view':>12}{'sparse':>8}{'values':>8}"
                     f"{'dense':>9}{'CSR':>9}{'DC':>9}")
    for row in layers[:max_layers]:
        view = "x".join(str(d) for d in row["view"])
        b = row["bytes"]
        lines.append(f"  {_tail(row['node'], 24):24}{view:>12}{row['sparsity']:>8.1%}"
                     f"{row['distinct']:>8}{_human(b['dense']):>9}{_human(b['csr']):>9}"
                     f"{_human(b['dc']):>9}")
    if len(layers) > max_layers:
        lines.append(f"  ... {len(layers) - max_layers} more layers (see --report)")
    return lines


def to_json(data: dict[str, Any]) -> str:
    """The report as JSON text (numpy values as lists/numbers, anything else as text)."""
    return json.dumps(data, indent=2, default=_json_default) + "\n"


def write_json_atomic(data: dict[str, Any], path: str | os.PathLike) -> None:
    write_atomic(path, to_json(data).encode())


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
