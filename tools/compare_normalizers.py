"""Compare pre-import normalisers for the TVM build: ours, onnxsim, onnxslim.

Why: `backend/normalize.py` rewrites what TVM's Relax importer and layout pass cannot
take; onnxsim and onnxslim are the well-kept general simplifiers. This prints, per
zoo model and tool, what is left that TVM 0.27 chokes on (Dropout, Identity, variadic
Sum/Mean/Max/Min, Shape nodes), whether the result still matches the original in
onnxruntime, and the time taken. Needs `pip install onnxsim==0.8.1 onnxslim==0.1.98`.

    python tools/compare_normalizers.py                  # light zoo + torchvision
    python tools/compare_normalizers.py extra.onnx --input-shape x=1,3,64,64
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from compress_ir.backend.build import fixed_input_specs
from compress_ir.backend.normalize import normalize_for_tvm, set_input_shapes
from compress_ir.frontends.placeholders import fill_placeholders

LIGHT = Path(os.path.dirname(onnx.__file__)) / "backend" / "test" / "data" / "light"
TORCHVISION = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "torchvision"
VARIADIC = {"Sum", "Mean", "Max", "Min"}


def ours(proto: onnx.ModelProto, specs: list) -> onnx.ModelProto:
    return normalize_for_tvm(proto, "<model>", specs)[0]


def onnxsim(proto: onnx.ModelProto, specs: list) -> onnx.ModelProto:
    import onnxsim as sim

    work = onnx.ModelProto()
    work.CopyFrom(proto)
    set_input_shapes(work, specs)
    out, ok = sim.simplify(work)
    if not ok:
        raise RuntimeError("onnxsim: check failed")
    return out


def onnxslim(proto: onnx.ModelProto, specs: list) -> onnx.ModelProto:
    import onnxslim as slim

    work = onnx.ModelProto()
    work.CopyFrom(proto)
    set_input_shapes(work, specs)
    return slim.slim(work)


TOOLS: dict[str, Callable[[onnx.ModelProto, list], onnx.ModelProto]] = {
    "ours": ours, "onnxsim": onnxsim, "onnxslim": onnxslim}


def leftovers(proto: onnx.ModelProto) -> str:
    """What TVM 0.27 still trips on in the rewritten model."""
    counts: dict[str, int] = {}
    for n in proto.graph.node:
        if n.op_type in ("Dropout", "Identity", "Shape") or (
                n.op_type in VARIADIC and len([i for i in n.input if i]) != 2):
            counts[n.op_type] = counts.get(n.op_type, 0) + 1
        elif n.op_type == "Sum":
            counts["Sum"] = counts.get("Sum", 0) + 1
    return ", ".join(f"{k}×{v}" for k, v in sorted(counts.items())) or "-"


def max_error(a: onnx.ModelProto, b: onnx.ModelProto, specs: list) -> float:
    rng = np.random.default_rng(0)
    feeds = {s.name: rng.standard_normal(s.shape).astype(s.dtype) for s in specs}
    run = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
           for m in (a, b)]
    want, got = (r.run(None, feeds) for r in run)
    return max(float(np.max(np.abs(w - g)) / (np.max(np.abs(w)) or 1.0))
               for w, g in zip(want, got, strict=True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", type=Path)
    parser.add_argument("--input-shape", action="append", default=[],
                        help="NAME=d0,d1,... for dynamic non-batch dims")
    args = parser.parse_args(argv)
    shapes = {k: tuple(int(d) for d in v.split(",")) for k, v in
              (s.split("=", 1) for s in args.input_shape)}
    paths = args.models or sorted(LIGHT.glob("*.onnx")) + sorted(TORCHVISION.glob("*.onnx"))
    print("| model | " + " | ".join(f"{t} left / err / s" for t in TOOLS) + " |")
    print("|---|" + "---|" * len(TOOLS))
    for path in paths:
        proto = fill_placeholders(onnx.load(path), seed=0)
        specs = fixed_input_specs(proto, 1, {k: v for k, v in shapes.items()
                                              if k in {i.name for i in proto.graph.input}})
        cells = []
        for tool in TOOLS.values():
            t0 = time.perf_counter()
            try:
                out = tool(proto, specs)
                cells.append(f"{leftovers(out)} / {max_error(proto, out, specs):.0e} / "
                             f"{time.perf_counter() - t0:.1f}")
            except Exception as exc:  # noqa: BLE001 - a comparison row, not a crash
                cells.append(f"failed: {str(exc).splitlines()[0][:60]}")
        print(f"| {path.stem} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
