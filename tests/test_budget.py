"""Model-aware allocations: target-macs / target-params budgets and sensitivity scans."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from test_channel_ops import Net, inp

from compress_ir.api import compress
from compress_ir.core.calibration import CalibrationSet
from compress_ir.core.errors import UsageError
from compress_ir.core.metrics import model_metrics
from compress_ir.frontends.onnx import load_onnx
from compress_ir.passes.analysis.budget import output_loss


def _cnn() -> onnx.ModelProto:
    """conv-bn-relu, depthwise, a residual add, a concat and a Gemm head (16x16 input)."""
    n = Net(seed=2)
    x = n.input([1, 3, 16, 16])
    a = n.op("Relu", [n.bn(n.conv(x, 3, 16, "c1"), 16, "bn1")], "r1")
    d = n.op("Relu", [n.conv(a, 16, 16, "dw", group=16)], "r_dw")
    s = n.op("Relu", [n.op("Add", [a, n.conv(d, 16, 16, "c2")], "add")], "r2")
    c = n.op("Concat", [n.conv(s, 16, 24, "c3"), n.conv(s, 16, 8, "c4", k=1)], "cat", axis=1)
    t = n.op("Relu", [n.conv(n.op("Relu", [c], "r3"), 32, 32, "c5", strides=[2, 2])], "r5")
    return n.build(n.head(t, 32))


def _mlp() -> onnx.ModelProto:
    """x[4, 32] -> MatMul 64 -> Add -> Relu -> MatMul 48 -> Relu -> MatMul 10."""
    n = Net(seed=4)
    t = n.input([4, 32])
    t = n.op("Relu", [n.op("Add", [n.op("MatMul", [t, n.rand((32, 64), "w1", fan=32)], "m1"),
                                   n.rand((64,), "b1", fan=4)], "a1")], "r1")
    t = n.op("Relu", [n.op("MatMul", [t, n.rand((64, 48), "w2", fan=64)], "m2")], "r2")
    return n.build(n.op("MatMul", [t, n.rand((48, 10), "w3", fan=48)], "m3"))


def _allocation(result) -> dict:
    return result.report["passes"][0]["details"]["allocation"]


def _rows(result) -> dict[str, dict]:
    return {r["producers"][0]: r for r in result.report["passes"][0]["details"]["groups"]}


@pytest.mark.parametrize("build", [_cnn, _mlp])
@pytest.mark.parametrize("metric", ["macs", "params"])
def test_target_budget_reaches_the_fraction(build, metric: str) -> None:
    proto = build()
    base = model_metrics(load_onnx(proto).to_proto())[metric]
    result = compress(proto, f"channel-prune{{target-{metric}=0.5}}")  # oracle-checked
    got = model_metrics(result.model)[metric] / base
    assert 0.44 <= got <= 0.5, got  # at most the budget, within a few % of it
    alloc = _allocation(result)
    assert alloc["reached"] and alloc["mode"] == f"target-{metric}"
    assert alloc["estimated"] == alloc["achieved"]  # the analytic cost model is exact
    assert result.report["checks"][0]["ok"]
    rows = [r for r in _rows(result).values() if r["kept"] < r["size"]]
    assert rows and all(len(r["removed"]) == r["size"] - r["kept"] for r in rows)


def test_target_ignores_ratio_and_honours_round_to() -> None:
    proto = _cnn()
    a = compress(proto, "channel-prune{target-macs=0.6,round-to=4}")
    b = compress(proto, "channel-prune{target-macs=0.6,round-to=4,ratio=0.1}")
    assert _rows(a) == _rows(b)
    for row in _rows(a).values():
        assert row["kept"] == row["size"] or row["kept"] % 4 == 0
    base = model_metrics(load_onnx(proto).to_proto())["macs"]
    assert model_metrics(a.model)["macs"] <= 0.6 * base


def test_unreachable_budget_stops_at_min_channels() -> None:
    result = compress(_mlp(), "channel-prune{target-params=0.01,min-channels=8}")
    alloc = _allocation(result)
    assert not alloc["reached"]
    assert all(r["kept"] == 8 for r in _rows(result).values() if r["status"] == "pruned")


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("channel-prune{target-macs=0.5,target-params=0.5}", "mutually exclusive"),
        ("channel-prune{target-macs=1.5}", "target-macs"),
        ("channel-prune{target-params=-0.1}", "target-params"),
        ("channel-prune{scope=sensitivity,target-macs=0.5}", "sensitivity"),
        ("channel-prune{plot=x.png}", "scope=sensitivity"),
        ("channel-prune{scope=sensitivity,tolerance=-1}", "tolerance"),
    ],
)
def test_bad_budget_options(spec: str, fragment: str) -> None:
    with pytest.raises(UsageError, match=fragment):
        compress(_mlp(), spec)


def _two_branches() -> onnx.ModelProto:
    """y = strong(x) + weak(x): pruning the weak branch's hidden channels barely matters."""
    n = Net(seed=7)
    x = n.input([1, 3, 8, 8])
    outs = []
    for name, scale in (("strong", 1.0), ("weak", 0.02)):
        h = n.op("Relu", [n.conv(x, 3, 8, f"{name}1")], f"{name}_relu")
        w = n.rng.standard_normal((4, 8, 3, 3)) / np.sqrt(72) * scale
        outs.append(n.op("Conv", [h, n.const(w, f"{name}2.w")], f"{name}2", pads=[1] * 4))
    return n.build(n.op("Add", outs, "y"))


