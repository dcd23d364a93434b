"""Compilation targets (arm, x86, cuda and named variants) as a registry.

    from compress_ir.targets import resolve_target
    spec = resolve_target("arm:rpi4")          # or a TVM target dict / its JSON text

Importing this package does not import TVM.
"""

from compress_ir.targets.registry import TARGETS, expert_target, list_targets, resolve_target
from compress_ir.targets.spec import TargetSpec

__all__ = ["TARGETS", "TargetSpec", "expert_target", "list_targets", "resolve_target"]
