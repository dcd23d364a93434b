"""`fold-bn`: fold inference-mode BatchNormalization into the preceding Conv/Gemm.

    W' = W * s,  b' = (b - mean) * s + beta,  s = gamma / sqrt(var + eps)

Exact up to float rounding, so the pass's numeric reference is its input. Runs after
pruning to drop the BN layers (and their parameters) the pruned model still carries.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from compress_ir.core.model import Model
from compress_ir.core.passes import Pass, PassContext, PassResult, register_pass


def _foldable(graph: gs.Graph, conv: gs.Node, bn: gs.Node) -> bool:
    out = conv.outputs[0]
    consts = [isinstance(t, gs.Constant) for t in (*conv.inputs[1:], *bn.inputs[1:5])]
    return (
        len(out.outputs) == 1
        and all(out is not g for g in graph.outputs)
        and all(consts)
        and not any(o.outputs for o in bn.outputs[1:])
        and bn.inputs[0] is out
    )


@register_pass("fold-bn")
class FoldBatchNorm(Pass):
    summary = "fold BatchNormalization into the preceding Conv (exact)"
    in_place = True

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        reference = model.to_proto()
        graph = model.graph
        folded = 0
        for bn in [n for n in graph.nodes if n.op == "BatchNormalization"]:
            conv = bn.inputs[0].inputs[0] if bn.inputs[0].inputs else None
            if conv is None or conv.op != "Conv" or not _foldable(graph, conv, bn):
                continue
            gamma, beta, mean, var = (np.asarray(t.values, np.float64) for t in bn.inputs[1:5])
            scale = gamma / np.sqrt(var + float(bn.attrs.get("epsilon", 1e-5)))
            weight = np.asarray(conv.inputs[1].values)
            bias = (
                np.asarray(conv.inputs[2].values, np.float64)
                if len(conv.inputs) > 2
                else np.zeros(weight.shape[0])
            )
            shape = (-1,) + (1,) * (weight.ndim - 1)
            new_w = (weight * scale.reshape(shape)).astype(weight.dtype)
            new_b = ((bias - mean) * scale + beta).astype(weight.dtype)
            conv.inputs = [
                conv.inputs[0],
                gs.Constant(f"{conv.name}__w_folded", new_w),
                gs.Constant(f"{conv.name}__b_folded", new_b),
            ]
            y = bn.outputs[0]
            bn.outputs.clear()
            bn.inputs.clear()
            conv.outputs = [y]
            folded += 1
        if not folded:
            return PassResult(model, modified=False, stats={"folded": 0})
        graph.cleanup()
        return PassResult(model, modified=True, stats={"folded": folded}, reference=reference)
