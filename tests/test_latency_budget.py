"""channel-prune{target-latency=F}: per-layer latency tables and the latency budget.

The budget logic is tested with an injected deterministic timer (`fake`): a model's
"latency" is a formula over its nodes, bilinear in each layer's widths, so the
tables' interpolation is exact and the predicted latency of the pruned model must
equal what the fake timer says about the pruned model itself (computed from the
pruned ONNX graph, not from the tables). One smoke test times real TVM kernels.
"""

from __future__ import annotations

import json
from collections import Counter

import onnx
import pytest
from test_budget import _allocation, _cnn, _rows

from compress_ir.api import compress
from compress_ir.core.metrics import model_metrics, tensor_shapes
from compress_ir.core.ops import count_macs, node_attrs
from compress_ir.frontends.onnx import load_onnx
from compress_ir.passes.analysis.latency_table import (
    LATENCY_TIMERS,
    grid_widths,
    register_timer,
)

CALLS: Counter = Counter()
DEPTHWISE_COST = 2.0  # per MAC, relative to a dense conv
OTHER_MS = 0.5  # per non-weighted node, whatever its width: MACs cannot see it


def fake_latency(proto: onnx.ModelProto) -> float:
    """ms: weighted nodes by MACs (depthwise DEPTHWISE_COST x dearer, + 0.01 each);
    OTHER_MS per other node."""
    shapes = tensor_shapes(proto, None)
    total = 0.0
    for node in proto.graph.node:
        macs = count_macs(node, shapes)
        if node.op_type in ("Conv", "Gemm"):
            dw = node.op_type == "Conv" and int(node_attrs(node).get("group", 1)) > 1
            total += 0.01 + macs * 1e-5 * (DEPTHWISE_COST if dw else 1.0)
        else:
            total += OTHER_MS
    return total


def _fake_factory(spec):  # noqa: ANN001, ANN202 - the LATENCY_TIMERS signature
    def prepare(proto: onnx.ModelProto):  # noqa: ANN202
        CALLS["prepare"] += 1
        ms = fake_latency(proto)
        return lambda: ms

    return prepare


if "fake" not in LATENCY_TIMERS:
    register_timer("fake", _fake_factory)


def _prune(proto: onnx.ModelProto, cache, repeat: int = 3):  # noqa: ANN001, ANN202
    return compress(proto, "channel-prune{target-latency=0.5,latency-timer=fake,round-to=1,"
                           f"latency-cache={cache},latency-repeat={repeat}}}")


def test_latency_budget_hits_the_fraction_and_predicts_exactly(tmp_path) -> None:
    proto = _cnn()
    dense = fake_latency(load_onnx(proto).to_proto())
    result = _prune(proto, tmp_path)  # oracle-checked like every channel-prune
    assert result.report["checks"][0]["ok"]
    alloc = _allocation(result)
    got = fake_latency(result.model)
    assert alloc["mode"] == "target-latency" and alloc["reached"]
    assert 0.44 <= got / dense <= 0.5, got / dense
    assert alloc["original"] == pytest.approx(dense, rel=1e-6)
    assert alloc["estimated"] == pytest.approx(got, rel=1e-3)  # tables interpolate exactly
    assert alloc["measured"]["ratio"] == pytest.approx(got / dense, rel=1e-3)
    assert alloc["rest_ms"] == pytest.approx(OTHER_MS * sum(
        1 for n in load_onnx(proto).to_proto().graph.node if n.op_type not in ("Conv", "Gemm")))


def test_latency_is_not_macs(tmp_path) -> None:
    """Width-independent time (OTHER_MS) is invisible to MACs: half the MACs is not half
    the time."""
    proto = _cnn()
    by_latency = _prune(proto, tmp_path)
    by_macs = compress(proto, "channel-prune{target-macs=0.5}")
    dense = fake_latency(load_onnx(proto).to_proto())
    lat_ratio = fake_latency(by_latency.model) / dense
    macs_ratio = fake_latency(by_macs.model) / dense
    assert 0.44 <= lat_ratio <= 0.5 < macs_ratio - 0.05  # half the MACs is not half the time
    base = model_metrics(load_onnx(proto).to_proto())["macs"]
    assert model_metrics(by_macs.model)["macs"] <= 0.5 * base


