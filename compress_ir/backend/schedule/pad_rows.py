"""Carry a ragged token dimension padded through row-wise layers, cropping only where needed.

Why: a matmul whose rows no register tile divides (ViT's 197 tokens) pads them inside its
own kernel, copying the input in and the result out. In a transformer every Linear does so:
six copies of the residual stream per layer. Here each such matmul with a constant weight
gets a padded twin computed on rows rounded up to the tile (8). Layers that treat rows
independently carry the twin on:
- matmuls with a constant weight;
- element-wise ops whose other operands broadcast along rows or have twins themselves
  (bias, residual add, GELU, casts);
- LayerNorm / RMSNorm over the last axis.

Every original value becomes a crop of its twin (`strided_slice`). Dead code elimination then
drops the originals no consumer reads. The crops that stay (before an attention's head split,
at the output) fuse into the reshapes and transposes next to them. The padded rows never mix
with real ones: every op on the twin path works row by row. Cropping restores the exact
values, so no result changes.
"""

from __future__ import annotations

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

UNARY_ROWWISE = ("relax.astype", "relax.erf", "relax.tanh", "relax.exp", "relax.sigmoid",
                 "relax.nn.relu", "relax.nn.gelu", "relax.nn.gelu_tanh", "relax.nn.silu",
                 "relax.sqrt", "relax.rsqrt", "relax.negative")
BINARY_ROWWISE = ("relax.add", "relax.subtract", "relax.multiply", "relax.divide",
                  "relax.maximum", "relax.minimum", "relax.power")
NORMS = ("relax.nn.layer_norm", "relax.nn.rms_norm")
MIN_ROWS = 16  # shorter row counts are not worth a twin


def ragged(rows: int) -> bool:
    """No row tile from 4 to 8 divides `rows` (the kernel would pad them itself)."""
    return rows >= MIN_ROWS and not any(rows % t == 0 for t in range(4, PAD_ROWS + 1))


@mutator
class _PadRows(PyExprMutator):
    def __init__(self, mod: tvm.IRModule) -> None:
        super().__init__(mod)
        self.twin: dict[relax.Var, relax.Var] = {}
        self.rows: dict[relax.Var, int] = {}
        self.seeded = 0

    def _pad(self, x: relax.Expr, rows: int) -> relax.Expr:
        shape = static_shape(x)
        width = [0] * (2 * len(shape))
        width[-3] = round_up(rows, PAD_ROWS) - rows
        return self.builder_.emit(relax.op.nn.pad(x, width))

    def _twin_of(self, x: relax.Expr, rows: int, allow_pad: bool) -> relax.Expr | None:
        """x's padded form: its twin, x itself when it broadcasts along rows, a fresh pad of
        x when `allow_pad`, else None (not row-wise here)."""
        if isinstance(x, relax.Var) and x in self.twin and self.rows[x] == rows:
            return self.twin[x]
        shape = static_shape(x)
        if shape is None:
            return None
        if len(shape) < 2 or shape[-2] == 1:
            return x  # broadcasts along the row axis (bias, scalar, per-column vector)
        if shape[-2] == rows and allow_pad:
            return self._pad(x, rows)
        return None

    def _twin_call(self, call: relax.Call) -> tuple[relax.Expr, int] | None:
        """The call recomputed on twins, and its row count; None when not row-wise."""
        op, out = op_name(call), static_shape(call)
        if op is None or out is None or len(out) < 2:
            return None
        rows = out[-2]
        if not ragged(rows):
            return None
        args = list(call.args)
        if op == "relax.matmul":
            weight = static_shape(args[1])
            constant = isinstance(args[1], (tvm.ir.Constant, tvm.ir.GenericConst))
            if not constant or weight is None or len(weight) != 2:
                return None
            x = self._twin_of(args[0], rows, allow_pad=True)
            if x is None:
                return None
            if not (isinstance(args[0], relax.Var) and args[0] in self.twin):
                self.seeded += 1
            return relax.Call(call.op, [x, args[1]], call.attrs), rows
        has_twin = any(isinstance(a, relax.Var) and a in self.twin for a in args)
        if not has_twin:
            return None
        if op in NORMS:
            axes = [int(a) for a in call.attrs.axes]
            if axes not in ([-1], [len(out) - 1]):
                return None
            x = self._twin_of(args[0], rows, allow_pad=False)
            if x is None:
                return None
            return relax.Call(call.op, [x, *args[1:]], call.attrs), rows
        if op in UNARY_ROWWISE or op in BINARY_ROWWISE:
            new = [self._twin_of(a, rows, allow_pad=True) for a in args]
            if any(a is None for a in new):
                return None
            return relax.Call(call.op, new, call.attrs), rows
        return None

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:  # noqa: D401 - hook
        if not isinstance(binding.var, relax.DataflowVar):  # a block output stays as it is
            super().visit_var_binding_(binding)
            return
        value = self.visit_expr(binding.value)
        twin = self._twin_call(value) if isinstance(value, relax.Call) else None
        if twin is None:
            super().visit_var_binding_(binding)
            return
        call, rows = twin
        tvar = self.builder_.emit(call)
        crop = relax.op.strided_slice(tvar, axes=[len(static_shape(value)) - 2], begin=[0],
                                      end=[rows])
        new_var = self.builder_.emit(crop)
        self.set_var_remap(binding.var, new_var)
        self.twin[new_var] = tvar
        self.rows[new_var] = rows


def pad_rows(mod: tvm.IRModule) -> tuple[tvm.IRModule, int]:
    """Give every ragged-row matmul with a constant weight a padded twin and carry it
    through row-wise layers; returns the module and how many twin chains were seeded."""
    rewriter = _PadRows(mod)
    return rewrite_functions(rewriter, mod, lambda: rewriter.seeded, dce=True)


@tvm.transform.module_pass(opt_level=0, name="PadRows")
def PadRows(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:  # noqa: N802
    """Pass form of `pad_rows` for a `Sequential`."""
    return pad_rows(mod)[0]
