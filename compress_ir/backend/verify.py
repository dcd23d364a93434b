"""Check a compiled artifact against onnxruntime on the same ONNX model.

Seeded random inputs of the artifact's shapes (integer ids and masks drawn within the
model's domain, as recorded in meta.json) go to both; the worst relative max
error (`numeric.rel_error`) over the outputs must stay within the tolerance.
Where the artifact cannot run (arm or cuda without `--rpc`, x86 code for a CPU
feature this host lacks) the result says so and is never claimed verified.
"""

from __future__ import annotations

from typing import Any

import onnx

from compress_ir.backend.artifact import Artifact, artifact_inputs
from compress_ir.backend.runner import Session, local_run_blocker
from compress_ir.core import numeric
from compress_ir.core.errors import NumericMismatchError


def verify_artifact(art: Artifact, proto: onnx.ModelProto, options: Any) -> dict[str, Any]:
    """{"ran": True, "rel_error", "tolerance", "ok", ...} or {"ran": False, "reason"}."""
    if not options.rpc:
        blocker = local_run_blocker(art.meta)
        if blocker:
            return {"ran": False, "reason": f"{blocker}; not verified"}
    feeds = artifact_inputs(art.inputs, options.seed)
    want = numeric.run(proto, feeds)  # first: inputs the model cannot take are named here
    with Session(art, options.rpc, options.rpc_timeout) as session:
        got = session.run(feeds)
    errors = {name: numeric.rel_error(got[name], want[name]) for name in want}
    worst = max(errors.values(), default=0.0)
    result = {"ran": True, "where": session.where, "against": "onnxruntime",
              "seed": options.seed, "rel_error": worst, "per_output": errors,
              "tolerance": options.tolerance, "ok": bool(worst <= options.tolerance)}
    if not result["ok"]:
        name = max(errors, key=errors.get)
        raise NumericMismatchError(
            f"compiled {art.target} model differs from onnxruntime: output {name!r} rel. error "
            f"{worst:.3g} > tolerance {options.tolerance:.3g}")
    return result
