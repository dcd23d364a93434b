"""The target table and `resolve_target`: names, expert TVM dicts and JSON text.

Importing this module does not import TVM; only validating an expert dict and
naming the host CPU (`x86`) do, when they are asked for.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from compress_ir.core.errors import UsageError
from compress_ir.targets import host
from compress_ir.targets.spec import TargetSpec

AARCH64 = "aarch64-linux-gnu"
ARM_CC = "aarch64-linux-gnu-gcc"
ARM_LANES = 4  # NEON: 128-bit vectors
CUDA_ROUND_TO = 8  # fp16 tensor-core tiles are multiples of 8; also float4 friendly
CUDA_DEFAULT_ARCH = "sm_80"
CUDA_ARCHS = {
    "sm_75": "Turing (T4, RTX 20xx)",
    "sm_80": "Ampere (A100)",
    "sm_86": "Ampere (RTX 30xx, A10, A40)",
    "sm_89": "Ada (L4, L40, RTX 40xx)",
    "sm_90": "Hopper (H100, H200)",
}


def _arm(name: str, description: str, mcpu: str | None, mattr: list[str]) -> TargetSpec:
    tvm: dict[str, Any] = {"kind": "llvm", "mtriple": AARCH64, "mattr": mattr}
    if mcpu:
        tvm["mcpu"] = mcpu
    return TargetSpec(name=name, family="arm", tvm=tvm, round_to=ARM_LANES, device="cpu",
                      description=description, cross_compiler=ARM_CC, lanes=ARM_LANES)


def _x86(name: str, description: str, mcpu: str, flags: tuple[str, ...], lanes: int
         ) -> TargetSpec:
    return TargetSpec(name=name, family="x86", tvm={"kind": "llvm", "mcpu": mcpu},
                      round_to=lanes, device="cpu", description=description,
                      required_cpu_flags=flags, lanes=lanes)


def _x86_host() -> TargetSpec:
    """This machine's CPU, as `-mcpu=native` would pick it."""
    flags = host.cpu_flags()
    lanes = host.x86_lanes(flags)
    required = {16: ("avx512f",), 8: ("avx2",)}.get(lanes, ())
    cpu = host.llvm_host_cpu()
    return _x86("x86", f"this machine's CPU ({cpu}, {lanes} fp32 lanes)", cpu, required, lanes)


def _cuda(arch: str, name: str | None = None) -> TargetSpec:
    return TargetSpec(
        name=name or f"cuda:{arch}", family="cuda", tvm={"kind": "cuda", "arch": arch},
        host={"kind": "llvm"}, round_to=CUDA_ROUND_TO, device="cuda",
        description=f"NVIDIA {CUDA_ARCHS[arch]}, {arch} code compiled with nvcc")


# name -> (one-line summary for --list-targets, factory); factories run on resolve.
TARGETS: dict[str, tuple[str, Callable[[], TargetSpec]]] = {
    "arm": ("generic aarch64 + NEON (4 fp32 lanes), cross-linked with aarch64-linux-gnu-gcc",
            lambda: _arm("arm", "generic aarch64 with NEON", None, ["+neon"])),
    "arm:rpi4": ("Raspberry Pi 4 (Cortex-A72, NEON)",
                 lambda: _arm("arm:rpi4", "Raspberry Pi 4, Cortex-A72", "cortex-a72", ["+neon"])),
    "arm:a76": ("Cortex-A76 (Raspberry Pi 5, phones): NEON, dotprod, fp16",
                lambda: _arm("arm:a76", "Cortex-A76, ARMv8.2-A with dotprod and fp16",
                             "cortex-a76", ["+neon", "+v8.2a", "+dotprod", "+fullfp16"])),
    "x86": ("this machine's CPU (LLVM host cpu name, vector width from /proc/cpuinfo)",
            _x86_host),
    "x86:avx2": ("x86-64 with AVX2 + FMA (Haswell and later, Zen), 8 fp32 lanes",
                 lambda: _x86("x86:avx2", "x86-64 with AVX2 and FMA", "haswell", ("avx2",), 8)),
    "x86:avx512": ("x86-64 with AVX-512 (Skylake-SP and later), 16 fp32 lanes",
                   lambda: _x86("x86:avx512", "x86-64 with AVX-512", "skylake-avx512",
                                ("avx512f",), 16)),
    "cuda": (f"NVIDIA GPU, {CUDA_DEFAULT_ARCH} (same as cuda:{CUDA_DEFAULT_ARCH})",
             lambda: _cuda(CUDA_DEFAULT_ARCH, "cuda")),
    **{f"cuda:{arch}": (f"NVIDIA {label}", (lambda a=arch: _cuda(a)))
       for arch, label in CUDA_ARCHS.items()},
}


def list_targets() -> list[tuple[str, str]]:
    """(name, summary) of every registered target, for `--list-targets`."""
    return [(name, summary) for name, (summary, _) in TARGETS.items()]


