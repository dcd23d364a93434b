"""ELF headers: which machine a shared library was built for, read before dlopen().

dlopen() runs a library's constructors, so `compress-ir run` checks the file is
an ELF shared object for the expected machine before loading it.
"""

from __future__ import annotations

import os
import platform

from compress_ir.core.errors import ModelLoadError

EM_X86_64 = 62
EM_AARCH64 = 183
MACHINE_NAMES = {EM_X86_64: "x86-64", EM_AARCH64: "aarch64", 3: "x86", 40: "arm"}
_HOST = {"x86_64": EM_X86_64, "amd64": EM_X86_64, "aarch64": EM_AARCH64, "arm64": EM_AARCH64}
ET_DYN = 3


def elf_machine(path: str | os.PathLike) -> int:
    """e_machine of an ELF file (62 x86-64, 183 aarch64); ValueError if not ELF."""
    with open(path, "rb") as fh:
        head = fh.read(20)
    if len(head) < 20 or head[:4] != b"\x7fELF" or head[5] not in (1, 2):
        raise ValueError(f"{path} is not an ELF file")
    return int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")


def _elf_type(head: bytes) -> int:
    return int.from_bytes(head[16:18], "little" if head[5] == 1 else "big")


def host_machine() -> int | None:
    return _HOST.get(platform.machine().lower())


def check_library(path: str | os.PathLike, expected: int | None, what: str) -> int:
    """Refuse a file that is not an ELF shared object for `expected` (None: any)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(20)
    except OSError as exc:
        raise ModelLoadError(f"{what}: cannot read library: {exc.strerror or exc}") from None
    if len(head) < 20 or head[:4] != b"\x7fELF" or head[5] not in (1, 2):
        raise ModelLoadError(f"{what}: library is not an ELF shared object")
    if _elf_type(head) != ET_DYN:
        raise ModelLoadError(f"{what}: library is an ELF file but not a shared object")
    machine = elf_machine(path)
    if expected is not None and machine != expected:
        raise ModelLoadError(
            f"{what}: library is built for {MACHINE_NAMES.get(machine, f'machine {machine}')}, "
            f"not {MACHINE_NAMES.get(expected, f'machine {expected}')}")
    return machine
