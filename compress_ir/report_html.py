"""Reports people read: one self-contained HTML file, and Markdown for PR comments.

Why: the JSON report is for machines. A reviewer wants the verdict (status, gates),
the before/after numbers, which layers shrank (a table and a chart), which channel
groups could not be pruned and why, and the latency when benchmarked, in a file
that opens anywhere: no scripts, no external CSS or fonts; charts are inline SVG
drawn here (no plotting library needed). `write_report` picks the format from the
suffix (`.html`, `.md`, else JSON; `-` prints the JSON to stdout).
"""

from __future__ import annotations

import html
import os
import sys
from typing import Any

from compress_ir.backend.report import BENCH_ENTRIES
from compress_ir.core.files import write_atomic
from compress_ir.core.report import to_json

MAX_LAYERS = 40
_STATUS_COLOR = {"ok": "#1a7f37", "gate-failed": "#bf8700", "check-failed": "#cf222e",
                 "error": "#cf222e"}
_BEFORE, _AFTER = "#8c959f", "#0969da"


def write_report(report: dict[str, Any], path: str | os.PathLike) -> None:
    """Write `report` to `path` in the format its suffix names (atomically)."""
    text_path = os.fspath(path)
    if text_path == "-":
        sys.stdout.write(to_json(report))
        sys.stdout.flush()
        return
    write_atomic(path, render_report(report, path))


def render_report(report: dict[str, Any], path: str | os.PathLike) -> bytes:
    """The file contents for `path`, in the format its suffix names (JSON by default)."""
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if suffix in (".html", ".htm"):
        return render_html(report).encode()
    if suffix in (".md", ".markdown"):
        return render_markdown(report).encode()
    return to_json(report).encode()


# -- shared pieces ------------------------------------------------------------------------


def _human(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1000:
            return f"{n:.4g}{unit}"
        n /= 1000
    return f"{n:.4g}P"


def _ratio(after: float, before: float) -> str:
    return f"{after / before:.3f}" if before else "-"


def _blocked(report: dict[str, Any]) -> list[tuple[str, int, list[str]]]:
    """(reason, number of groups, example producers) over every pass's channel groups."""
    reasons: dict[str, tuple[int, list[str]]] = {}
    for entry in report.get("passes", []):
        for g in (entry.get("details") or {}).get("groups", []):
            for reason in g.get("blocked_by", []):
                count, examples = reasons.get(reason, (0, []))
                reasons[reason] = (count + 1, (examples + list(g.get("producers", [])))[:4])
    return sorted(((r, c, e) for r, (c, e) in reasons.items()), key=lambda t: -t[1])


def _pass_lines(entry: dict[str, Any]) -> list[str]:
    """What the pass itself formats from its details (`Pass.format_details`)."""
    from compress_ir.core.passes import PASSES

    if entry.get("name") not in PASSES:
        return []
    return PASSES.get(entry["name"]).format_details(entry.get("details") or {}, 50)


def _top_layers(report: dict[str, Any], n: int = MAX_LAYERS) -> list[dict[str, Any]]:
    layers = report.get("layers") or []
    return sorted(layers, key=lambda r: -r["macs_before"])[:n]


def _summary_rows(report: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    rows = []
    before, after = report.get("before") or {}, report.get("after") or {}
    for key in ("params", "macs", "bytes"):
        if key in before and key in after:
            rows.append((key, _human(before[key]), _human(after[key]),
                         _ratio(after[key], before[key])))
    return rows


def _shapes_line(report: dict[str, Any]) -> str | None:
    """`MACs and checks at x=1x3x640x640; assumed: batch=1` (report["shapes"], see shapes.py)."""
    shapes = report.get("shapes")
    if not shapes:
        return None
    text = "MACs and checks at " + ", ".join(
        f"{k}={'x'.join(map(str, v))}" for k, v in shapes.get("inputs", {}).items())
    if shapes.get("assumed"):
        text += "; assumed symbolic dims: " + ", ".join(
            f"{k}={v}" for k, v in shapes["assumed"].items()) + " (set them with --input-shape)"
    return text


def _latency(report: dict[str, Any]) -> list[tuple[str, float]]:
    bench = (report.get("target") or {}).get("benchmark") or {}
    out = []
    for key, label in BENCH_ENTRIES:
        entry = bench.get(key) or {}
        if "median_ms" in entry:
            out.append((label, float(entry["median_ms"])))
    return out


# -- SVG charts ---------------------------------------------------------------------------


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _short(name: str, width: int = 28) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1):]


