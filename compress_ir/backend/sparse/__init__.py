"""Sparse kernels for TVM (BSR, N:M) and the Relax rewrite that uses them.

PLACEHOLDER seam (being implemented): `rewrite_sparse(mod, target, ...)`.
"""
