"""Reports people read: the HTML page (self-contained, structured, renders in Chromium) and
the Markdown for PR comments."""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import onnx
import pytest
from oracle import tiny_net

from compress_ir.cli import main
from compress_ir.core.errors import EXIT_NUMERIC, EXIT_OK
from compress_ir.report_html import render_html, render_markdown

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "tools" / "models" / "tiny_cnn.onnx"


class _Outline(HTMLParser):
    """Collects ids, tags, table rows, svg bars and anything that would load from outside."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.tags: list[str] = []
        self.external: list[str] = []
        self.rects: list[dict[str, str]] = []
        self.points: list[dict[str, str]] = []
        self.text: list[str] = []
        self.stack: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags.append(tag)
        if tag not in ("br", "meta", "rect", "circle"):
            self.stack.append(tag)
        if "id" in a:
            self.ids.add(a["id"])
        for key in ("src", "href"):
            if key in a and not a[key].startswith(("data:", "#")):
                self.external.append(a[key])
        if tag == "rect":
            self.rects.append(a)
        if tag == "circle" and a.get("class") == "point":
            self.points.append(a)
        if tag in ("script", "link", "iframe", "img"):
            self.external.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("rect", "circle"):
            return
        assert self.stack and self.stack[-1] == tag, (self.stack[-5:], tag)
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _run(tmp_path: Path, *extra: str) -> tuple[int, Path, dict]:
    html, js = tmp_path / "r.html", tmp_path / "r.json"
    try:
        code = main([str(EXAMPLE), "--pass", "channel-prune{ratio=0.5}", "--report", str(html),
                     "--report", str(js), "--quiet", *extra])
    except SystemExit as exc:
        code = exc.code
    return code, html, json.loads(js.read_text())


def test_html_report_structure(tmp_path: Path) -> None:
    code, html, data = _run(tmp_path, "--gate", "macs <= 0.5")
    assert code == EXIT_OK
    page = _Outline()
    page.feed(html.read_text())
    page.close()
    assert page.stack == ["html"] or page.stack == []  # balanced tags
    assert page.external == []  # self-contained
    assert {"status", "summary", "gates", "fidelity", "passes", "layers", "blocked",
            "provenance", "recipe"} <= page.ids
    assert page.tags.count("svg") == 2  # MACs and params per layer
    text = " ".join(page.text)
    assert "ok" in text and "macs <= 0.5" in text
    # one bar per layer and series; the after-bar of each layer is shorter than its before-bar
    n_layers = len(data["layers"])
    bars = [r for r in page.rects if r.get("height") != "10"]  # legend swatches are 10 high
    assert len(bars) == 2 * 2 * n_layers
    widths = [float(r["width"]) for r in bars[:2 * n_layers]]
    for before, after, row in zip(widths[0::2], widths[1::2],
                                  sorted(data["layers"], key=lambda r: -r["macs_before"]),
                                  strict=True):
        if before < 5:  # bars thinner than a pixel are drawn at a minimum width
            continue
        assert after < before
        assert after / before == pytest.approx(row["macs_after"] / row["macs_before"], rel=0.02)
    # the blocked group's reason reaches the page
    assert "graph output 'logits' must keep its shape" in text


def test_html_escapes_what_it_shows() -> None:
    page = render_html({"status": "error", "error": "<script>alert(1)</script>",
                        "input": "<b>x</b>.onnx"})
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_markdown_report(tmp_path: Path) -> None:
    md = tmp_path / "r.md"
    code = main([str(EXAMPLE), "--pass", "channel-prune{ratio=0.5}", "--report", str(md),
                 "--gate", "fidelity >= 0.0", "--quiet"])
    assert code == EXIT_OK
    text = md.read_text()
    assert text.startswith("### compress-ir: ✅ `ok`")
    assert "| macs |" in text and "`fidelity >= 0.0`" in text and "✅ pass" in text
    layers = [line for line in text.splitlines() if line.startswith("| `")
              and (" | Conv | " in line or " | Gemm | " in line)]
    assert len(layers) == 13 and all(line.count("|") == 6 for line in layers)


def test_failed_run_still_renders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tmp_path / "tiny.onnx"
    onnx.save_model(tiny_net(), str(model))
    import compress_ir.core.numeric as numeric

    # every check fails (the API's check reads the per-output errors)
    monkeypatch.setattr(numeric, "output_errors", lambda *a, **k: {"y": 1.0})
    html, md = tmp_path / "r.html", tmp_path / "r.md"
    code = main([str(model), "--pass", "channel-prune", "--report", str(html), "--report",
                 str(md), "--quiet"])
    assert code == EXIT_NUMERIC
    assert "check-failed" in html.read_text() and 'id="error"' in html.read_text()
    assert "❌ `check-failed`" in md.read_text()
    assert render_markdown({"status": "error", "error": "boom"}).count("boom") == 1


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_html_renders_in_headless_chromium(tmp_path: Path) -> None:
    code, html, _ = _run(tmp_path)
    assert code == EXIT_OK
    shot = tmp_path / "shot.png"
    proc = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
         "--window-size=1200,1600", html.as_uri()], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000  # a page, not a blank
    dom = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", html.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert 'id="layers"' in dom.stdout and "<svg" in dom.stdout


def test_compare_runs(tmp_path: Path) -> None:
    reports = []
    for ratio in (0.25, 0.5, 0.75):
        path = tmp_path / f"r{int(ratio * 100)}.json"
        code = main([str(EXAMPLE), "--pass", f"channel-prune{{ratio={ratio}}}", "--report",
                     str(path), "--quiet"])
        assert code == EXIT_OK
        reports.append(path)
    html, md = tmp_path / "cmp.html", tmp_path / "cmp.md"
    assert main(["report", *map(str, reports), "-o", str(html)]) == EXIT_OK
    assert main(["report", *map(str, reports), "-o", str(md)]) == EXIT_OK
    page = _Outline()
    page.feed(html.read_text())
    assert page.external == [] and {"runs", "tradeoff"} <= page.ids
    data = [json.loads(p.read_text()) for p in reports]
    text = " ".join(page.text)
    for d in data:
        assert f"{d['ratios']['macs']:.3f}" in text and f"{d['fidelity']['cosine']:.5g}" in text
    rows = [line for line in md.read_text().splitlines() if line.startswith("| r")
            and not line.startswith("| run")]
    assert [row.split(" | ")[0] for row in rows] == ["| r25", "| r50", "| r75"]
    # one point per run in the fidelity plot, at x = MACs kept on a 460 px wide [0, 1] axis
    xs = [float(c["cx"]) for c in page.points]
    assert len(xs) == 3
    for x, d in zip(xs, data, strict=True):
        assert (x - 60) / 460 == pytest.approx(d["ratios"]["macs"], abs=1e-3)


def test_compare_rejects_what_is_not_a_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    assert main(["report", str(bad), "-o", str(tmp_path / "x.html")]) == 2
    assert "not a compress-ir report" in capsys.readouterr().err