def bars_svg(title: str, labels: list[str], series: list[tuple[str, str, list[float]]],
             unit: str = "") -> str:
    """Horizontal grouped bars, one group per label, one bar per series (name, color, values)."""
    if not labels:
        return ""
    bar_h, gap, label_w, plot_w, right = 12, 8, 250, 540, 90
    group_h = bar_h * len(series) + gap
    top, legend_h = 28, 22 if len(series) > 1 else 4
    height = top + legend_h + group_h * len(labels) + 10
    peak = max((v for _, _, vals in series for v in vals), default=0) or 1
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + plot_w + right}" '
           f'height="{height}" role="img" aria-label="{esc(title)}" class="chart">',
           f'<text x="0" y="16" class="ct">{esc(title)}</text>']
    x = label_w
    for name, color, _ in series if len(series) > 1 else ():
        out.append(f'<rect x="{x}" y="{top}" width="12" height="10" fill="{color}"/>'
                   f'<text x="{x + 16}" y="{top + 9}" class="cl">{esc(name)}</text>')
        x += 24 + 7 * len(name)
    y = top + legend_h
    for i, label in enumerate(labels):
        gy = y + i * group_h
        out.append(f'<text x="{label_w - 6}" y="{gy + bar_h * len(series) / 2 + 4}" '
                   f'text-anchor="end" class="cl"><title>{esc(label)}</title>'
                   f'{esc(_short(label, 36))}</text>')
        for j, (_, color, values) in enumerate(series):
            value = values[i]
            w = max(plot_w * value / peak, 0.5 if value else 0)
            by = gy + j * bar_h
            out.append(f'<rect x="{label_w}" y="{by}" width="{w:.1f}" height="{bar_h - 1}" '
                       f'fill="{color}"><title>{esc(label)}: {_human(value)}{unit}</title></rect>')
            out.append(f'<text x="{label_w + w + 4:.1f}" y="{by + bar_h - 2}" class="cv">'
                       f'{_human(value)}{unit}</text>')
    out.append("</svg>")
    return "".join(out)


PALETTE = ("#0969da", "#cf222e", "#1a7f37", "#8250df", "#bf8700", "#1b7c83", "#bc4c00",
            "#6e7781", "#a475f9", "#e16f24")


