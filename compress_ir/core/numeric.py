"""Numeric comparison in onnxruntime: the ground truth for every transform.

Transforms are judged by running the transformed model and its reference on the
same seeded random inputs and comparing the relative max error of every output.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

_ORT_DTYPES = {
    onnx.TensorProto.FLOAT: np.float32,
    onnx.TensorProto.DOUBLE: np.float64,
    onnx.TensorProto.FLOAT16: np.float16,
    onnx.TensorProto.INT64: np.int64,
    onnx.TensorProto.INT32: np.int32,
    onnx.TensorProto.BOOL: np.bool_,
    onnx.TensorProto.UINT8: np.uint8,
    onnx.TensorProto.INT8: np.int8,
}


def session(proto: onnx.ModelProto, optimize: bool = False) -> ort.InferenceSession:
    """An onnxruntime CPU session; optimisations off by default (compare the graph as is).

    Activation capture turns them on: requested tensors are graph outputs, which
    onnxruntime never fuses away, and statistics need speed, not bit-exactness.
    """
    opts = ort.SessionOptions()
    opts.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if optimize
        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    opts.log_severity_level = 3
    return ort.InferenceSession(
        proto.SerializeToString(), opts, providers=["CPUExecutionProvider"]
    )


def graph_inputs(proto: onnx.ModelProto) -> dict[str, tuple[list[int | str], np.dtype]]:
    """Declared dims (ints, or names for symbolic dims) and dtype of each real graph input."""
    inits = {i.name for i in proto.graph.initializer}
    specs = {}
    for inp in proto.graph.input:
        if inp.name in inits:
            continue
        t = inp.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim]
        specs[inp.name] = (dims, np.dtype(_ORT_DTYPES.get(t.elem_type, np.float32)))
    return specs


def input_specs(
    proto: onnx.ModelProto, dim_values: dict[str, int] | None = None
) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Concrete shape and dtype of each real graph input (symbolic dims -> 1 or given)."""
    dim_values = dim_values or {}
    return {
        name: (
            tuple(d if isinstance(d, int) and d > 0 else dim_values.get(str(d), 1) for d in dims),
            dtype,
        )
        for name, (dims, dtype) in graph_inputs(proto).items()
    }


def random_inputs(
    proto: onnx.ModelProto, seed: int = 0, dim_values: dict[str, int] | None = None
) -> dict[str, np.ndarray]:
    """Seeded random feeds for every graph input (normal floats, small ints)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for name, (shape, dtype) in input_specs(proto, dim_values).items():
        if np.issubdtype(dtype, np.floating):
            feeds[name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[name] = rng.integers(0, 2, shape).astype(dtype)
        else:
            feeds[name] = rng.integers(0, 4, shape).astype(dtype)
    return feeds


def run(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = session(proto)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds), strict=True))


def rel_error(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| / max |want| (absolute when `want` is all zeros)."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        return float("inf")
    if got.size == 0:
        return 0.0
    scale = float(np.max(np.abs(want)))
    diff = float(np.max(np.abs(got - want)))
    if not np.isfinite(diff):
        return float("inf")
    return diff / scale if scale > 0 else diff


def compare(
    model: onnx.ModelProto,
    reference: onnx.ModelProto,
    seed: int = 0,
    dim_values: dict[str, int] | None = None,
) -> float:
    """Worst relative error over all outputs of `model` vs `reference` on random inputs."""
    feeds = random_inputs(reference, seed, dim_values)
    got, want = run(model, feeds), run(reference, feeds)
    return max((rel_error(got[k], want[k]) for k in want), default=0.0)
