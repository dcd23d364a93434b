"""Pad attention to a whole number of vectors of keys, once per attention, exactly.

Why: with a token count that no vector width divides (ViT's 197 = 196 patches + the class
token), every kernel of an attention's score path is ragged: Q.K^T pads its columns and
crops them back, the softmax row (197) runs scalar, P.V crops again. onnxruntime's
attention was 2-4x faster there (ViT-S on Zen 5: softmax 0.24 vs 0.06 ms a call; the
same softmax over 208 keys runs in 0.06 ms). Here, for the Relax pattern

    s = matmul(q, kt) -> element-wise (scale, mask add, cast) -> softmax(-1) -> [cast]
      -> matmul(p, v)

K^T gets zero columns and V zero rows up to the next multiple of the vector width; the
element-wise operands that span the key axis (additive masks, ALiBi, a Where's condition)
are padded too (zeros; a divisor with ones, so no 0/0), and a constant key bias (0 for real
keys, the dtype's minimum for padded ones) is added right before the softmax. Padded keys
then get probability exp(min - max) = 0 and meet zero rows of V, so the result equals the
original up to the rounding of the softmax sum. Queries are padded to the row tile (8) and
P.V's result cropped back, so no shape outside the pattern changes; the pads and the crop
fuse into the head split/merge transposes around them. The old chain is left in place and
removed by dead-code elimination when nothing else reads it.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from compress_ir.backend.schedule.cpu import PAD_ROWS
from compress_ir.backend.schedule.rewrite import (
    op_name,
    rewrite_functions,
    round_up,
    static_shape,
)

UNARY = ("relax.astype",)
# element-wise ops of the score chain -> (argument positions the scores may take, value the
# other operands are padded with): a divisor pads with ones (0/0 would be NaN), a where's
# condition with False (the padded keys then take its other branch; the key bias follows)
ELEMENTWISE: dict[str, tuple[tuple[int, ...], float]] = {
    "relax.multiply": ((0, 1), 0.0), "relax.add": ((0, 1), 0.0),
    "relax.subtract": ((0, 1), 0.0), "relax.divide": ((0,), 1.0),
    "relax.where": ((1, 2), 0.0),
}


@mutator
class _PadKeys(PyExprMutator):
    def __init__(self, mod: tvm.IRModule, lanes: int) -> None:
        super().__init__(mod)
        self.lanes = lanes
        self.rewritten = 0

    def _value(self, var: relax.Expr) -> relax.Expr | None:
        return self.lookup_binding(var) if isinstance(var, relax.Var) else None

    def _match(self, call: relax.Call) -> tuple | None:
        """The pattern ending at `call` = matmul(p, v), or None."""
        p, v = call.args[0], call.args[1]
        unary, x = [], p
        while op_name(self._value(x)) in UNARY:
            unary.append(self._value(x))
            x = self._value(x).args[0]
        sm = self._value(x)
        scores_shape = static_shape(x)
        if op_name(sm) != "relax.nn.softmax" or scores_shape is None or len(scores_shape) < 2:
            return None
        if int(sm.attrs.axis) not in (-1, len(scores_shape) - 1):
            return None
        keys = scores_shape[-1]
        if keys % self.lanes == 0 or keys < self.lanes:
            return None
        chain, s = [], sm.args[0]
        while op_name(self._value(s)) in (*ELEMENTWISE, *UNARY):
            node = self._value(s)
            if op_name(node) in UNARY:
                chain.append((node, 0))
                s = node.args[0]
                continue
            main = [i for i in ELEMENTWISE[op_name(node)][0]
                    if static_shape(node.args[i]) == scores_shape]
            if len(main) != 1:
                return None
            for i, other in enumerate(node.args):
                oshape = static_shape(other)
                if i == main[0]:
                    continue
                if oshape is None or (oshape and oshape[-1] not in (1, keys)) or \
                        (len(oshape) >= 2 and oshape[-2] not in (1, scores_shape[-2])):
                    return None
            chain.append((node, main[0]))
            s = node.args[main[0]]
        mm = self._value(s)
        if op_name(mm) != "relax.matmul" or static_shape(s) != scores_shape:
            return None
        vshape, ktshape = static_shape(v), static_shape(mm.args[1])
        if ktshape is None or vshape is None or ktshape[-1] != keys or vshape[-2] != keys:
            return None
        return mm, list(reversed(chain)), unary[::-1], keys

    def visit_call_(self, call: relax.Call) -> relax.Expr:  # noqa: D401 - visitor hook
        call = super().visit_call_(call)
        if op_name(call) != "relax.matmul":
            return call
        found = self._match(call)
        if found is None:
            return call
        mm, chain, unary, keys = found
        queries = static_shape(mm.args[0])[-2]
        extra = round_up(keys, self.lanes) - keys
        extra_rows = round_up(queries, PAD_ROWS) - queries
        bb = self.builder_

        def pad(x: relax.Expr, rows: int = 0, cols: int = 0, value: float = 0.0
                ) -> relax.Expr:
            """`value` after the last two axes' ends (rows: axis -2, cols: axis -1)."""
            if not rows and not cols:
                return x
            width = [0] * (2 * len(static_shape(x)))
            width[-1] = cols
            if rows:  # rows_of gives rows only to operands of rank >= 2
                width[-3] = rows
            return bb.emit(relax.op.nn.pad(x, width, pad_value=value))

        def rows_of(x: relax.Expr) -> int:
            shape = static_shape(x)
            return extra_rows if len(shape) >= 2 and shape[-2] == queries else 0

        def cols_of(x: relax.Expr) -> int:
            shape = static_shape(x)
            return extra if shape and shape[-1] == keys else 0

        s = bb.emit(relax.Call(mm.op, [pad(mm.args[0], rows=extra_rows),
                                       pad(mm.args[1], cols=extra)], mm.attrs))
        for node, main in chain:
            if op_name(node) in UNARY:
                s = bb.emit(relax.Call(node.op, [s], node.attrs))
                continue
            fill = ELEMENTWISE[op_name(node)][1]
            args = [s if i == main else pad(a, rows_of(a), cols_of(a), fill)
                    for i, a in enumerate(node.args)]
            s = bb.emit(relax.Call(node.op, args, node.attrs))
        dtype = str(s.ty.dtype)
        bias = np.zeros(keys + extra, dtype=dtype)
        bias[keys:] = np.finfo(dtype).min
        s = bb.emit(relax.op.add(s, relax.const(bias)))
        p = bb.emit(relax.op.nn.softmax(s, axis=-1))
        for node in unary:
            p = bb.emit(relax.Call(node.op, [p], node.attrs))
        self.rewritten += 1
        out = relax.Call(call.op, [p, pad(call.args[1], rows=extra)], call.attrs)
        if not extra_rows:
            return out
        out = bb.emit(out)
        return relax.op.strided_slice(out, axes=[len(static_shape(out)) - 2], begin=[0],
                                      end=[queries])


def pad_attention_keys(mod: tvm.IRModule, lanes: int) -> tuple[tvm.IRModule, int]:
    """Rewrite every matching attention of the module's Relax functions; returns the module
    and how many attentions were padded."""
    rewriter = _PadKeys(mod, lanes)
    return rewrite_functions(rewriter, mod, lambda: rewriter.rewritten, dce=True)


def PadAttentionKeys(lanes: int) -> tvm.transform.Pass:  # noqa: N802 - TVM pass naming
    """Pass form of `pad_attention_keys` for a `Sequential`."""

    @tvm.transform.module_pass(opt_level=0, name="PadAttentionKeys")
    def _pass(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return pad_attention_keys(mod, lanes)[0]

    return _pass
