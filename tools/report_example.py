"""Make the example HTML report and its screenshot (tools/results/report/).

Runs the recipe tools/recipes/mnist_resnet.yaml (outputs redirected to a temp folder,
reports to tools/results/report/), then screenshots the HTML page in headless Chromium
(`apt-get install chromium`) at 1200x1600 and full length. Exit code: compress-ir's
(4 when a gate fails, which the example's latency gate may do on a tiny model).

    python tools/report_example.py [--out tools/results/report]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def screenshot(html: Path, png: Path, height: int) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("chromium is not installed (apt-get install -y chromium)")
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                    "--hide-scrollbars", f"--screenshot={png}", f"--window-size=1200,{height}",
                    html.resolve().as_uri()], check=True, capture_output=True, timeout=300)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "tools" / "results" / "report")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    html, md, js = (args.out / f"report.{s}" for s in ("html", "md", "json"))
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run(
            [sys.executable, "-m", "compress_ir.cli", "--config",
             str(ROOT / "tools" / "recipes" / "mnist_resnet.yaml"),
             "-o", f"{tmp}/small.onnx", "--artifact", f"{tmp}/small.x86",
             "--report", str(js), "--report", str(html), "--report", str(md)], cwd=ROOT)
    screenshot(html, args.out / "screenshot.png", 1600)
    screenshot(html, args.out / "screenshot_full.png", 4000)
    print(f"wrote {html}, {md}, {js} and screenshots (compress-ir exit code {proc.returncode})")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