def curves_svg(title: str, curves: dict[str, tuple[list[float], list[float]]],
               threshold: float | None = None, max_curves: int = 10) -> str:
    """Loss vs fraction removed per curve, log y axis (sensitivity scans)."""
    import math

    curves = {k: v for k, v in list(curves.items())[:max_curves] if v[0]}
    if not curves:
        return ""
    left, top, w, h, legend_w = 60, 30, 520, 260, 240
    positive = [y for _, ys in curves.values() for y in ys if y > 0]
    if threshold and threshold > 0:
        positive.append(threshold)
    lo = math.floor(math.log10(min(positive))) if positive else -6
    hi = math.ceil(math.log10(max(positive))) if positive else 0
    hi = max(hi, lo + 1)
    lo = max(lo, hi - 8)  # eight decades at most; smaller losses (and 0) sit on the axis
    floor = 10.0 ** lo

    def px(x: float, y: float) -> tuple[float, float]:
        ly = (math.log10(max(y, floor)) - lo) / (hi - lo)
        return left + x * w, top + h - ly * h

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + w + legend_w}" '
           f'height="{top + h + 40}" role="img" aria-label="{esc(title)}" class="chart">',
           f'<text x="0" y="16" class="ct">{esc(title)}</text>',
           f'<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="none" stroke="#d0d7de"/>']
    for e in range(lo, hi + 1):
        _, y = px(0, 10.0 ** e)
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" class="cv">'
                   f'1e{e}</text>')
    for tick in (0, 0.25, 0.5, 0.75, 1.0):
        x, _ = px(tick, 1)
        out.append(f'<text x="{x:.1f}" y="{top + h + 14}" text-anchor="middle" class="cv">'
                   f'{tick:g}</text>')
    out.append(f'<text x="{left + w / 2}" y="{top + h + 32}" text-anchor="middle" class="cl">'
               "fraction of the group's units removed</text>")
    if threshold:
        _, y = px(0, threshold)
        out.append(f'<line x1="{left}" x2="{left + w}" y1="{y:.1f}" y2="{y:.1f}" '
                   'stroke="#1f2328" stroke-dasharray="4 3"/>')
    for i, (name, (xs, ys)) in enumerate(curves.items()):
        color = PALETTE[i % len(PALETTE)]
        points = " ".join(f"{px(x, y)[0]:.1f},{px(x, y)[1]:.1f}" for x, y in zip(xs, ys,
                                                                                  strict=True))
        out.append(f'<polyline points="{points}" fill="none" stroke="{color}" '
                   f'stroke-width="1.5"><title>{esc(name)}</title></polyline>')
        ly = top + 6 + 16 * i
        out.append(f'<rect x="{left + w + 12}" y="{ly}" width="12" height="3" fill="{color}"/>'
                   f'<text x="{left + w + 28}" y="{ly + 5}" class="cl">{esc(_short(name, 34))}'
                   "</text>")
    out.append("</svg>")
    return "".join(out)


def _sensitivity(report: dict[str, Any]) -> list[str]:
    charts = []
    for entry in report.get("passes", []):
        alloc = (entry.get("details") or {}).get("allocation") or {}
        if alloc.get("mode") != "sensitivity" or not alloc.get("curves"):
            continue
        curves = {f"group {g}": (c["ratios"], c["loss"]) for g, c in alloc["curves"].items()}
        charts.append(curves_svg(f"{entry['spec']}: output loss ({alloc.get('loss', '')})",
                                 curves, alloc.get("tolerance")))
    return [c for c in charts if c]


# -- HTML ---------------------------------------------------------------------------------

PAGE_CSS = """
body{font:14px/1.45 -apple-system,'Segoe UI',Helvetica,Arial,sans-serif;color:#1f2328;
margin:24px auto;max-width:1060px;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid
#d0d7de;padding-bottom:4px}
.status{display:inline-block;color:#fff;border-radius:12px;padding:2px 12px;font-weight:600}
.meta{color:#59636e;font-size:13px;word-break:break-all}
table{border-collapse:collapse;margin:6px 0 10px;font-size:13px}
th,td{border:1px solid #d0d7de;padding:4px 9px;text-align:right}
th{background:#f6f8fa}td.l,th.l{text-align:left}td:first-child{white-space:nowrap}
tr.fail td{background:#ffebe9}tr.pass td{background:#dafbe1}
.err{background:#ffebe9;border:1px solid #ff8182;padding:8px 12px;border-radius:6px;
white-space:pre-wrap;word-break:break-word}
.warn{background:#fff8c5;border:1px solid #d4a72c;padding:6px 12px;border-radius:6px;
margin:4px 0}
pre{background:#f6f8fa;padding:10px;border-radius:6px;overflow:auto;font-size:12px}
.chart{display:block;margin:8px 0}.ct{font-weight:600;font-size:13px}
.cl{font-size:11px;fill:#1f2328}.cv{font-size:10px;fill:#59636e}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin:12px 0}
.card{border:1px solid #d0d7de;border-radius:8px;padding:8px 14px;min-width:120px}
.card b{display:block;font-size:20px}.card span{color:#59636e;font-size:12px}
"""