def test_tables_are_cached_on_disk(tmp_path) -> None:
    proto = _cnn()
    CALLS.clear()
    first = _prune(proto, tmp_path, repeat=0)
    stats = _allocation(first)["tables"]
    assert CALLS["prepare"] == stats["measured"] > 0  # one build per distinct table point
    assert _allocation(first)["measured"] == {"ran": False, "reason": "latency-repeat=0"}
    files = list(tmp_path.glob("latency-*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["scope"]["timer"] == "fake"
    CALLS.clear()
    second = _prune(proto, tmp_path)
    assert _allocation(second)["tables"]["measured"] == 0
    assert CALLS["prepare"] == 2  # only the dense / pruned measurement afterwards
    assert _rows(first) == _rows(second)


def test_grid_is_vector_width_multiples() -> None:
    assert grid_widths(64, 8) == [64, 48, 32, 16]
    assert grid_widths(100, 16) == [100, 80, 64, 32]
    assert grid_widths(12, 16) == [12, 9, 6, 3]


@pytest.mark.parametrize("bad", ["target-latency=1.5", "target-latency=0.5,target-macs=0.5",
                                 "target-latency=0.5,latency-timer=nope"])
def test_bad_latency_options(bad: str, tmp_path) -> None:
    from compress_ir.core.errors import UsageError

    with pytest.raises((UsageError, ValueError)):
        compress(_cnn(), f"channel-prune{{{bad}}}")


def test_real_tvm_timer_smoke(tmp_path) -> None:
    """One real table: a one-conv model timed with compiled TVM kernels (no speed assertion),
    then read back from the disk cache without building."""
    pytest.importorskip("tvm")
    from test_channel_ops import Net

    from compress_ir.backend.layer_timer import tvm_prepare
    from compress_ir.passes.analysis.latency_table import LatencyCache, measure_tables
    from compress_ir.targets import resolve_target

    n = Net(seed=1)
    proto = load_onnx(n.build(n.conv(n.input([1, 1, 8, 8]), 1, 2, "c1"))).to_proto()
    spec = resolve_target("x86")
    shapes = tensor_shapes(proto, None)
    cold = LatencyCache(tmp_path, {"timer": "tvm", "target": spec.name})
    tables = measure_tables(proto, shapes, tvm_prepare(spec), spec.lanes, cold)
    table = tables.tables["c1"]
    assert table.outs == [1, 2] and table.ins == [1] and (table.ms > 0).all()
    assert tables.dense_ms > 0 and cold.misses == 3  # two widths and the model
    warm = LatencyCache(tmp_path, {"timer": "tvm", "target": spec.name})
    again = measure_tables(proto, shapes, lambda p: pytest.fail("rebuilt"), spec.lanes, warm)
    assert warm.misses == 0 and again.tables["c1"].ms.tolist() == table.ms.tolist()



def _overhead_factory(spec):  # noqa: ANN001, ANN202
    """Every built model pays 5 ms besides its nodes: layers alone add up to too much."""
    def prepare(proto: onnx.ModelProto):  # noqa: ANN202
        ms = 5.0 + fake_latency(proto)
        return lambda: ms

    return prepare


if "fake-overhead" not in LATENCY_TIMERS:
    register_timer("fake-overhead", _overhead_factory)


def test_layers_alone_slower_than_the_model_scale_the_tables(tmp_path) -> None:
    proto = _cnn()
    result = compress(proto, "channel-prune{target-latency=0.5,latency-timer=fake-overhead,"
                             f"round-to=1,latency-cache={tmp_path},latency-repeat=2}}")
    alloc = _allocation(result)
    dense = 5.0 + fake_latency(load_onnx(proto).to_proto())
    layers = sum(1 for n in proto.graph.node if n.op_type in ("Conv", "Gemm"))
    assert alloc["rest_ms"] == 0 and alloc["tables"]["scale"] < 1
    assert alloc["tables"]["layers_alone_ms"] > layers * 5.0
    assert alloc["original"] == pytest.approx(dense, rel=1e-6)  # scaled back to the model
    # each layer's 5 ms does not shrink with its width: the budget is out of reach, and
    # the report says so instead of claiming it
    assert alloc["estimated"] < alloc["original"]
    assert alloc["reached"] == (alloc["estimated"] <= alloc["target"] + 1e-6)


def test_table_envelope_and_interpolation() -> None:
    import numpy as np

    from compress_ir.passes.analysis.latency_table import Layer, LayerTable

    layer = Layer("n", "Conv", (), (1, 8, 4, 4), 8, 8, False, False)
    table = LayerTable(layer, [4, 8], [4, 8], np.array([[1.0, 2.0], [0.5, 4.0]]))
    assert table.ms.tolist() == [[1.0, 2.0], [1.0, 4.0]]  # 8x4 measured faster than 4x4
    assert table.at(6, 6) == pytest.approx((1.0 + 2.0 + 1.0 + 4.0) / 4)
    assert table.at(2, 2) == 1.0 and table.full == 4.0


def _convex_factory(spec):  # noqa: ANN001, ANN202
    """A model is not the sum of its layers: whole-model time grows faster than the parts
    (as caches spill), so tables timed per layer mispredict the pruned model."""
    def prepare(proto: onnx.ModelProto):  # noqa: ANN202
        ms = fake_latency(proto) ** 1.5
        return lambda: ms

    return prepare


if "convex" not in LATENCY_TIMERS:
    register_timer("convex", _convex_factory)


def test_measured_latency_steers_the_budget(tmp_path) -> None:
    """NetAdapt's rule: the measurement decides. With tables alone the result misses the
    goal by > 10 %; re-aiming by the measured ratio lands within 10 % (issue 13)."""
    proto = _cnn()
    dense = fake_latency(load_onnx(proto).to_proto()) ** 1.5

    def run(rounds: int):  # noqa: ANN202
        result = compress(proto, "channel-prune{target-latency=0.5,latency-timer=convex,round-to=1,"
                                 f"latency-cache={tmp_path},latency-repeat=3,"
                                 f"latency-rounds={rounds}}}")
        return result, fake_latency(result.model) ** 1.5 / dense

    _, tables_only = run(1)
    result, steered = run(4)
    assert abs(tables_only / 0.5 - 1) > 0.1, tables_only
    assert abs(steered / 0.5 - 1) <= 0.1, steered
    rounds = _allocation(result)["rounds"]
    assert 2 <= len(rounds) <= 4 and rounds[0]["asked"] == 0.5
    assert _allocation(result)["measured"]["ratio"] == pytest.approx(steered, rel=1e-3)
    from compress_ir.passes.transform.channel_prune import ChannelPrune

    step = next(p for p in result.report["passes"] if p["name"].startswith("channel-prune"))
    text = "\n".join(ChannelPrune.format_details(step["details"]))
    assert f"measured {steered:.3f}" in text and "latency rounds" in text, text


def test_latency_widths_are_vector_width_multiples_of_the_timed_target(tmp_path) -> None:
    """round-to=0 under target-latency: the vector width of the target the tables are timed
    on (this host without --target), the widths the tables were timed at (odd widths fall
    off the vector kernels: a pruned MobileNetV2 measured 1.27x the dense one)."""
    from compress_ir.targets import resolve_target

    result = compress(_cnn(), "channel-prune{target-latency=0.5,latency-timer=fake,"
                              f"latency-cache={tmp_path},latency-repeat=0}}")
    step = next(p for p in result.report["passes"] if p["name"].startswith("channel-prune"))
    lanes = resolve_target("x86").round_to
    assert step["stats"]["round_to"] == lanes > 1
    cut = [(g["size"], g["kept"]) for g in step["details"]["groups"]
           if g["status"] == "pruned" and g["kept"] < g["size"]]
    assert cut and all(k % lanes == 0 for _, k in cut), cut  # e.g. 24 -> 16, 32 -> 16


def test_changed_schedules_do_not_reuse_cached_tables(tmp_path, monkeypatch) -> None:
    """The cache is keyed by a hash of the schedule sources: timings of kernels that the
    current schedules no longer produce are not reused."""
    from compress_ir.passes.analysis import latency_table

    proto = _cnn()
    _prune(proto, tmp_path, repeat=0)
    monkeypatch.setattr(latency_table, "schedules_fingerprint", lambda: "other-kernels")
    CALLS.clear()
    again = _prune(proto, tmp_path, repeat=0)
    assert _allocation(again)["tables"]["measured"] > 0 and CALLS["prepare"] > 0
    scopes = [json.loads(f.read_text())["scope"] for f in tmp_path.glob("latency-*.json")]
    assert sorted(s["schedules"] for s in scopes)[-1] == "other-kernels" and len(scopes) == 2
