"""Relax rewrite: sparse-weight matmul/conv2d → `call_tir` to generated sparse kernels.

After `from_onnx(..., keep_params_in_input=False)` a Gemm(transB) is
`matmul(x, permute_dims(const))`, a MatMul with constant B is `matmul(x, const)` and a
Conv is `nn.conv2d(x, const)`. Each one whose constant weight is sparse enough is
replaced by a kernel specialised on its sparsity structure; everything else is left as
is, and the stats say why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import tvm
from tvm import relax
from tvm.ir.expr import GenericConst

from compress_ir.backend.sparse import formats as fmt
from compress_ir.backend.sparse import kernels_cpu as kcpu
from compress_ir.backend.sparse import kernels_cuda as kcuda
from compress_ir.core.errors import UsageError
from compress_ir.formats import BSR, weight_view


@dataclass(frozen=True)
class KernelSet:
    """The kernel generators of one target kind and when the matmul goes column-major."""

    matmul: Any
    conv: Any
    nm: Any
    cols_for_matmul: Any  # (m, block) -> bool: transpose X and use the conv kernel

    @staticmethod
    def never(m: int, block: tuple[int, int]) -> bool:
        return False


KERNELS: dict[str, KernelSet] = {
    # Short blocks (r < 8) fill few vector lanes over output rows: vectorise over m instead.
    "llvm": KernelSet(kcpu.bsr_matmul_rowvec, kcpu.bsr_conv2d_direct, kcpu.nm_matmul_cols,
                      lambda m, block: block[0] < 8 and m >= kcpu.VEC),
    "cuda": KernelSet(kcuda.bsr_matmul_cuda, kcuda.bsr_conv2d_cuda, kcuda.nm_matmul_cols_cuda,
                      KernelSet.never),
}

NM_SLACK = 1.25  # N:M wins over CSR while n/m ≤ 1.25 × the real density

# Sparsity below which a layer of this block shape was not faster than TVM dense in
# tools/bench_sparse.py (worst case over its FFN/conv shapes, tools/results/sparse/table.md).
WORTH_IT: dict[tuple[int, int], float] = {
    (1, 1): 0.9, (1, 4): 0.9, (4, 1): 0.8, (8, 1): 0.8, (4, 4): 0.8, (16, 1): 0.7,
}


def _static_shape(expr: relax.Expr) -> tuple[int, ...] | None:
    ty = expr.ty
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        return None
    dims = getattr(ty.shape, "values", None)
    if dims is None or not all(isinstance(d, tvm.tirx.IntImm) for d in dims):
        return None
    return tuple(int(d) for d in dims)


def _const_array(expr: relax.Expr) -> np.ndarray | None:
    """The numpy value of a tensor constant (TVM 0.27: `ir.GenericConst`), else None."""
    if isinstance(expr, GenericConst) and hasattr(expr.value, "numpy"):
        return expr.value.numpy()
    return None


def _ints(values: Any) -> tuple[int, ...]:
    return tuple(int(v) for v in values)


class _Skip(Exception):
    """A layer that stays dense; the message is the reason."""


@relax.expr_functor.mutator
class _SparseRewriter(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, kernels: KernelSet, min_sparsity: float,
                 block: tuple[int, int] | None) -> None:
        super().__init__(mod)
        self.kernels = kernels
        self.min_sparsity = min_sparsity
        self.block = block
        self.rewritten: list[dict] = []
        self.skipped: list[dict] = []
        self.count = 0

    # -- dispatch ---------------------------------------------------------------------------
    def visit_call_(self, call: relax.Call) -> relax.Expr:  # noqa: N802 (TVM's name)
        call = self.visit_expr_post_order(call)
        handler = _HANDLERS.get(getattr(call.op, "name", None))
        if handler is None:
            return call
        self.count += 1
        name = f"{call.op.name.split('.')[-1]}#{self.count}"
        try:
            return getattr(self, handler)(call, name)
        except _Skip as why:
            self.skipped.append({"name": name, "reason": str(why)})
            return call

    # -- shared -------------------------------------------------------------------------------
    def _plan(self, name: str, w2: np.ndarray, allow_nm: bool) -> dict:
        """Pick the format and block for a (out, reduction) weight, or raise _Skip."""
        density = float(np.count_nonzero(w2)) / w2.size
        sparsity = 1.0 - density
        base = {"name": name, "view": list(w2.shape), "sparsity": round(sparsity, 4)}
        if sparsity < self.min_sparsity:
            raise _Skip(f"sparsity {sparsity:.3f} below threshold {self.min_sparsity}")
        if self.block is not None:
            if not fmt.block_fits(w2.shape, self.block):
                raise _Skip(f"block {self.block} does not tile weight view {w2.shape}")
            bs = fmt.block_sparsity(w2, self.block)
            if bs < self.min_sparsity:
                raise _Skip(f"block sparsity {bs:.3f} with block {self.block} below "
                            f"threshold {self.min_sparsity}")
            block = self.block
        else:
            block, bs = fmt.choose_block(w2, self.min_sparsity)
            nm = fmt.detect_nm(w2) if allow_nm and block == (1, 1) else None
            # No coarser blocks but an N:M pattern: the compact layout does n/m of the
            # dense work with no indptr; use it unless the weight is much sparser than n/m.
            if nm is not None and nm[0] / nm[1] <= density * NM_SLACK:
                return {**base, "format": "nm", "block": f"{nm[0]}:{nm[1]}", "nm": nm,
                        "w2": w2, "nnz_blocks": w2.shape[0] * (w2.shape[1] // nm[1]) * nm[0]}
        bsr = fmt.to_bsr(w2, block)
        entry = {**base, "format": "bsr", "block": list(block), "block_sparsity": round(bs, 4),
                 "nnz_blocks": bsr.nnzb, "bsr": bsr}
        if sparsity < WORTH_IT.get(block, 0.0):
            entry["note"] = (f"{block[0]}x{block[1]} blocks at {sparsity:.0%}: likely not "
                             "faster than dense")
        return entry

    def _record(self, plan: dict, **extra: Any) -> None:
        keep = {k: v for k, v in plan.items() if k not in ("bsr", "nm", "w2")}
        self.rewritten.append({**keep, **extra})

    def _call(self, func: Any, name: str, args: list[relax.Expr], shape: tuple[int, ...],
              dtype: str) -> relax.Expr:
        gv = self.builder_.add_func(func, f"sparse_{name.replace('#', '_')}")
        return relax.call_tir(gv, args, relax.TensorType(shape, dtype))

    def _emit(self, expr: relax.Expr) -> relax.Expr:
        return self.builder_.emit(expr)

    # -- matmul -------------------------------------------------------------------------------
    def matmul(self, call: relax.Call, name: str) -> relax.Expr:
        x, b = call.args
        kind, weight = self._matmul_weight(b)
        xs, out = _static_shape(x), _static_shape(call)
        if xs is None or out is None:
            raise _Skip("dynamic shape")
        dtype = call.ty.dtype
        if len(xs) < 2 or weight.ndim != 2 or dtype != "float32" or x.ty.dtype != dtype:
            raise _Skip(f"unsupported operand rank/dtype (x {xs}, w {weight.shape}, {dtype})")
        w2 = np.ascontiguousarray(weight_view(_VIEW_OF[kind][0], weight, _VIEW_OF[kind][1]))
        n, k = w2.shape
        m = math.prod(xs[:-1])
        plan = self._plan(name, w2, allow_nm=True)
        x2 = self._emit(relax.op.reshape(x, (m, k))) if len(xs) != 2 else x
        if plan["format"] == "nm":
            y = self._cols(self.kernels.nm(1, k, n, m, plan["nm"]), name, x2, m, k, n, plan,
                           nm=True)
            self._record(plan, op=kind, weight_shape=list(weight.shape), kernel="nm-cols")
        elif self.kernels.cols_for_matmul(m, plan["bsr"].block):
            bsr = plan["bsr"]
            func = self.kernels.conv((1, k, 1, m), (1, n, 1, m), (1, 1), (1, 1), (1, 1),
                                     bsr.block, bsr.nnzb)
            y = self._cols(func, name, x2, m, k, n, plan, nm=False)
            self._record(plan, op=kind, weight_shape=list(weight.shape), kernel="bsr-cols")
        else:
            bsr = plan["bsr"]
            vt = np.ascontiguousarray(bsr.data.transpose(0, 2, 1))
            func = self.kernels.matmul(m, k, n, bsr.block, bsr.nnzb)
            y = self._call(func, name, [x2, *_bsr_consts(bsr, vt)], (m, n), dtype)
            self._record(plan, op=kind, weight_shape=list(weight.shape), kernel="bsr-rowvec")
        return relax.op.reshape(self._emit(y), out) if len(xs) != 2 else y

    def _cols(self, func: Any, name: str, x2: relax.Expr, m: int, k: int, n: int, plan: dict,
              nm: bool) -> relax.Expr:
        """Y = (W · Xᵀ)ᵀ with X transposed to (k, m) so the kernel vectorises over m."""
        xt = self._emit(relax.op.permute_dims(x2, [1, 0]))
        if nm:
            args = [self._emit(relax.op.reshape(xt, (1, k, m))), *_nm_consts(plan)]
            yt = self._emit(self._call(func, name, args, (1, n, m), "float32"))
        else:
            args = [self._emit(relax.op.reshape(xt, (1, k, 1, m))),
                    *_bsr_consts(plan["bsr"], plan["bsr"].data)]
            yt = self._emit(self._call(func, name, args, (1, n, 1, m), "float32"))
        return relax.op.permute_dims(self._emit(relax.op.reshape(yt, (n, m))), [1, 0])

    def _matmul_weight(self, b: relax.Expr) -> tuple[str, np.ndarray]:
        const = _const_array(b)
        if const is not None:
            return "matmul", const
        bound = self.lookup_binding(b) if isinstance(b, relax.Var) else None
        if (isinstance(bound, relax.Call) and getattr(bound.op, "name", "") == "relax.permute_dims"
                and _const_array(bound.args[0]) is not None):
            w = _const_array(bound.args[0])
            axes = bound.attrs.axes
            if w.ndim == 2 and (axes is None or _ints(axes) == (1, 0)):
                return "gemm", w
        raise _Skip("weight is not a constant (or a transposed 2-D constant)")

    # -- conv2d -------------------------------------------------------------------------------
    def conv2d(self, call: relax.Call, name: str) -> relax.Expr:
        x, wexpr = call.args
        weight = _const_array(wexpr)
        if weight is None:
            raise _Skip("weight is not a constant")
        a = call.attrs
        layouts = (a.data_layout, a.kernel_layout, a.out_layout)
        if layouts != ("NCHW", "OIHW", "NCHW"):
            raise _Skip(f"unsupported layout {layouts}")
        if int(a.groups) != 1:
            raise _Skip(f"groups={int(a.groups)} (grouped/depthwise conv)")
        xs, out = _static_shape(x), _static_shape(call)
        if xs is None or out is None:
            raise _Skip("dynamic shape")
        dtype = call.ty.dtype
        if dtype != "float32" or x.ty.dtype != dtype:
            raise _Skip(f"dtype {dtype}")
        w2 = np.ascontiguousarray(weight_view("Conv", weight))
        kh, kw = weight.shape[2:]
        stride, dil, pad = _ints(a.strides), _ints(a.dilation), _ints(a.padding)
        pointwise = (kh, kw) == (1, 1) and stride == (1, 1) and not any(pad)
        plan = self._plan(name, w2, allow_nm=pointwise)
        info = {"op": "conv2d", "weight_shape": list(weight.shape)}
        if plan["format"] == "nm":
            nb, c_in, h, w = xs
            x3 = self._emit(relax.op.reshape(x, (nb, c_in, h * w)))
            func = self.kernels.nm(nb, c_in, out[1], h * w, plan["nm"])
            y = self._emit(self._call(func, name, [x3, *_nm_consts(plan)], (nb, out[1], h * w),
                                      dtype))
            self._record(plan, **info, kernel="nm-cols")
            return relax.op.reshape(y, out)
        top, left, bottom, right = pad
        if any(pad):
            x = self._emit(relax.op.nn.pad(x, [0, 0, 0, 0, top, bottom, left, right]))
        xp = (xs[0], xs[1], xs[2] + top + bottom, xs[3] + left + right)
        bsr = plan["bsr"]
        func = self.kernels.conv(xp, out, (kh, kw), stride, dil, bsr.block, bsr.nnzb)
        self._record(plan, **info, kernel="bsr-direct")
        return self._call(func, name, [x, *_bsr_consts(bsr, bsr.data)], out, dtype)


def _bsr_consts(bsr: BSR, values: np.ndarray) -> list[relax.Expr]:
    nz = max(bsr.nnzb, 1)
    vals = values if bsr.nnzb else np.zeros((1, *values.shape[1:]), values.dtype)
    idx = bsr.indices if bsr.nnzb else np.zeros(nz, np.int32)
    return [relax.const(vals), relax.const(bsr.indptr), relax.const(idx)]


def _nm_consts(plan: dict) -> list[relax.Expr]:
    n, m = plan["nm"]
    packed = fmt.to_nm(plan["w2"], n, m)
    return [relax.const(packed.values), relax.const(packed.offsets)]


# The matmul weight as found in Relax -> (ONNX op, transB) of its (out, reduction) view:
# a plain constant B (K, N) is MatMul's; a permute_dims of a constant is Gemm's (N, K).
_VIEW_OF = {"matmul": ("MatMul", False), "gemm": ("Gemm", True)}

# Relax op name -> handler method (the mutator decorator hides methods from the class).
_HANDLERS = {
    "relax.matmul": "matmul",
    "relax.nn.conv2d": "conv2d",
}


def rewrite_sparse(mod: tvm.IRModule, target: Any, *, min_sparsity: float = 0.7,
                   block: tuple[int, int] | None = None) -> tuple[tvm.IRModule, dict]:
    """Replace sparse-weight matmul/conv2d with scheduled sparse kernels; return (mod, stats).

    `target` decides the kernel family (llvm CPU or cuda). `block` forces one BSR block
    shape (r output rows × c reduction columns); None picks, per layer, the preferred
    block whose all-zero blocks reach `min_sparsity` (1x1 = unstructured). A layer that
    is exactly N:M along the reduction axis with n/m kept ≤ 1 - min_sparsity, and below
    it elementwise, gets the compact N:M kernel.
    """
    if not 0.0 <= min_sparsity < 1.0:
        raise UsageError(f"sparse rewrite: min_sparsity must be in [0, 1), got {min_sparsity}")
    if block is not None and (len(block) != 2 or min(block) < 1):
        raise UsageError(f"sparse rewrite: block must be two positive ints, got {block}")
    tgt = target if isinstance(target, tvm.target.Target) else tvm.target.Target(target)
    kernels = KERNELS.get(tgt.kind.name)
    if kernels is None:
        raise UsageError(f"sparse rewrite: no sparse kernels for target kind "
                         f"'{tgt.kind.name}' (have: {', '.join(KERNELS)})")
    rw = _SparseRewriter(mod, kernels, min_sparsity, tuple(block) if block else None)
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            rw.builder_.update_func(gv, rw.visit_expr(func))
    out = rw.builder_.get()
    for gv, func in out.functions_items():
        if isinstance(func, relax.Function):
            out[gv] = relax.analysis.remove_all_unused(func)
    stats = {"target": tgt.kind.name, "min_sparsity": min_sparsity,
             "rewritten": rw.rewritten, "skipped": rw.skipped}
    return out, stats
