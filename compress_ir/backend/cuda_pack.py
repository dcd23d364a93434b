"""Ship compiled GPU code: replace the CUDA C source in a TVM library by an nvcc fatbin.

TVM 0.27's pip wheel has no CUDA runtime at build time, so its codegen keeps each
CUDA module as C source (format "cuda") which the GPU host would have to compile
at load time with NVRTC or nvcc. We compile that source here with nvcc for the
target's `sm_XX` (SASS for it plus PTX for newer GPUs) and re-pack the library
blob so the module says "fatbin": the GPU host then needs only the TVM runtime.

Library blob (`__tvm_ffi__library_bin`, written by `ModulePackImportsToC`), all
integers little-endian u64: total size, import-tree row pointers and child indices
(each as count + values), then per module its kind (length + bytes) and, unless it
is the `_lib` placeholder, its payload (length + bytes). A "cuda" payload is
`fmt` (length + bytes), the function table, then the code (length + bytes).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compress_ir.core.errors import UsageError

FATBIN_MAGIC = bytes.fromhex("50ed55ba")  # fatbinary wrapper magic 0xBA55ED50
BLOB_SYMBOL = "__tvm_ffi__library_bin"


@dataclass
class GpuCode:
    """What was embedded, for meta.json and the checks."""

    format: str = "fatbin"
    arch: str = ""
    modules: int = 0
    bytes: int = 0
    source_bytes_replaced: int = 0
    nvcc_seconds: float = 0.0


def _u64(value: int) -> bytes:
    return struct.pack("<Q", value)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def u64(self) -> int:
        (value,) = struct.unpack_from("<Q", self.data, self.pos)
        self.pos += 8
        return value

    def chunk(self) -> bytes:
        size = self.u64()
        out = self.data[self.pos : self.pos + size]
        if len(out) != size:
            raise ValueError("truncated library blob")
        self.pos += size
        return out


def parse_blob(blob: bytes) -> tuple[bytes, list[tuple[str, bytes | None]]]:
    """(import-tree header bytes, [(kind, payload or None for `_lib`)])."""
    r = _Reader(blob)
    total = r.u64()
    if total != len(blob) - 8:
        raise ValueError(f"library blob size {total} != {len(blob) - 8}")
    start = r.pos
    rows = r.u64()
    for _ in range(rows):
        r.u64()
    children = r.u64()
    for _ in range(children):
        r.u64()
    header = blob[start : r.pos]
    modules: list[tuple[str, bytes | None]] = []
    for _ in range(max(rows - 1, 0)):
        kind = r.chunk().decode()
        modules.append((kind, None if kind == "_lib" else r.chunk()))
    if r.pos != len(blob):
        raise ValueError("trailing bytes in library blob")
    return header, modules


def join_blob(header: bytes, modules: list[tuple[str, bytes | None]]) -> bytes:
    body = bytearray(header)
    for kind, payload in modules:
        body += _u64(len(kind)) + kind.encode()
        if payload is not None:
            body += _u64(len(payload)) + payload
    return _u64(len(body)) + bytes(body)


def _split_payload(payload: bytes) -> tuple[str, bytes, bytes]:
    """A "cuda" payload as (fmt, function table bytes, code bytes).

    The table's layout is TVM-internal, so the code (the last field) is found from the
    end: the length prefix that ends exactly at the payload's end, and whose bytes are
    what `fmt` says (CUDA C with a kernel, or a fatbin)."""
    r = _Reader(payload)
    fmt = r.chunk().decode()
    table_start = r.pos
    for code_start in range(len(payload) - 8, table_start - 1, -1):
        (size,) = struct.unpack_from("<Q", payload, code_start)
        if code_start + 8 + size != len(payload):
            continue
        code = payload[code_start + 8 :]
        if (b"__global__" in code) if fmt == "cuda" else code.startswith(FATBIN_MAGIC):
            return fmt, payload[table_start:code_start], code
    raise ValueError(f"no {'CUDA source' if fmt == 'cuda' else 'fatbin'} found in a cuda "
                     f"module payload of format {fmt!r}")


def _join_payload(fmt: str, table: bytes, code: bytes) -> bytes:
    return _u64(len(fmt)) + fmt.encode() + table + _u64(len(code)) + code


NO_FAST_MATH = "TVM_CUDA_NVCC_NO_FAST_MATH"


@contextlib.contextmanager
def exact_math() -> Iterator[None]:
    """TVM's nvcc call without `--use_fast_math` (its default adds it).

    Why: fast math turns `powf` into `__powf`, exp2(y * log2(x)), which is NaN for a
    negative base. The LayerNorm/RMSNorm that torch's exporters write as
    `Pow(x - mean, 2)` then gives NaN rows. On an H200 the corpus BERT and LLaMA exports
    built with fast math failed the check against onnxruntime with non-finite outputs.
    ViT, whose export has a LayerNormalization op and no Pow, passed. Fast math also
    flushes denormals and approximates division and sqrt. A compression tool verifies
    against onnxruntime, so it compiles exact math."""
    previous = os.environ.get(NO_FAST_MATH)
    os.environ[NO_FAST_MATH] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(NO_FAST_MATH, None)
        else:
            os.environ[NO_FAST_MATH] = previous


def nvcc_fatbin(source: str, arch: str, target: Any) -> bytes:
    """SASS for `arch` plus its PTX (JIT-able on newer GPUs), as one fatbin."""
    if shutil.which("nvcc") is None:
        raise UsageError("building for cuda needs nvcc (the CUDA toolkit) on PATH")
    from tvm.support import nvcc

    sm = arch.removeprefix("sm_")
    gencode = ["-gencode", f"arch=compute_{sm},code=sm_{sm}",
               "-gencode", f"arch=compute_{sm},code=compute_{sm}"]
    with target, exact_math():  # nvcc.compile_cuda reads the current target for its flags
        try:
            return bytes(nvcc.compile_cuda(source, target_format="fatbin", arch=gencode,
                                           compiler="nvcc"))
        except RuntimeError as exc:
            tail = str(exc).strip().splitlines()[-3:]
            raise UsageError(f"nvcc failed for {arch}: {' | '.join(tail)}") from None


CALLBACK = "tvm_callback_cuda_compile"


@contextlib.contextmanager
def compile_hook(arch: str, target: Any, info: GpuCode) -> Iterator[None]:
    """During a CUDA build, TVM's codegen compiles each module with our nvcc fatbin.

    Why: where a CUDA driver is present, TVM 0.27 compiles CUDA C at build time through
    the global `tvm_callback_cuda_compile` (NVRTC by default: a cubin for one
    architecture, no PTX) and the library then holds that binary instead of source, which
    `make_fpack_imports` needs (seen on an H200 host: every cuda build failed with "cuda
    module already holds 'cubin'"). With this hook both hosts ship the same thing: SASS for
    the target's `sm_XX` plus PTX. The previous callback is restored afterwards."""
    import tvm_ffi

    previous = tvm_ffi.get_global_func(CALLBACK, allow_missing=True)

    def compile_cuda(code: str, *_: Any) -> bytes:
        t0 = time.perf_counter()
        binary = nvcc_fatbin(code, arch, target)
        info.nvcc_seconds += time.perf_counter() - t0
        info.source_bytes_replaced += len(code)
        return binary

    tvm_ffi.register_global_func(CALLBACK, compile_cuda, override=True)
    try:
        yield
    finally:
        if previous is not None:
            tvm_ffi.register_global_func(CALLBACK, previous, override=True)
        else:
            tvm_ffi.remove_global_func(CALLBACK)


def make_fpack_imports(arch: str, target: Any, info: GpuCode):  # noqa: ANN201 - TVM hook
    """An `export_library(fpack_imports=...)` hook embedding fatbins instead of source."""
    from tvm.runtime import _ffi_api

    def fpack(mod: Any, is_system_lib: bool, prefix: str, workspace_dir: str) -> str:
        text = str(_ffi_api.ModulePackImportsToC(mod, is_system_lib, prefix))
        start = text.index("{", text.index(BLOB_SYMBOL + "[")) + 1
        hexes = text[start : text.index("};", start)]
        blob = bytes.fromhex(
            hexes.replace("0x", "").replace(",", "").replace("\n", "").replace(" ", ""))
        header, modules = parse_blob(blob)
        out = []
        for kind, payload in modules:
            if kind == "cuda" and payload is not None:
                fmt, table, code = _split_payload(payload)
                if fmt == "cuda":  # no GPU here: TVM kept the source
                    t0 = time.perf_counter()
                    binary = nvcc_fatbin(code.decode(), arch, target)
                    info.nvcc_seconds += time.perf_counter() - t0
                    info.source_bytes_replaced += len(code)
                else:  # compiled during the build by `compile_hook` (a GPU is here)
                    binary = code
                payload = _join_payload("fatbin", table, binary)
                info.modules += 1
                info.bytes += len(binary)
            out.append((kind, payload))
        info.arch = arch
        new_blob = join_blob(header, out)
        blob_path = Path(workspace_dir) / f"{prefix}devc.bin"
        blob_path.write_bytes(new_blob)
        path = Path(workspace_dir) / f"{prefix}devc.c"
        sym = prefix + BLOB_SYMBOL
        path.write_text(
            "/* compress-ir: TVM module blob with nvcc-compiled GPU code */\n"
            "__asm__(\".section .rodata\\n.balign 16\\n"
            f".globl {sym}\\n.type {sym}, @object\\n{sym}:\\n"
            f".incbin \\\"{os.fspath(blob_path)}\\\"\\n"
            f".size {sym}, {len(new_blob)}\\n.previous\\n\");\n")
        return os.fspath(path)

    return fpack


def library_gpu_code(path: str | os.PathLike) -> dict[str, Any]:
    """Inspect an exported library: does it carry fatbin/cubin, and any CUDA C source?"""
    data = Path(path).read_bytes()
    fmt_fatbin = _u64(6) + b"fatbin"
    fmt_cubin = _u64(5) + b"cubin"
    return {
        "fatbin_modules": data.count(fmt_fatbin),
        "cubin_modules": data.count(fmt_cubin),
        "fatbin_magic": data.count(FATBIN_MAGIC),
        "cuda_source": b"__global__" in data,
    }