def html_table(head: list[str] | None, rows: list[list[Any]], left: int | set[int] = 1,
           classes: list[str] | None = None) -> str:
    """A table; `left`: the first N columns (or these column indexes) are left-aligned."""
    lefts = set(range(left)) if isinstance(left, int) else left

    def cells(row: list[Any], tag: str) -> str:
        return "".join(f'<{tag}{" class=l" if i in lefts else ""}>{esc(c)}</{tag}>'
                       for i, c in enumerate(row))

    body = "".join(
        f"<tr{f' class={classes[i]}' if classes and classes[i] else ''}>{cells(r, 'td')}</tr>"
        for i, r in enumerate(rows))
    thead = f"<thead><tr>{cells(head, 'th')}</tr></thead>" if head else ""
    return f"<table>{thead}<tbody>{body}</tbody></table>"


def _cards(report: dict[str, Any]) -> str:
    cards = []
    ratios = report.get("ratios") or {}
    for key, label in (("macs", "MACs kept"), ("params", "params kept"),
                       ("bytes", "file size kept")):
        if ratios.get(key) is not None:
            cards.append((f"{ratios[key]:.1%}", label))
    fid = report.get("fidelity") or {}
    if "cosine" in fid:
        cards.append((f"{fid['cosine']:.4f}", "mean output cosine vs original"))
    for label, ms in _latency(report)[-1:]:
        cards.append((f"{ms:.3f} ms", f"latency, {label}"))
    return ('<div class="cards">' + "".join(
        f'<div class="card"><b>{esc(v)}</b><span>{esc(t)}</span></div>' for v, t in cards)
        + "</div>") if cards else ""


