"""Post-order rewriting of TIR statements (TVM 0.27's Python API has no statement mutator).

Why: the passes that edit scheduled or lowered TIR from Python (`prefetch`, `stack_tiles`)
need the same walk: rebuild a node only when one of its children changed, so that
untouched functions stay the same objects and identity checks (`same_as`) keep working.
"""

from __future__ import annotations

from collections.abc import Callable

from tvm import s_tir, tirx

Rewrite = Callable[[tirx.Stmt], tirx.Stmt | None]


def post_order(stmt: tirx.Stmt, rewrite: Rewrite) -> tirx.Stmt:
    """`stmt` with its children rewritten first, then `rewrite(node)` (None: keep it).

    Walks loops, sequences, attributes, branches and block realizes; other nodes are
    leaves offered to `rewrite` as they are.
    """
    node = _with_children(stmt, rewrite)
    out = rewrite(node)
    return node if out is None else out


def _with_children(stmt: tirx.Stmt, rewrite: Rewrite) -> tirx.Stmt:
    if isinstance(stmt, tirx.For):
        body = post_order(stmt.body, rewrite)
        if body.same_as(stmt.body):
            return stmt
        return tirx.For(stmt.loop_var, stmt.min, stmt.extent, stmt.kind, body,
                        stmt.thread_binding, stmt.annotations, stmt.step)
    if isinstance(stmt, tirx.SeqStmt):
        parts = [post_order(s, rewrite) for s in stmt]
        if all(a.same_as(b) for a, b in zip(parts, stmt, strict=True)):
            return stmt
        return tirx.SeqStmt(parts)
    if isinstance(stmt, tirx.AttrStmt):
        body = post_order(stmt.body, rewrite)
        if body.same_as(stmt.body):
            return stmt
        return tirx.AttrStmt(stmt.node, stmt.attr_key, stmt.value, body, stmt.span)
    if isinstance(stmt, tirx.IfThenElse):
        then_case = post_order(stmt.then_case, rewrite)
        else_case = None if stmt.else_case is None else post_order(stmt.else_case, rewrite)
        if then_case.same_as(stmt.then_case) and (
                else_case is None or else_case.same_as(stmt.else_case)):
            return stmt
        return tirx.IfThenElse(stmt.condition, then_case, else_case, stmt.span)
    if isinstance(stmt, s_tir.SBlockRealize):
        b = stmt.block
        body = post_order(b.body, rewrite)
        if body.same_as(b.body):
            return stmt
        block = s_tir.SBlock(b.iter_vars, b.reads, b.writes, b.name_hint, body, b.init,
                             b.alloc_buffers, b.match_buffers, b.annotations)
        return s_tir.SBlockRealize(stmt.iter_values, stmt.predicate, block)
    return stmt
