"""Output channels of convs and matmuls padded with zeros to a width the kernel tiles well.

Why: the register tile vectorises a conv over its output channels (per group), a matmul
over its output columns, and its width must divide them exactly. Widths that vectors do
not tile well ran far behind onnxruntime, whose kernels handle a ragged last block:
RegNetX-400MF's 400 channels are 25 vectors (one-vector tiles, 0.0999 vs 0.0736 ms per
7x7 conv when padded to 416), ShuffleNet v1's 68-channel groups ran on 4-lane vectors,
SqueezeNet's 1000-class conv on 2 x 10 lanes, a pruned FFN's 1123 neurons on scalars
after a weight copy per call (`pad_einsum`). Here such a layer computes a few zero
filters / columns more (weights and bias are constants, padded with numpy at compile
time) and its output is cut back by a slice that fuses into the kernel's epilogue: the
model computes exactly what it did (the padded channels never leave the kernel); the
artifact's check against onnxruntime covers it like every other rewrite.

The width is chosen by `padded_width`, a cost model of the tile `choose_tile` would
pick: work (padded channels) over tile quality (lanes used, and one-vector tiles at the
0.75 measured above); padding only when it wins by a clear margin.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.ir.expr import GenericConst
from tvm.relax.expr_functor import PyExprMutator, mutator

from compress_ir.backend.schedule.cpu import GEMV_MAX_ROWS, CpuParams, choose_tile
from compress_ir.backend.schedule.rewrite import op_name, rewrite_functions, round_up, static_shape

ONE_VECTOR_QUALITY = 0.75  # one-vector tiles vs two (400 vs 416 channels, 7x7 conv chain)
MIN_GAIN = 0.9  # pad only when the padded cost is below this fraction of the current
TILE_ROWS = 64  # a row count with every small divisor: the channel tile, not the rows


def _cost(width: int, cpu: CpuParams) -> float:
    """Work over quality of the channel tile `choose_tile` picks for `width` channels."""
    ch_t = choose_tile(width, TILE_ROWS, cpu)[1]
    vectors = -(-ch_t // cpu.lanes)
    quality = ch_t / (vectors * cpu.lanes)
    if vectors == 1:
        quality *= ONE_VECTOR_QUALITY
    return width / quality


def padded_width(width: int, cpu: CpuParams) -> int:
    """The channel count (per group) to compute: `width` itself unless a multiple of one
    or two vectors is clearly cheaper (`MIN_GAIN`)."""
    if width <= cpu.lanes:
        return width
    wider = {round_up(width, m) for m in (cpu.lanes, 2 * cpu.lanes)} - {width}
    best = min(((_cost(w, cpu), w) for w in wider), default=None)
    return best[1] if best is not None and best[0] < MIN_GAIN * _cost(width, cpu) else width


@mutator
class _PadOutputChannels(PyExprMutator):
    def __init__(self, mod: tvm.IRModule, cpu: CpuParams) -> None:
        super().__init__(mod)
        self.cpu = cpu
        self.rewritten = 0

    def visit_call_(self, call: relax.Call) -> relax.Expr:  # noqa: D401
        call = self.builder_.normalize(super().visit_call_(call))
        if not isinstance(call.args[1] if len(call.args) > 1 else None, GenericConst):
            return call
        rewrite = {"relax.nn.conv2d": self._conv, "relax.matmul": self._matmul}.get(
            op_name(call))
        return call if rewrite is None else rewrite(call)

    def _conv(self, call: relax.Call) -> relax.Expr:
        """A conv's output channels padded per group (zero filters), cut back after it."""
        attrs = call.attrs
        groups, out_shape = int(attrs.groups), static_shape(call)
        out_layout = str(attrs.out_layout or attrs.data_layout)
        kernel = call.args[1].value.numpy()
        o_axis = str(attrs.kernel_layout).find("O")
        if out_shape is None or o_axis < 0 or "C" not in out_layout or \
                kernel.shape[o_axis] % groups:
            return call
        channels = kernel.shape[o_axis]
        width = channels // groups
        if width == 1:  # depthwise: its own rule, vectorised over all channels
            return call
        padded = padded_width(width, self.cpu)
        if padded == width:
            return call
        per_group = np.moveaxis(kernel, o_axis, 0).reshape(groups, width, *[
            d for i, d in enumerate(kernel.shape) if i != o_axis])
        pad = [(0, 0), (0, padded - width)] + [(0, 0)] * (per_group.ndim - 2)
        wide = np.moveaxis(np.pad(per_group, pad).reshape(groups * padded, *per_group.shape[2:]),
                           0, o_axis)
        conv = self.builder_.normalize(
            relax.Call(call.op, [call.args[0], relax.const(wide, str(kernel.dtype))], call.attrs))
        c_axis = out_layout.index("C")
        self.rewritten += 1
        if groups == 1:
            return relax.op.strided_slice(conv, axes=[c_axis], begin=[0], end=[channels])
        split = out_shape[:c_axis] + [groups, padded] + out_shape[c_axis + 1:]
        cut = relax.op.strided_slice(relax.op.reshape(conv, split), axes=[c_axis + 1],
                                     begin=[0], end=[width])
        return relax.op.reshape(cut, out_shape)

    def _matmul(self, call: relax.Call) -> relax.Expr:
        """x @ W with a constant [K, N] W: N padded like a conv's channels (a pruned FFN's
        1123 neurons); not for a few rows (batch-1 heads stream W as a GEMV instead)."""
        weight, out_shape = call.args[1].value.numpy(), static_shape(call)
        if weight.ndim != 2 or out_shape is None or \
                int(np.prod(out_shape[:-1])) <= GEMV_MAX_ROWS:
            return call
        width = weight.shape[1]
        padded = padded_width(width, self.cpu)
        if padded == width:
            return call
        wide = np.pad(weight, [(0, 0), (0, padded - width)])
        out = self.builder_.normalize(relax.Call(
            call.op, [call.args[0], relax.const(wide, str(weight.dtype))], call.attrs))
        self.rewritten += 1
        return relax.op.strided_slice(out, axes=[len(out_shape) - 1], begin=[0], end=[width])


def pad_output_channels(mod: tvm.IRModule, cpu: CpuParams) -> tuple[tvm.IRModule, int]:
    """Every conv2d / matmul with a constant weight whose (per-group) output width
    `padded_width` widens; returns the module and how many were padded."""
    mutator_ = _PadOutputChannels(mod, cpu)
    return rewrite_functions(mutator_, mod, lambda: mutator_.rewritten)


def PadOutputChannels(cpu: CpuParams) -> tvm.transform.Pass:  # noqa: N802
    """Pass form of `pad_output_channels` (after ConvertLayout: the final layouts)."""

    @tvm.transform.module_pass(opt_level=0, name="PadOutputChannels")
    def _pass(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return pad_output_channels(mod, cpu)[0]

    return _pass
