"""A reproducer for a failed numeric check: the failing pass's input, cut to what differs.

Why: "pass X differs from its reference on a 300 MB model" is hard to act on. The
reproducer is that pass's input model (as the pass got it) reduced to the nodes the
differing outputs depend on (`graph.extract`), with the pass and the errors in its
metadata, so `compress-ir repro.onnx --pass '<spec>'` shows the failure on less.
"""

from __future__ import annotations

from typing import Any

import onnx

from compress_ir.core.graph import extract
from compress_ir.core.model import Model
from compress_ir.core.passes import Pass


def reproducer(p: Pass, model: Model, check: dict[str, Any]) -> tuple[onnx.ModelProto,
                                                                      dict[str, Any]]:
    """The reproducer model and a summary (for the report) of a failed `check` of `p`."""
    tolerance = check["tolerance"]
    per_output = check.get("per_output", {})
    bad = sorted(name for name, err in per_output.items() if not err <= tolerance)
    full = model.to_proto()
    cut = extract(full, bad) if bad else full
    try:
        onnx.checker.check_model(cut)
    except onnx.checker.ValidationError:
        cut = full  # never hand out a broken model: the whole input still reproduces
    meta = {"compress_ir.repro.pass": p.spec(),
            "compress_ir.repro.outputs": ",".join(bad),
            "compress_ir.repro.rel_error": repr(check["rel_error"]),
            "compress_ir.repro.tolerance": repr(tolerance)}
    for key, value in meta.items():
        cut.metadata_props.add(key=key, value=value)
    info = {"pass": p.spec(), "outputs": bad, "nodes": len(cut.graph.node),
            "nodes_in_input": len(full.graph.node), "cut": cut is not full}
    return cut, info
