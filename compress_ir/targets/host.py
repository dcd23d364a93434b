"""What the machine we run on can execute: CPU flags, architecture, LLVM cpu name."""

from __future__ import annotations

import functools
import platform
from pathlib import Path


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The `flags` of /proc/cpuinfo (empty where it does not exist)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def is_x86_64() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


def x86_lanes(flags: frozenset[str]) -> int:
    """fp32 lanes of the widest vector unit: 16 (AVX-512), 8 (AVX2), 4 (SSE)."""
    if "avx512f" in flags:
        return 16
    if "avx2" in flags:
        return 8
    return 4


def llvm_host_cpu() -> str:
    """LLVM's name for this CPU (what `-mcpu=native` picks); needs tvm.

    Without tvm, the x86-64 micro-architecture level implied by the flags.
    """
    try:
        from tvm.target import codegen

        return str(codegen.llvm_get_system_cpu())
    except Exception:  # noqa: BLE001 - tvm missing or built without llvm
        lanes = x86_lanes(cpu_flags())
        return {16: "x86-64-v4", 8: "x86-64-v3"}.get(lanes, "x86-64-v2")