def resolve_target(value: str | dict[str, Any] | TargetSpec) -> TargetSpec:
    """A registered name, an expert TVM target dict, or that dict as JSON text."""
    if isinstance(value, TargetSpec):
        return value
    if isinstance(value, dict):
        return expert_target(value)
    text = str(value).strip()
    if text.startswith("{"):
        try:
            config = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(f"target {text!r} is not valid JSON: {exc}") from None
        return expert_target(config)
    entry = TARGETS.get(text)
    if entry is None:
        raise UsageError(f"unknown target {text!r}; known: {', '.join(TARGETS)} "
                         "(or a TVM target dict as JSON)")
    return entry[1]()


def llvm_lanes(config: dict[str, Any]) -> int:
    """fp32 lanes LLVM generates for an x86 `llvm` target dict: asks LLVM (through TVM)
    whether its mcpu/mattr have AVX-512F (16) or AVX2 (8), else 4. A dict naming no cpu
    and no attributes gets 8 (AVX2-sized tiles; LLVM splits them for older CPUs)."""
    if not config.get("mcpu") and not config.get("mattr"):
        return 8
    import tvm
    from tvm.target import codegen

    target = tvm.target.Target(dict(config))
    if codegen.target_has_features("avx512f", target):
        return 16
    return 8 if codegen.target_has_features("avx2", target) else 4


def spec_of_tvm_target(target: Any) -> TargetSpec:
    """The spec for a bare `tvm.target.Target` (callers that never had one): family and
    lanes by the rules `expert_target` uses, without re-validating."""
    config: dict[str, Any] = {"kind": str(target.kind.name)}
    for key in ("mtriple", "mcpu", "mattr", "arch"):
        value = target.attrs.get(key, None)
        if value:
            config[key] = [str(v) for v in value] if key == "mattr" else str(value)
    return _spec(config, None, json.dumps(config, sort_keys=True), expert=True)


def _family(config: dict[str, Any]) -> str:
    kind = config.get("kind")
    if kind == "cuda":
        return "cuda"
    if kind == "llvm":
        triple = str(config.get("mtriple", ""))
        if triple.startswith(("aarch64", "arm64")):
            return "arm"
        if triple == "" or triple.startswith(("x86_64", "i686", "i386")):
            return "x86"
        raise UsageError(f"target triple {triple!r} is not supported (aarch64 or x86_64)")
    raise UsageError(f"target kind {kind!r} is not supported; use llvm (arm, x86) or cuda")


def expert_target(config: dict[str, Any]) -> TargetSpec:
    """A TVM target dict as given, validated by constructing `tvm.target.Target`."""
    if not isinstance(config, dict) or "kind" not in config:
        raise UsageError(f"expert target must be a JSON object with a 'kind', got {config!r}")
    config = dict(config)
    host_cfg = config.pop("host", None)
    family = _family(config)
    text = json.dumps(config, sort_keys=True)
    try:
        import tvm

        tvm.target.Target(dict(config), host=None if host_cfg is None else dict(host_cfg))
    except ImportError:
        raise UsageError("expert targets need TVM: pip install apache-tvm") from None
    except Exception as exc:  # noqa: BLE001 - TVM raises ValueError/TVMError/...
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UsageError(f"TVM rejects target {text}: {first}") from None
    if family != "cuda" and "mcpu" in config:
        _check_llvm_cpu(str(config["mcpu"]), str(config.get("mtriple") or "x86_64-linux-gnu"),
                        text)
    return _spec(config, host_cfg, text, expert=True)


def _spec(config: dict[str, Any], host_cfg: dict[str, Any] | None, text: str,
          expert: bool) -> TargetSpec:
    family = _family(config)
    name = f"custom:{family}"
    if family == "cuda":
        arch = str(config.get("arch", ""))
        if not arch.startswith("sm_"):
            raise UsageError(f"cuda target {text} needs an 'arch' such as \"sm_80\"")
        return TargetSpec(name=name, family="cuda", tvm=config, host=host_cfg or {"kind": "llvm"},
                          round_to=CUDA_ROUND_TO, device="cuda",
                          description=f"expert target {text}", expert=expert)
    if family == "arm":
        return TargetSpec(name=name, family="arm", tvm=config, round_to=ARM_LANES, device="cpu",
                          description=f"expert target {text}", cross_compiler=ARM_CC,
                          expert=expert, lanes=ARM_LANES)
    lanes = llvm_lanes(config)
    required = {16: ("avx512f",), 8: ("avx2",)}.get(lanes, ())
    return TargetSpec(name=name, family="x86", tvm=config, round_to=lanes, device="cpu",
                      description=f"expert target {text}", required_cpu_flags=required,
                      expert=expert, lanes=lanes)


def _check_llvm_cpu(mcpu: str, triple: str, text: str) -> None:
    """LLVM only warns about an unknown -mcpu and builds generic code: refuse it here."""
    from tvm.target import codegen

    try:
        valid = bool(codegen.llvm_is_valid_cpu(mcpu, triple))
    except Exception:  # noqa: BLE001 - tvm built without llvm: Target() already checked
        return
    if not valid:
        raise UsageError(f"TVM rejects target {text}: LLVM does not know cpu {mcpu!r} "
                         f"for {triple}")
