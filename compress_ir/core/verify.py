"""Structural verification run after every transform: checker + strict shape inference.

A transform that leaves a dangling input, a wrong weight shape or a broken
attribute is caught here, before anything is written, instead of at deploy time.
"""

from __future__ import annotations

import onnx

from compress_ir.core.errors import VerificationError
from compress_ir.core.model import Model, infer_proto_shapes


def verify_proto(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Check a proto and return it with inferred shapes; raise VerificationError."""
    try:
        onnx.checker.check_model(proto)
        inferred = infer_proto_shapes(proto, strict=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise VerificationError(f"invalid model: {first}") from None
    return inferred


def verify_model(model: Model, expected_outputs: dict[str, tuple] | None = None) -> None:
    """Verify `model`; optionally require graph outputs to keep their static shapes."""
    inferred = verify_proto(model.to_proto())
    if expected_outputs:
        for out in inferred.graph.output:
            want = expected_outputs.get(out.name)
            got = _static_shape(out)
            if want is not None and got is not None and tuple(got) != tuple(want):
                raise VerificationError(
                    f"graph output {out.name!r} changed shape from {list(want)} to {list(got)}"
                )


def _static_shape(value_info: onnx.ValueInfoProto) -> list[int | str] | None:
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim]


def output_shapes(proto: onnx.ModelProto) -> dict[str, tuple]:
    """Static shapes of the graph outputs (dims as ints or symbolic names)."""
    return {o.name: tuple(_static_shape(o) or ()) for o in proto.graph.output}
