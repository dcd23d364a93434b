"""Per-layer latency tables for `channel-prune{target-latency=F}` (NetAdapt-style).

MACs are not latency: a layer's time on the target depends on how its widths fall on
the vector width, on its shape and on its schedule. So each weighted layer is built
alone (the same op, attributes and input spatial shape, random weights) at a few kept
widths -- output x input channels at full, 3/4, 1/2, 1/4 of the layer's width, rounded
up to the target's vector width -- and timed with the compiled kernels; the cost of the
layer at any other width is interpolated bilinearly between those points (clamped at
the smallest point: the greedy budget rarely goes below 1/4 of a layer). Depthwise convs
(group = channels) have one width, so a 1-D table.

Covered: Conv with group 1 or depthwise, Gemm (transA=0). Other weighted ops (MatMul,
ConvTranspose, grouped Conv) and everything non-weighted are in the `rest` constant:
the measured dense model minus the tables at full width, measured once.

Timing is a seam: a `Prepare` turns a one-layer (or whole) ONNX model into a callable
that returns one latency sample in ms. `LATENCY_TIMERS` names the factories (`tvm`:
local build, in `compress_ir.backend.layer_timer`); an RPC timer registers itself here,
and tests register deterministic fakes. Measurements are cached on disk, one JSON file
per (timer, target), keyed by (op, attributes, input shape, kept widths), so a second
run builds nothing it has timed before.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from compress_ir.core.errors import UsageError
from compress_ir.core.files import write_atomic
from compress_ir.core.ops import node_attrs

Sample = Callable[[], float]  # one latency sample, ms
Prepare = Callable[[onnx.ModelProto], Sample]  # build a model for the target, return its timer
TimerFactory = Callable[[Any], Prepare]  # TargetSpec -> Prepare

LATENCY_TIMERS: dict[str, TimerFactory] = {}
GRID = (1.0, 0.75, 0.5, 0.25)
SAMPLES = 7  # per table point: the fastest of these after one warm-up
CACHE_ENV = "COMPRESS_IR_LATENCY_CACHE"


def register_timer(name: str, factory: TimerFactory) -> None:
    """Make `latency-timer=NAME` available (the RPC helper, tests)."""
    LATENCY_TIMERS[name] = factory


def _tvm_factory(spec: Any) -> Prepare:
    from compress_ir.backend.layer_timer import tvm_prepare

    return tvm_prepare(spec)


register_timer("tvm", _tvm_factory)


def schedules_fingerprint() -> str:
    """Hash of the CPU schedule sources: cached timings are of the kernels these produced.

    Why: a latency table measured with older default schedules would keep steering the
    allocation after the kernels changed (stop 23 changed the kernels of most CNN layers
    while ~/.cache still held stop 22's tables).
    """
    from compress_ir.backend import schedule

    digest = hashlib.sha256()
    for path in sorted(Path(schedule.__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def default_cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "compress-ir" / "latency"


def best_ms(sample: Sample, count: int = SAMPLES) -> float:
    """Fastest of `count` samples after one warm-up: table points are timed one after
    another, not interleaved, so on a shared machine the minimum (the run least
    disturbed) is the comparable statistic; a median would carry each moment's load."""
    sample()
    return float(min(sample() for _ in range(count)))


# -- one-layer models -------------------------------------------------------------------
@dataclass(frozen=True)
class Layer:
    """A covered weighted layer: what a one-layer model of it needs, at full width."""

    node: str
    op: str
    attrs: tuple[tuple[str, Any], ...]
    x_shape: tuple[int, ...]  # data input at full width
    full_out: int
    full_in: int
    depthwise: bool
    bias: bool

    def key(self, cout: int, cin: int) -> dict[str, Any]:
        return {"op": self.op, "attrs": [list(a) for a in self.attrs], "x": list(self.x_shape),
                "depthwise": self.depthwise, "bias": self.bias, "out": cout, "in": cin}


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def layer_of(node: onnx.NodeProto, shapes: dict[str, tuple[int, ...]]) -> tuple[Layer | None, str]:
    """The table description of `node`, or None and why it is not covered."""
    attrs = node_attrs(node)
    x, w = shapes.get(node.input[0]), shapes.get(node.input[1])
    if x is None or w is None or any(d <= 0 for d in (*x, *w)):
        return None, "shapes unknown"
    bias = len(node.input) > 2 and bool(node.input[2])
    if node.op_type == "Conv":
        group = int(attrs.get("group", 1))
        depthwise = group > 1 and w[1] == 1 and group == x[1] == w[0]
        if group != 1 and not depthwise:
            return None, "grouped (not depthwise) Conv"
        kept = {k: _plain(v) for k, v in attrs.items() if k != "group"}
        kept.setdefault("kernel_shape", list(w[2:]))  # optional in ONNX: the weight's
        return Layer(node.name, "Conv", tuple(sorted(kept.items())), (1, *x[1:]), w[0],
                     x[1], depthwise, bias), ""
    if node.op_type == "Gemm":
        if int(attrs.get("transA", 0)) or len(x) != 2:
            return None, "Gemm with transA"
        trans_b = int(attrs.get("transB", 0))
        kept = {k: _plain(v) for k, v in attrs.items()}
        full_out = w[0] if trans_b else w[1]
        return Layer(node.name, "Gemm", tuple(sorted(kept.items())), (1, x[1]), full_out,
                     x[1], False, bias), ""
    return None, f"{node.op_type} has no latency table"


def layer_model(layer: Layer, cout: int, cin: int, seed: int = 0) -> onnx.ModelProto:
    """`layer` alone at `cout` x `cin` channels, with random weights."""
    rng = np.random.default_rng(seed)
    attrs = dict(layer.attrs)
    x_shape = [layer.x_shape[0], cin, *layer.x_shape[2:]]
    if layer.op == "Conv":
        if layer.depthwise:
            cin = cout
            x_shape[1] = cout
            attrs["group"] = cout
        kernel = attrs.get("kernel_shape")
        if kernel is None:
            raise UsageError(f"{layer.node}: Conv without kernel_shape")
        w_shape = [cout, 1 if layer.depthwise else cin, *kernel]
    else:
        w_shape = [cout, cin] if int(attrs.get("transB", 0)) else [cin, cout]
    inits = [numpy_helper.from_array(rng.standard_normal(w_shape).astype(np.float32) * 0.1, "W")]
    inputs = ["x", "W"]
    if layer.bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32), "B"))
        inputs.append("B")
    node = helper.make_node(layer.op, inputs, ["y"], name="layer", **attrs)
    graph = helper.make_graph(
        [node], "layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model)


def grid_widths(full: int, lanes: int) -> list[int]:
    """Full, 3/4, 1/2, 1/4 of `full`, rounded up to a multiple of `lanes` (distinct, descending)."""
    step = max(lanes, 1)
    out = {full}
    for f in GRID:
        n = max(1, int(np.ceil(f * full / step)) * step) if full > step else max(1, round(f * full))
        out.add(min(full, n))
    return sorted(out, reverse=True)


# -- the tables ---------------------------------------------------------------------------
@dataclass
class LayerTable:
    """Measured ms of one layer on a grid of (out, in) widths; interpolated in between."""

    layer: Layer
    outs: list[int]  # ascending
    ins: list[int]  # ascending ([full_in] for depthwise: width follows `out`)
    ms: np.ndarray  # [len(outs), len(ins)], made non-decreasing in both widths

    def __post_init__(self) -> None:
        # a narrower layer measured slower than a wider one is taken as noise (or a schedule
        # cliff the greedy should not chase): the envelope keeps the prediction monotone
        self.ms = np.maximum.accumulate(np.maximum.accumulate(self.ms, axis=0), axis=1)

    def at(self, cout: float, cin: float) -> float:
        """Interpolated ms at `cout` x `cin` kept channels (clamped to the grid)."""
        row = [float(np.interp(cin, self.ins, self.ms[i])) for i in range(len(self.outs))]
        return float(np.interp(cout, self.outs, row))

    @property
    def full(self) -> float:
        return float(self.ms[-1, -1])


@dataclass
class LatencyTables:
    """Every covered layer's table, the `rest` constant, and how they were obtained.

    Layers timed alone can add up to more than the whole model (their own layout
    transforms, no fusion): then `rest` would be negative, and instead every table is
    scaled by `scale` = dense / sum of the tables at full width, with `rest` 0.
    """

    tables: dict[str, LayerTable]
    dense_ms: float
    rest_ms: float
    uncovered: dict[str, str]
    stats: dict[str, Any] = field(default_factory=dict)
    scale: float = 1.0

    def predict(self, widths: dict[str, tuple[float, float]]) -> float:
        """Predicted ms with each table's layer at (out, in) kept channels (missing: full)."""
        total = self.rest_ms
        for name, table in self.tables.items():
            cout, cin = widths.get(name, (table.layer.full_out, table.layer.full_in))
            total += self.scale * table.at(cout, cin)
        return total


class LatencyCache:
    """ms per (timer, target, layer key) in one JSON file; written atomically per layer."""

    def __init__(self, directory: Path | None, scope: dict[str, Any]) -> None:
        digest = hashlib.sha256(json.dumps(scope, sort_keys=True).encode()).hexdigest()[:16]
        self.path = None if directory is None else Path(directory) / f"latency-{digest}.json"
        self.scope = scope
        self.values: dict[str, float] = {}
        if self.path is not None and self.path.exists():
            try:
                data = json.loads(self.path.read_text())
                self.values = {k: float(v) for k, v in data.get("ms", {}).items()}
            except (OSError, ValueError) as exc:
                raise UsageError(f"latency cache {self.path}: unreadable ({exc}); delete it"
                                 ) from None
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(entry: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps(entry, sort_keys=True).encode()).hexdigest()

    def get(self, entry: dict[str, Any], measure: Callable[[], float]) -> float:
        k = self.key(entry)
        if k in self.values:
            self.hits += 1
            return self.values[k]
        self.misses += 1
        self.values[k] = float(measure())
        return self.values[k]

    def save(self) -> None:
        if self.path is None or not self.misses:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {"scope": self.scope, "ms": self.values}
        write_atomic(self.path, (json.dumps(data, indent=0, sort_keys=True) + "\n").encode())


def measure_tables(proto: onnx.ModelProto, shapes: dict[str, tuple[int, ...]],
                   prepare: Prepare, lanes: int, cache: LatencyCache,
                   prepare_model: Prepare | None = None) -> LatencyTables:
    """Time every covered layer on its width grid (cached), and the dense model once
    (with `prepare_model` if given: a caller that times the dense model again later
    can keep its build)."""
    start = time.perf_counter()
    tables: dict[str, LayerTable] = {}
    uncovered: dict[str, str] = {}
    from compress_ir.core.ops import WEIGHTED_OPS

    for node in proto.graph.node:
        if node.op_type not in WEIGHTED_OPS:
            continue
        layer, why = layer_of(node, shapes)
        if layer is None:
            uncovered[node.name] = why
            continue
        outs = sorted(grid_widths(layer.full_out, lanes))
        ins = [layer.full_in] if layer.depthwise else sorted(grid_widths(layer.full_in, lanes))
        ms = np.zeros((len(outs), len(ins)))
        for i, co in enumerate(outs):
            for j, ci in enumerate(ins):
                ms[i, j] = cache.get(layer.key(co, ci), lambda co=co, ci=ci, layer=layer: best_ms(
                    prepare(layer_model(layer, co, ci))))
        tables[node.name] = LayerTable(layer, outs, ins, ms)
        cache.save()
    table_s = time.perf_counter() - start
    whole = prepare_model or prepare
    dense_ms = cache.get({"model": hashlib.sha256(proto.SerializeToString()).hexdigest()},
                         lambda: best_ms(whole(proto)))
    cache.save()
    layers_full = sum(t.full for t in tables.values())
    rest, scale = dense_ms - layers_full, 1.0
    if rest < 0 and layers_full > 0:
        rest, scale = 0.0, dense_ms / layers_full
    stats = {"layers": len(tables), "points": int(sum(t.ms.size for t in tables.values())),
             "measured": cache.misses, "cached": cache.hits,
             "table_seconds": round(table_s, 2),
             "seconds": round(time.perf_counter() - start, 2),
             "cache": str(cache.path) if cache.path else None,
             "layers_alone_ms": round(layers_full, 4), "scale": round(scale, 4)}
    return LatencyTables(tables, float(dense_ms), float(rest), uncovered, stats, scale)
