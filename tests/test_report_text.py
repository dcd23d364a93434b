"""The terminal report: the core prints totals and checks; each pass prints its own
details (`Pass.format_details`) and other layers register their sections."""

from __future__ import annotations

from pathlib import Path

import compress_ir.passes  # noqa: F401 - registers passes and the size section
from compress_ir.api import compress
from compress_ir.core.report import SECTIONS, format_report

TINY = Path(__file__).parents[1] / "tools" / "models" / "tiny_cnn.onnx"


def test_channel_prune_prints_its_groups_through_the_pass() -> None:
    report = compress(TINY, "channel-prune{ratio=0.5}").report
    text = format_report(report, max_groups=2)
    groups = report["passes"][0]["details"]["groups"]
    pruned = [g for g in groups if g["status"] == "pruned"]
    assert "status    producers" in text
    assert pruned[0]["producers"][0] in text and pruned[2]["producers"][0] not in text
    assert f"... {len(pruned) - 2} more pruned groups" in text


def test_sections_are_registered_by_their_owners() -> None:
    assert "sizes" in SECTIONS  # the size report's table, registered by size_report.py
    report = compress(TINY, "sparsify{sparsity=0.5}").report
    assert "weight sizes:" in format_report(report)
    SECTIONS["test-extra"] = lambda value: [f"extra section: {value}"]
    try:
        assert "extra section: 42" in format_report({**report, "test-extra": 42})
    finally:
        del SECTIONS["test-extra"]
