"""CI gates: `macs <= 0.6`, `fidelity >= 0.98`, `accuracy >= 0.97` over the run's metrics.

Why: a release pipeline needs the run to fail (exit 4, `status: gate-failed`, the gate
named) when a budget or a quality bar is missed. Expressions are parsed by a regular
expression into (metric, operator, number), never evaluated as code. A gate whose
metric was not measured fails: a CI bar that silently passes is worse than none.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from compress_ir.core.errors import EXIT_GATE, CompressIRError, UsageError

__all__ = ["EXIT_GATE", "GateFailedError", "evaluate_gates", "gate_metrics", "parse_gate"]

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt,
    "==": operator.eq, "!=": operator.ne,
}
_GATE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.\-]*)\s*(<=|>=|==|!=|<|>)\s*"
                   r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")


class GateFailedError(CompressIRError):
    """One or more gates failed (or the build is unverified under --require-verified)."""

    exit_code = EXIT_GATE


@dataclass(frozen=True)
class Gate:
    metric: str
    op: str
    bound: float
    text: str

    def holds(self, value: float) -> bool:
        return bool(_OPS[self.op](value, self.bound))


def parse_gate(text: str) -> Gate:
    """`NAME OP NUMBER` -> Gate; anything else is a one-line UsageError."""
    match = _GATE.match(text)
    if not match:
        raise UsageError(f"gate {text!r}: expected 'METRIC OP NUMBER' with OP one of "
                         f"{' '.join(_OPS)} (e.g. 'macs <= 0.6')")
    name, op, number = match.groups()
    return Gate(name, op, float(number), text.strip())


def _num(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def gate_metrics(report: dict[str, Any]) -> dict[str, float]:
    """Every number a gate may name, from the report (see README: CI gates).

    `macs`/`params`/`bytes` are after/before ratios (`*_before`, `*_after` absolute);
    `fidelity` is the mean per-sample output cosine vs the original (worst output),
    `fidelity_min` the worst sample's, `rel_error` the worst relative error; `latency`
    is TVM compressed / TVM original on the same device when the original was built too
    (--rpc), else TVM / onnxruntime-original; `latency_ort` compressed / original in onnxruntime
    (only with --benchmark); user metrics from --eval under their own names and as
    `eval.NAME`.
    """
    out: dict[str, float] = {}
    for key, ratio in report.get("ratios", {}).items():
        for name, value in ((key, ratio), (f"{key}_before", report["before"].get(key)),
                            (f"{key}_after", report["after"].get(key))):
            if _num(value) is not None:
                out[name] = _num(value)
    fid = report.get("fidelity") or {}
    for name, key in (("fidelity", "cosine"), ("fidelity_min", "cosine_min"),
                      ("rel_error", "rel_error")):
        if _num(fid.get(key)) is not None:
            out[name] = _num(fid[key])
    target = report.get("target") or {}
    bench = (target.get("benchmark") or {}).get("ratios", {})
    # `latency`: the same-device ratio compressed/original TVM when both were built (--rpc),
    # else TVM compressed / onnxruntime original on this machine
    if _num(bench.get("tvm_vs_tvm_original")) is not None:
        out["latency"] = _num(bench["tvm_vs_tvm_original"])
    for name, key in (("latency", "tvm_vs_ort_original"),
                      ("latency_ort", "ort_compressed_vs_original"),
                      ("latency_tvm_vs_ort", "tvm_vs_ort_compressed")):
        if _num(bench.get(key)) is not None:
            out.setdefault(name, _num(bench[key]))
    if target:
        out["verified"] = 1.0 if (target.get("verify") or {}).get("ran") else 0.0
    for key, value in (report.get("eval") or {}).items():
        if _num(value) is not None:
            out[f"eval.{key}"] = _num(value)
            out.setdefault(key, _num(value))
    return out


def evaluate_gates(gates: list[str], report: dict[str, Any], require_verified: bool = False
                   ) -> list[dict[str, Any]]:
    """One result row per gate (and one for --require-verified): expr, value, ok, reason."""
    metrics = gate_metrics(report)
    rows = []
    for text in gates:
        gate = parse_gate(text)
        value = metrics.get(gate.metric)
        row: dict[str, Any] = {"gate": gate.text, "metric": gate.metric, "value": value}
        if value is None:
            row["ok"] = False
            row["reason"] = (f"metric {gate.metric!r} was not measured (available: "
                             f"{', '.join(sorted(metrics)) or 'none'})")
        else:
            row["ok"] = gate.holds(value)
        bench = ((report.get("target") or {}).get("benchmark") or {})
        if gate.metric.startswith("latency") and bench.get("warnings"):
            row["warning"] = "; ".join(bench["warnings"])
        rows.append(row)
    if require_verified:
        verify = ((report.get("target") or {}).get("verify")) or {}
        ok = bool(verify.get("ran") and verify.get("ok"))
        row = {"gate": "require-verified", "metric": "verified", "value": float(ok), "ok": ok}
        if not ok:
            row["reason"] = ("no --target build" if not report.get("target")
                             else f"build not verified: {verify.get('reason', 'not run')}")
        rows.append(row)
    return rows


def failure_message(rows: list[dict[str, Any]]) -> str | None:
    """One line naming every failed gate, or None when all hold."""
    failed = [r for r in rows if not r["ok"]]
    if not failed:
        return None
    parts = []
    for r in failed:
        shown = r.get("reason") or f"{r['metric']} = {r['value']:.6g}"
        parts.append(f"{r['gate']!r} ({shown})")
    return "gate failed: " + "; ".join(parts)
