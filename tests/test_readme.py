"""The README's quickstart command works as written, on the model the repo ships."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _quickstart_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quickstart", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.startswith("compress-ir ")]


def test_quickstart_runs(tmp_path: Path) -> None:
    commands = _quickstart_commands()
    assert commands, "the quickstart has no compress-ir command"
    for command in commands:
        argv = shlex.split(command)
        argv = [str(ROOT / a) if a.startswith("tools/") else a for a in argv[1:]]
        proc = subprocess.run([sys.executable, "-m", "compress_ir.cli", *argv],
                              cwd=tmp_path, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "tiny_report.json").read_text())
    assert report["after"]["macs"] < report["before"]["macs"]
    assert (tmp_path / "tiny_pruned.onnx").stat().st_size < report["before"]["bytes"]
