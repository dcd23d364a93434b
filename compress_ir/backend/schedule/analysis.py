"""Classify TIR PrimFuncs by their blocks, so rules never depend on function names.

Why: after FuseOps/FuseTIR a conv may be called `fused_conv2d_add_relu` or anything else;
what a schedule needs to know is the structure — which root block reduces (spatial + reduce
iterators: conv, matmul, pooling) and which blocks are plain element-wise/injective code.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from tvm import s_tir, tirx

SCHEDULED_ATTRS = ("tirx.is_scheduled", "tir.is_scheduled")
_DATA_PAR = 0
_COMM_REDUCE = 2


def is_scheduled(func: tirx.PrimFunc) -> bool:
    """True when a PrimFunc is marked as already scheduled (hand-written or by a rule)."""
    attrs = func.attrs
    if attrs is None:
        return False
    return any(key in attrs and bool(attrs[key]) for key in SCHEDULED_ATTRS)


@dataclass(frozen=True)
class BlockInfo:
    """One root-level block: its handle, iterator kinds ('S'/'R'/'O') and body shape."""

    rv: s_tir.schedule.SBlockRV
    name: str
    kinds: str
    contraction: bool

    @property
    def is_reduction(self) -> bool:
        """A block that accumulates over at least one reduce iterator."""
        return "R" in self.kinds

    @property
    def is_spatial(self) -> bool:
        """A block whose iterators are all data-parallel (element-wise / injective)."""
        return set(self.kinds) <= {"S"}


def _iter_kind(iv: tirx.IterVar) -> str:
    if iv.iter_type == _DATA_PAR:
        return "S"
    if iv.iter_type == _COMM_REDUCE:
        return "R"
    return "O"


def _is_contraction(block: s_tir.SBlock) -> bool:
    """A multiply-accumulate body, `acc = acc + a * b` (conv, matmul, dense)."""
    body = block.body
    if not isinstance(body, tirx.BufferStore):
        return False
    value = body.value
    if not isinstance(value, tirx.Add):
        return False
    operands = (value.a, value.b)
    unwrap = [op.value if isinstance(op, tirx.Cast) else op for op in operands]
    return any(isinstance(op, tirx.Mul) for op in unwrap)


def root_blocks(sch: s_tir.Schedule) -> list[BlockInfo]:
    """The blocks directly under the root block, in program order."""
    root = sch.get_sblock(sch.mod["main"].body.block.name_hint)
    infos = []
    for rv in sch.get_child_blocks(root):
        block = sch.get(rv)
        kinds = "".join(_iter_kind(iv) for iv in block.iter_vars)
        infos.append(BlockInfo(rv, block.name_hint, kinds, _is_contraction(block)))
    return infos


_OPERANDS = ("a", "b", "value", "condition", "true_value", "false_value")


def subexprs(expr: object) -> Iterator[object]:
    """`expr` and every sub-expression (operands, call arguments, load indices), pre-order.

    Why: the rules ask small questions of index expressions (does a floordiv read the
    output channel? is an index computed from a float?); TVM 0.27's Python API has no
    expression visitor for `tirx` any more.
    """
    stack = [expr]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(getattr(node, name) for name in _OPERANDS if hasattr(node, name))
        stack.extend(getattr(node, "args", None) or [])
        stack.extend(getattr(node, "indices", None) or [])


def reads_var(expr: object, var: tirx.Var) -> bool:
    """`var` occurs in `expr` (rules ask which index expressions depend on which axis)."""
    return any(isinstance(v, tirx.Var) and v.same_as(var) for v in subexprs(expr))
