"""`--benchmark`: onnxruntime on the original and compressed models vs the TVM artifact.

All three see the same seeded inputs in the same process, one after another.
onnxruntime runs with its graph optimisations on (its production setting) and is
timed by wall clock around `session.run`; the artifact is timed by TVM's VM
`time_evaluator` (inputs already on the device). Ratios are time ratios: < 1 means
the numerator is faster.
"""

from __future__ import annotations

from typing import Any

import onnx

from compress_ir.backend.artifact import Artifact, random_inputs
from compress_ir.backend.runner import Session, local_run_blocker, wall_clock_ms
from compress_ir.core import numeric

DEFAULT_REPEAT = 20


def _ort_ms(proto: onnx.ModelProto, feeds: dict[str, Any], repeat: int) -> dict[str, Any]:
    sess = numeric.session(proto, optimize=True)
    names = [o.name for o in sess.get_outputs()]
    return {**wall_clock_ms(lambda: sess.run(names, feeds), repeat), "method": "wall clock",
            "where": "local"}


def _ratio(a: dict[str, Any], b: dict[str, Any]) -> float | None:
    if "median_ms" not in a or "median_ms" not in b or not b["median_ms"]:
        return None
    return round(a["median_ms"] / b["median_ms"], 4)


def benchmark(original: onnx.ModelProto, compressed: onnx.ModelProto, art: Artifact,
              repeat: int = DEFAULT_REPEAT, seed: int = 0, rpc: str | None = None
              ) -> dict[str, Any]:
    """Median latencies (ms) of the three, and their ratios."""
    feeds = random_inputs(art.inputs, seed)
    result: dict[str, Any] = {"repeat": repeat, "seed": seed,
                              "inputs": {s.name: list(s.shape) for s in art.inputs}}
    result["onnxruntime_original"] = _ort_ms(original, feeds, repeat)
    result["onnxruntime_compressed"] = _ort_ms(compressed, feeds, repeat)
    blocker = None if rpc else local_run_blocker(art.meta)
    if blocker:
        result["tvm"] = {"ran": False, "reason": blocker}
    else:
        with Session(art, rpc) as session:
            result["tvm"] = session.time(feeds, repeat)
    ort_o, ort_c, tvm = (result[k] for k in ("onnxruntime_original", "onnxruntime_compressed",
                                             "tvm"))
    result["ratios"] = {
        "ort_compressed_vs_original": _ratio(ort_c, ort_o),
        "tvm_vs_ort_compressed": _ratio(tvm, ort_c),
        "tvm_vs_ort_original": _ratio(tvm, ort_o),
    }
    return result
