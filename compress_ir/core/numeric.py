"""Numeric comparison in onnxruntime: the ground truth for every transform.

Transforms are judged by running the transformed model and its reference on the
same inputs (calibration samples, or seeded realistic random inputs at concrete
shapes) and comparing every output with `rel_error`, an allclose-style error
scaled by the output's spread.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import onnx
import onnxruntime as ort

from compress_ir.core.errors import ModelRunError
from compress_ir.core.feeds import realistic_inputs
from compress_ir.core.shapes import Shapes, resolve_shapes

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
    opts.log_severity_level = 4  # run failures become one-line errors; no log on stderr
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
    proto: onnx.ModelProto, shapes: Shapes | None = None
) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Concrete shape and dtype of each real graph input (`shapes` where given, else assumed)."""
    concrete = resolve_shapes(proto, shapes).inputs
    return {name: (tuple(int(d) for d in concrete[name]), dtype)
            for name, (_, dtype) in graph_inputs(proto).items()}


def random_inputs(
    proto: onnx.ModelProto, seed: int = 0, shapes: Shapes | None = None
) -> dict[str, np.ndarray]:
    """Seeded realistic feeds (`feeds.py`): ids within their tables, 0/1 masks, normal floats.

    Shapes are `shapes` (input name -> dims) where given; other symbolic dims take
    `resolve_shapes`' assumption (batch 1, sequence 128, spatial 224).
    """
    return realistic_inputs(proto, resolve_shapes(proto, shapes).inputs, seed)


def run(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """All outputs of `proto` on `feeds`; an onnxruntime failure is a ModelRunError."""
    sess = session(proto)
    names = [o.name for o in sess.get_outputs()]
    try:
        return dict(zip(names, sess.run(names, feeds), strict=True))
    except RUN_ERRORS as exc:
        shapes = ", ".join(f"{k}{list(np.shape(v))}:{np.asarray(v).dtype}"
                           for k, v in feeds.items())
        raise ModelRunError(f"onnxruntime fails on inputs {shapes}: {last_line(exc)}") from None


RUN_ERRORS = (ort.capi.onnxruntime_pybind11_state.Fail,
               ort.capi.onnxruntime_pybind11_state.InvalidArgument,
               ort.capi.onnxruntime_pybind11_state.RuntimeException)


def last_line(exc: BaseException) -> str:
    """The message of an onnxruntime error without its `[ONNXRuntimeError] : 2 : X :` prefix."""
    text = str(exc).strip().splitlines()
    line = text[-1].strip() if text else type(exc).__name__
    return re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", line)


# Scale floor of the error metric. fp32 kernels carry absolute errors of a few ulps
# of 1.0 (onnxruntime's Sigmoid near 0 is off by ~1.2e-7 absolute), so an output whose
# values and spread are all tiny (a saturated sigmoid, a near-zero map) is judged at
# this scale rather than at its own: at the default tolerance 1e-4, errors up to
# 1e-6 absolute pass there. A wrong slice moves outputs by O(their size), far above.
SPREAD_FLOOR = 1e-2


def _as_pair(got: np.ndarray, want: np.ndarray) -> tuple[np.ndarray, np.ndarray] | float:
    """Both as float64, or the error itself when no elementwise comparison is possible
    (inf for different shapes, 0 for empty outputs)."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        return float("inf")
    if got.size == 0:
        return 0.0
    return got, want


def rel_error(got: np.ndarray, want: np.ndarray) -> float:
    """The check's error: max |got - want| / (|want| + max(std(want), SPREAD_FLOOR)).

    `rel_error <= tol` is numpy's `allclose` with rtol = tol and atol = tol times
    the output's spread: near-zero or saturated outputs are not judged relative to
    their own tiny values (which turns rounding noise into false alarms), large
    values are judged relative to themselves. Different shapes or a non-finite
    difference (where the two do not agree exactly, NaN included) give inf.
    """
    pair = _as_pair(got, want)
    if isinstance(pair, float):
        return pair
    got, want = pair
    same = (got == want) | (np.isnan(got) & np.isnan(want))
    if not np.all(same | (np.isfinite(got) & np.isfinite(want))):
        return float("inf")
    finite = want[np.isfinite(want)]
    spread = max(float(np.std(finite)) if finite.size else 0.0, SPREAD_FLOOR)
    with np.errstate(invalid="ignore"):
        diff = np.where(same, 0.0, np.abs(got - want))
        scale = np.where(same, 1.0, np.abs(want) + spread)
    return float(np.max(diff / scale))


def max_relative_error(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| / max |want|: the metric before `rel_error` (kept for comparison)."""
    pair = _as_pair(got, want)
    if isinstance(pair, float):
        return pair
    got, want = pair
    scale = float(np.max(np.abs(want)))
    diff = float(np.max(np.abs(got - want)))
    if not np.isfinite(diff):
        return float("inf")
    return diff / scale if scale > 0 else diff


def output_errors(
    model: onnx.ModelProto, reference: onnx.ModelProto,
    feeds: dict[str, np.ndarray] | Sequence[dict[str, np.ndarray]],
) -> dict[str, float]:
    """`rel_error` per output of `reference`, worst over one or several feed dicts.

    The reference runs first: when it fails the inputs are at fault (ModelRunError
    says so), when only `model` fails the transform is.
    """
    batches = [feeds] if isinstance(feeds, dict) else list(feeds)
    worst: dict[str, float] = {}
    for batch in batches:
        want = run(reference, batch)
        try:
            got = run(model, batch)
        except ModelRunError as exc:
            raise ModelRunError(f"the transformed model {exc}; the reference runs on the "
                                "same inputs") from None
        for k, w in want.items():
            err = rel_error(got[k], w) if k in got else float("inf")
            worst[k] = max(worst.get(k, 0.0), err)
    return worst


def compare(
    model: onnx.ModelProto,
    reference: onnx.ModelProto,
    seed: int = 0,
    shapes: Shapes | None = None,
    feeds: dict[str, np.ndarray] | Sequence[dict[str, np.ndarray]] | None = None,
) -> float:
    """Worst `rel_error` over all outputs of `model` vs `reference`.

    Inputs are `feeds` (one dict or several batches, e.g. calibration samples) or
    seeded realistic random inputs at `shapes` (default: the resolved assumptions).
    """
    if feeds is None:
        feeds = random_inputs(reference, seed, shapes)
    return max(output_errors(model, reference, feeds).values(), default=0.0)
