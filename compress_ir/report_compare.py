"""Several runs side by side: `compress-ir report a.json b.json ... -o compare.html`.

Why: choosing a pruning level means reading a trade-off curve (fidelity, or the user's
accuracy from --eval, against MACs kept), not one report. This reads the JSON reports
of several runs and writes one self-contained HTML page (a table and inline-SVG scatter
plots, one per quality metric) or a Markdown table.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from compress_ir.core.errors import UsageError
from compress_ir.core.files import write_atomic
from compress_ir.report_html import PAGE_CSS, PALETTE, esc, html_table


def load_reports(paths: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """(label, report) per JSON report file; one-line errors for unreadable ones."""
    runs = []
    for path in paths:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UsageError(f"{path}: not a readable JSON report ({exc})") from None
        if not isinstance(data, dict) or "status" not in data:
            raise UsageError(f"{path}: not a compress-ir report (no 'status')")
        runs.append((Path(path).stem, data))
    return runs


def _quality_metrics(runs: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """`fidelity` plus every --eval metric some run has."""
    names = ["fidelity"]
    for _, r in runs:
        names += [k for k in (r.get("eval") or {}) if k not in names]
    return names


def _value(report: dict[str, Any], metric: str) -> float | None:
    if metric == "fidelity":
        return (report.get("fidelity") or {}).get("cosine")
    return (report.get("eval") or {}).get(metric)


def _macs(report: dict[str, Any]) -> float | None:
    return (report.get("ratios") or {}).get("macs")


def scatter_svg(title: str, points: list[tuple[str, float, float]], y_label: str) -> str:
    """Points (label, MACs kept, quality), x in [0, 1], y scaled to the data."""
    if not points:
        return ""
    left, top, w, h, legend_w = 60, 30, 460, 260, 260
    ys = [p[2] for p in points]
    lo, hi = min(ys), max(ys)
    pad = (hi - lo) * 0.1 or max(abs(hi) * 0.01, 1e-3)
    lo, hi = lo - pad, hi + pad

    def px(x: float, y: float) -> tuple[float, float]:
        return left + x * w, top + h - (y - lo) / (hi - lo) * h

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + w + legend_w}" '
           f'height="{top + h + 44}" role="img" aria-label="{esc(title)}" class="chart">',
           f'<text x="0" y="16" class="ct">{esc(title)}</text>',
           f'<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="none" stroke="#d0d7de"/>']
    for i in range(5):
        y = lo + (hi - lo) * i / 4
        _, py = px(0, y)
        out.append(f'<text x="{left - 6}" y="{py + 4:.1f}" text-anchor="end" class="cv">'
                   f'{y:.4g}</text>')
    for tick in (0, 0.25, 0.5, 0.75, 1.0):
        x, _ = px(tick, lo)
        out.append(f'<text x="{x:.1f}" y="{top + h + 14}" text-anchor="middle" class="cv">'
                   f'{tick:g}</text>')
    out.append(f'<text x="{left + w / 2}" y="{top + h + 32}" text-anchor="middle" class="cl">'
               "MACs kept (after / before)</text>")
    out.append(f'<text x="12" y="{top + h / 2}" class="cl" transform="rotate(-90 12 '
               f'{top + h / 2})" text-anchor="middle">{esc(y_label)}</text>')
    ordered = sorted(points, key=lambda p: p[1])
    line = " ".join(f"{px(x, y)[0]:.1f},{px(x, y)[1]:.1f}" for _, x, y in ordered)
    out.append(f'<polyline points="{line}" fill="none" stroke="#8c959f" stroke-width="1"/>')
    for i, (label, x, y) in enumerate(points):
        cx, cy = px(x, y)
        color = PALETTE[i % len(PALETTE)]
        out.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="5" fill="{color}" class="point">'
                   f"<title>{esc(label)}: MACs {x:.3f}, {esc(y_label)} {y:.5g}</title>"
                   "</circle>")
        ly = top + 6 + 16 * i
        out.append(f'<circle cx="{left + w + 18}" cy="{ly + 3}" r="4" fill="{color}"/>'
                   f'<text x="{left + w + 28}" y="{ly + 7}" class="cl">{esc(label)}</text>')
    out.append("</svg>")
    return "".join(out)


def _rows(runs: list[tuple[str, dict[str, Any]]], metrics: list[str]) -> list[list[Any]]:
    def fmt(v: Any, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    rows = []
    for label, r in runs:
        ratios = r.get("ratios") or {}
        bench = ((r.get("target") or {}).get("benchmark") or {}).get("ratios") or {}
        rows.append([label, r.get("status"), r.get("pipeline") or "-",
                     fmt(ratios.get("macs"), ".3f"), fmt(ratios.get("params"), ".3f"),
                     fmt(ratios.get("bytes"), ".3f"),
                     *(fmt(_value(r, m), ".5g") for m in metrics),
                     fmt(bench.get("tvm_vs_ort_original"), ".3f")])
    return rows


def render_comparison_html(runs: list[tuple[str, dict[str, Any]]]) -> str:
    metrics = _quality_metrics(runs)
    head = ["run", "status", "pipeline", "MACs", "params", "bytes", *metrics, "latency"]
    parts = ["<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
             f"<title>compress-ir: {len(runs)} runs compared</title>",
             f"<style>{PAGE_CSS}</style></head><body>",
             f"<h1>compress-ir: {len(runs)} runs compared</h1>",
             '<p class="meta">ratios are after / before; fidelity is the mean per-sample output '
             "cosine against the original model; latency is TVM / onnxruntime on the original</p>",
             '<h2 id="runs">Runs</h2>', html_table(head, _rows(runs, metrics), left={0, 1, 2})]
    parts.append('<h2 id="tradeoff">Trade-off</h2>')
    for metric in metrics:
        points = [(label, _macs(r), _value(r, metric)) for label, r in runs]
        points = [(lbl, x, y) for lbl, x, y in points if x is not None and y is not None]
        parts.append(scatter_svg(f"{metric} vs MACs kept", points, metric))
    parts.append("</body></html>\n")
    return "\n".join(p for p in parts if p)


def render_comparison_markdown(runs: list[tuple[str, dict[str, Any]]]) -> str:
    metrics = _quality_metrics(runs)
    head = ["run", "status", "pipeline", "MACs", "params", "bytes", *metrics, "latency"]
    lines = [f"### compress-ir: {len(runs)} runs compared", "",
             "| " + " | ".join(head) + " |", "|" + "|".join("--" for _ in head) + "|"]
    for row in _rows(runs, metrics):
        row[2] = f"`{row[2]}`"
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |")
    return "\n".join(lines) + "\n"


def write_comparison(paths: list[str], output: str) -> None:
    """Read the reports at `paths`, write the comparison (`.md`: Markdown, else HTML)."""
    runs = load_reports(paths)
    if os.path.splitext(output)[1].lower() in (".md", ".markdown"):
        text = render_comparison_markdown(runs)
    else:
        text = render_comparison_html(runs)
    write_atomic(output, text.encode())