def render_html(report: dict[str, Any]) -> str:
    """The whole report as one self-contained HTML page."""
    status = report.get("status", "ok")
    parts = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        f"<title>compress-ir report: {esc(os.path.basename(str(report.get('input', ''))))}"
        "</title>", f"<style>{PAGE_CSS}</style></head><body>",
        f'<h1>compress-ir report <span class="status" id="status" style="background:'
        f'{_STATUS_COLOR.get(status, "#59636e")}">{esc(status)}</span></h1>',
        f'<div class="meta">{esc(report.get("input"))} &rarr; '
        f'{esc(report.get("output") or "(not written)")}<br>pipeline: '
        f'<code>{esc(report.get("pipeline") or "-")}</code></div>',
    ]
    if report.get("error"):
        parts.append(f'<h2>Error</h2><div class="err" id="error">{esc(report["error"])}</div>')
    parts.append(_cards(report))
    rows = _summary_rows(report)
    if rows:
        parts.append('<h2 id="summary">Summary</h2>' + html_table(
            ["", "before", "after", "after / before"], [list(r) for r in rows]))
        shapes = _shapes_line(report)
        if shapes:
            parts.append(f'<p class="meta" id="shapes">{esc(shapes)}</p>')
    gates = report.get("gates") or []
    if gates:
        parts.append('<h2 id="gates">Gates</h2>' + html_table(
            ["gate", "value", "result"],
            [[g["gate"], "-" if g.get("value") is None else f"{g['value']:.6g}",
              ("pass" if g["ok"] else f"FAIL {g.get('reason', '')}".strip())
              + (" (warning: the benchmark spread is too wide to trust, see Latency)"
                 if g.get("warning") else "")] for g in gates],
            left={0, 2}, classes=["pass" if g["ok"] else "fail" for g in gates]))
    fid = report.get("fidelity")
    if fid:
        parts.append(f'<h2 id="fidelity">Fidelity to the original</h2><p class="meta">'
                     f'on {esc(fid.get("inputs"))}</p>' + html_table(
                         ["output", "mean cosine", "worst-sample cosine", "relative error"],
                         [[k, f"{v['cosine']:.6f}",
                           f"{v['cosine_min']:.6f}" if "cosine_min" in v else "-",
                           f"{v['rel_error']:.3e}"]
                          for k, v in (fid.get("outputs") or {}).items()]))
    if report.get("eval"):
        parts.append('<h2 id="eval">Evaluation (--eval)</h2>' + html_table(
            ["metric", "value"], [[k, f"{v:.6g}"] for k, v in report["eval"].items()]))
    passes = report.get("passes") or []
    if passes:
        checks = {c["pass"]: c for c in report.get("checks", [])}
        parts.append('<h2 id="passes">Passes</h2>' + html_table(
            ["pass", "seconds", "process peak RSS MB", "check rel. error", "stats"],
            [[p["spec"], f"{p.get('seconds', 0):.3f}", p.get("peak_rss_mb", "-"),
              f"{checks[p['name']]['rel_error']:.2e}" if p["name"] in checks else "-",
              ", ".join(f"{k}={v}" for k, v in list(p.get("stats", {}).items())[:6])]
             for p in passes], left={0, 4}))
        for p in passes:  # the pass's own lines (channel-prune: heads/neurons kept per block)
            for warning in (p.get("details") or {}).get("warnings", []):
                parts.append(f'<div class="warn">warning: {esc(warning)}</div>')
            lines = _pass_lines(p)
            if lines:
                parts.append(f"<details><summary>{esc(p['spec'])}: details</summary><pre>"
                             + esc("\n".join(lines)) + "</pre></details>")
    layers = _top_layers(report)
    if layers:
        labels = [r["node"] for r in layers]
        parts.append('<h2 id="layers">Layers</h2>')
        parts.append(bars_svg(f"MACs per layer (largest {len(layers)})", labels, [
            ("before", _BEFORE, [r["macs_before"] for r in layers]),
            ("after", _AFTER, [r["macs_after"] for r in layers])]))
        parts.append(bars_svg("Parameters per layer", labels, [
            ("before", _BEFORE, [r["params_before"] for r in layers]),
            ("after", _AFTER, [r["params_after"] for r in layers])]))
        total = len(report.get("layers") or [])
        parts.append(html_table(
            ["layer", "op", "MACs before", "MACs after", "ratio", "params before",
             "params after"],
            [[r["node"], r["op"], _human(r["macs_before"]), _human(r["macs_after"]),
              _ratio(r["macs_after"], r["macs_before"]), _human(r["params_before"]),
              _human(r["params_after"])] for r in layers], left=2))
        if total > len(layers):
            parts.append(f'<p class="meta">{total - len(layers)} smaller layers in the JSON '
                         "report.</p>")
    sensitivity = _sensitivity(report)
    if sensitivity:
        parts.append('<h2 id="sensitivity">Sensitivity</h2>' + "".join(sensitivity))
    blocked = _blocked(report)
    if blocked:
        parts.append('<h2 id="blocked">Blocked channel groups</h2>' + html_table(
            ["reason", "groups", "e.g. producers"],
            [[r, c, ", ".join(e)] for r, c, e in blocked], left=1))
    latency = _latency(report)
    if latency:
        bench = report["target"]["benchmark"]
        parts.append('<h2 id="latency">Latency</h2>' + bars_svg(
            "median latency", [lbl for lbl, _ in latency],
            [("median", _AFTER, [ms for _, ms in latency])], unit=" ms"))
        rows = [[label, *(f"{e[k]:.4f}" if k in e else "-" for k in
                          ("median_ms", "p90_ms", "min_ms")),
                 f"{e['cv']:.1%}" if "cv" in e else "-"]
                for key, label in BENCH_ENTRIES
                if "median_ms" in (e := bench.get(key) or {})]
        parts.append(html_table(["runtime", "median ms", "p90 ms", "min ms", "CV"], rows))
        env = bench.get("environment") or {}
        if env:
            parts.append(f'<p class="meta">{esc(bench.get("method", ""))}, '
                         f'{bench.get("repeat")} rounds after {bench.get("warmup", "?")} '
                         f'warm-up; {esc(env.get("cpu"))}, {env.get("cpu_count")} cores</p>')
        for warning in bench.get("warnings", []):
            parts.append(f'<div class="warn">warning: {esc(warning)}</div>')
    target = report.get("target")
    if target:
        verify = target.get("verify") or {}
        state = (f"rel. error {verify.get('rel_error', 0):.2e} "
                 f"({'ok' if verify.get('ok') else 'FAILED'})" if verify.get("ran")
                 else f"not run: {verify.get('reason', '?')}")
        parts.append(f'<h2 id="target">Target</h2><p>{esc(target["spec"]["name"])}: '
                     f'{esc(target["spec"].get("description", ""))}<br>artifact '
                     f'{esc(target.get("artifact"))}<br>verify: {esc(state)}</p>')
    provenance = [["input sha256", (report.get("sha256") or {}).get("input") or "-"],
                  ["output sha256", (report.get("sha256") or {}).get("output") or "-"]]
    provenance += [[k, v or "-"] for k, v in (report.get("versions") or {}).items()]
    parts.append('<h2 id="provenance">Provenance</h2>' + html_table(None, provenance, left=2))
    if report.get("recipe"):
        import yaml

        parts.append('<h2 id="recipe">Recipe</h2><pre>'
                     + esc(yaml.safe_dump(report["recipe"], sort_keys=False)) + "</pre>")
    parts.append("</body></html>\n")
    return "\n".join(p for p in parts if p)


