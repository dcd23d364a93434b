"""The CLI as the tests drive it: in-process, with the one-line error contract checked."""

from __future__ import annotations

from pathlib import Path

import pytest

from compress_ir.cli import main


def cli(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    """main() in-process; argparse's own exits (usage, --help) count as return codes."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def one_error(err: str) -> str:
    """The single `compress-ir: error: ...` line of a failed run (no traceback, nothing else)."""
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("compress-ir: error: "), err
    return lines[0]