def test_sensitivity_prunes_the_robust_branch_more(tmp_path: Path) -> None:
    plot = tmp_path / "sens.png"
    result = compress(_two_branches(),
                      f"channel-prune{{scope=sensitivity,tolerance=0.01,plot={plot}}}")
    alloc = _allocation(result)
    assert alloc["data"] == "random" and alloc["samples"] == 64
    rows = _rows(result)
    curves = {rows[p]["group"]: p for p in ("strong1", "weak1")}
    chosen = {curves[g]: c["chosen"] for g, c in alloc["curves"].items() if g in curves}
    assert chosen["strong1"] < chosen["weak1"] == 0.9, chosen
    assert rows["strong1"]["kept"] > rows["weak1"]["kept"] == 1
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # matplotlib is a test dependency


def test_sensitivity_uses_calibration_and_is_exact() -> None:
    data = np.random.default_rng(0).standard_normal((16, 3, 8, 8)).astype(np.float32)
    result = compress(_two_branches(), "channel-prune{scope=sensitivity,tolerance=0.001}",
                      calibration=CalibrationSet({"x": data}, "test"))
    alloc = _allocation(result)
    assert alloc["data"] == "calibration" and alloc["samples"] == 16
    assert result.report["checks"][0]["ok"]  # the sliced model matches its masked oracle
    loss = alloc["curves"][_rows(result)["weak1"]["group"]]["loss"]
    assert loss == sorted(loss) or max(loss) < 1e-3  # a curve, not noise
    assert inp(result.model, "weak2").shape[1] == _rows(result)["weak1"]["kept"]


def test_output_loss() -> None:
    a = np.array([[1.0, 0.0], [0.0, 2.0]])
    assert output_loss(a, a) == 0.0
    assert output_loss(-a, a) == pytest.approx(2.0)
    assert output_loss(np.array([[0.0, 1.0], [0.0, 2.0]]), a) == pytest.approx(0.5)


# --- allocations are registered classes, like criteria ----------------------------------


def test_every_allocation_is_a_registered_class() -> None:
    from compress_ir.passes.analysis.allocation import ALLOCATIONS, Allocation, AllocationRequest

    assert {"uniform", "global", "sensitivity", "budget"} <= set(ALLOCATIONS.names())
    assert all(issubclass(ALLOCATIONS.get(n), Allocation) for n in ALLOCATIONS.names())
    with pytest.raises(UsageError, match="needs the model"):  # model-aware, given no model
        ALLOCATIONS.get("sensitivity")().allocate({0: np.ones(4)}, AllocationRequest())
    with pytest.raises(UsageError, match="target-macs"):  # the budget is not a scope
        compress(_cnn(), "channel-prune{scope=budget}")


def test_a_new_allocation_is_one_registered_class() -> None:
    """Registered under a name, it is usable as `scope=NAME` with no other edit."""
    from compress_ir.passes.analysis.allocation import ALLOCATIONS, Allocation

    class KeepTwo(Allocation):
        summary = "test only: every group keeps its two best units"

        def allocate(self, scores, req):  # noqa: ANN001, ANN202
            return {g: np.argsort(-s, kind="stable").argsort() < 2 for g, s in scores.items()}, {
                "mode": "keep-two"}

    ALLOCATIONS.register("test-keep-two")(KeepTwo)
    try:
        result = compress(_cnn(), "channel-prune{scope=test-keep-two}")
    finally:
        ALLOCATIONS._items.pop("test-keep-two", None)
    p = result.report["passes"][0]
    pruned = [g for g in p["details"]["groups"] if g["status"] == "pruned"]
    assert pruned and all(g["kept"] == 2 for g in pruned)
    assert p["details"]["allocation"] == {"mode": "keep-two"}