# -- Markdown -----------------------------------------------------------------------------


def _md_cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _md_table(head: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(_md_cell(h) for h in head) + " |",
             "|" + "|".join(":--" if i == 0 else "--:" for i in range(len(head))) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return lines


def render_markdown(report: dict[str, Any], max_layers: int = 15) -> str:
    """A compact Markdown report (PR comments): verdict, totals, gates, top layers."""
    status = report.get("status", "ok")
    mark = {"ok": "✅", "gate-failed": "⚠️", "check-failed": "❌", "error": "❌"}.get(status, "")
    lines = [f"### compress-ir: {mark} `{status}`", "",
             f"`{report.get('input')}` → `{report.get('output') or '(not written)'}`  ",
             f"pipeline: `{report.get('pipeline') or '-'}`", ""]
    if report.get("error"):
        lines += [f"> **error:** {_md_cell(report['error'])}", ""]
    rows = _summary_rows(report)
    if rows:
        lines += _md_table(["", "before", "after", "ratio"], [list(r) for r in rows]) + [""]
        shapes = _shapes_line(report)
        if shapes:
            lines += [shapes, ""]
    fid = report.get("fidelity")
    if fid:
        lines += [f"Fidelity to the original ({fid.get('inputs')}): cosine "
                  f"**{fid['cosine']:.4f}**, relative error {fid['rel_error']:.3e}", ""]
    gates = report.get("gates") or []
    if gates:
        lines += _md_table(["gate", "value", "result"], [
            [f"`{g['gate']}`", "-" if g.get("value") is None else f"{g['value']:.6g}",
             ("✅ pass" if g["ok"] else f"❌ {g.get('reason', 'fail')}")
             + (" ⚠️ benchmark too noisy to trust" if g.get("warning") else "")]
            for g in gates]) + [""]
    if report.get("eval"):
        lines += _md_table(["metric", "value"],
                           [[k, f"{v:.6g}"] for k, v in report["eval"].items()]) + [""]
    latency = _latency(report)
    if latency:
        lines += _md_table(["runtime", "median ms"], [[k, f"{v:.3f}"] for k, v in latency])
        lines += [""]
    layers = _top_layers(report, max_layers)
    if layers:
        lines += ["<details><summary>Largest layers</summary>", ""]
        lines += _md_table(["layer", "op", "MACs before", "MACs after", "ratio"], [
            [f"`{r['node']}`", r["op"], _human(r["macs_before"]), _human(r["macs_after"]),
             _ratio(r["macs_after"], r["macs_before"])] for r in layers])
        lines += ["", "</details>", ""]
    warnings = [w for entry in report.get("passes") or []
                for w in (entry.get("details") or {}).get("warnings", [])]
    if warnings:
        lines += [f"> ⚠️ {_md_cell(w)}  " for w in warnings] + [""]
    blocked = _blocked(report)
    if blocked:
        lines += ["Blocked channel groups:", ""]
        lines += [f"- {count} × {_md_cell(reason)}" for reason, count, _ in blocked[:10]]
        lines += [""]
    versions = report.get("versions") or {}
    if versions:
        lines.append("<sub>" + ", ".join(f"{k} {v}" for k, v in versions.items()
                                         if v and k != "platform") + "</sub>")
    return "\n".join(lines) + "\n"
