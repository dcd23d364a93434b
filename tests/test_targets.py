"""The target registry: names, per-target channel multiples, expert TVM dicts, errors,
and channel-prune's round-to default taken from the target."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compress_ir.core import numeric
from compress_ir.core.errors import EXIT_USAGE, UsageError
from compress_ir.core.passes import PassContext
from compress_ir.frontends.onnx import load_onnx
from compress_ir.passes.transform.channel_prune import ChannelPrune, ChannelPruneOptions
from compress_ir.targets import TARGETS, list_targets, resolve_target

EXPECTED = ["arm", "arm:rpi4", "arm:a76", "x86", "x86:avx2", "x86:avx512", "cuda",
            "cuda:sm_75", "cuda:sm_80", "cuda:sm_86", "cuda:sm_89", "cuda:sm_90"]


def _host_flags() -> set[str]:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def test_registry_names_and_list() -> None:
    assert list(TARGETS) == EXPECTED
    assert [name for name, _ in list_targets()] == EXPECTED
    assert all(summary for _, summary in list_targets())


@pytest.mark.parametrize(
    ("name", "family", "device", "round_to", "tvm_subset"),
    [
        ("arm", "arm", "cpu", 4, {"kind": "llvm", "mtriple": "aarch64-linux-gnu",
                                  "mattr": ["+neon"]}),
        ("arm:rpi4", "arm", "cpu", 4, {"mcpu": "cortex-a72"}),
        ("arm:a76", "arm", "cpu", 4, {"mcpu": "cortex-a76"}),
        ("x86:avx2", "x86", "cpu", 8, {"kind": "llvm"}),
        ("x86:avx512", "x86", "cpu", 16, {"mcpu": "skylake-avx512"}),
        ("cuda", "cuda", "cuda", 8, {"kind": "cuda", "arch": "sm_80"}),
        ("cuda:sm_75", "cuda", "cuda", 8, {"arch": "sm_75"}),
        ("cuda:sm_90", "cuda", "cuda", 8, {"arch": "sm_90"}),
    ],
)
def test_named_targets(name: str, family: str, device: str, round_to: int,
                       tvm_subset: dict) -> None:
    spec = resolve_target(name)
    assert (spec.name, spec.family, spec.device, spec.round_to) == (name, family, device,
                                                                    round_to)
    assert {k: spec.tvm[k] for k in tvm_subset} == tvm_subset
    assert (spec.cross_compiler == "aarch64-linux-gnu-gcc") == (family == "arm")
    assert (spec.host is not None) == (family == "cuda")
    json.dumps(spec.to_dict())  # report/meta ready


def test_a76_has_dotprod() -> None:
    assert "+dotprod" in resolve_target("arm:a76").tvm["mattr"]


def test_x86_host_matches_cpuinfo() -> None:
    flags = _host_flags()
    want = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    spec = resolve_target("x86")
    assert spec.round_to == want
    assert spec.tvm["kind"] == "llvm" and spec.tvm["mcpu"]
    assert set(spec.required_cpu_flags) <= flags


def test_every_registered_target_is_a_valid_tvm_target() -> None:
    pytest.importorskip("tvm")
    for name in TARGETS:
        target = resolve_target(name).tvm_target()
        assert str(target.kind.name) == ("cuda" if name.startswith("cuda") else "llvm")


def test_importing_the_registry_does_not_import_tvm() -> None:
    code = ("import sys; from compress_ir.targets import resolve_target, list_targets; "
            "list_targets(); resolve_target('arm:rpi4'); resolve_target('cuda:sm_86'); "
            "assert 'tvm' not in sys.modules, 'tvm imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(UsageError) as info:
        resolve_target("arm:rpi9")
    message = str(info.value)
    assert info.value.exit_code == EXIT_USAGE and "'arm:rpi9'" in message
    for name in EXPECTED:
        assert name in message


def test_expert_dict_and_json_text() -> None:
    pytest.importorskip("tvm")
    spec = resolve_target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a55"})
    assert (spec.family, spec.device, spec.round_to, spec.expert) == ("arm", "cpu", 4, True)
    assert spec.tvm["mcpu"] == "cortex-a55"
    text = '{"kind": "cuda", "arch": "sm_87"}'
    cuda = resolve_target(text)
    assert (cuda.family, cuda.cuda_arch, cuda.host) == ("cuda", "sm_87", {"kind": "llvm"})
    x86 = resolve_target('{"kind": "llvm", "mcpu": "skylake-avx512"}')
    assert (x86.family, x86.round_to, x86.required_cpu_flags) == ("x86", 16, ("avx512f",))


@pytest.mark.parametrize(
    ("value", "fragments"),
    [
        ({"kind": "llvm", "no_such_option": 1}, ["TVM rejects", "no_such_option"]),
        ({"kind": "llvm", "mcpu": "pentium-nine"}, ["TVM rejects", "pentium-nine"]),
        ('{"kind": "llvm", "mcpu": }', ["not valid JSON"]),
        ({"kind": "opencl"}, ["'opencl'", "not supported"]),
        ({"kind": "llvm", "mtriple": "riscv64-linux-gnu"}, ["riscv64"]),
        ({"kind": "cuda"}, ["arch"]),
        ({"mcpu": "x"}, ["'kind'"]),
    ],
)
def test_bad_expert_targets(value: object, fragments: list[str]) -> None:
    pytest.importorskip("tvm")
    with pytest.raises(UsageError) as info:
        resolve_target(value)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_slug() -> None:
    assert resolve_target("arm:rpi4").slug == "arm-rpi4"
    assert resolve_target("cuda:sm_80").slug == "cuda-sm_80"


# --- channel-prune: round-to default per target -------------------------------------------


def _two_convs(channels: int = 20) -> onnx.ModelProto:
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n) for n, s in
             (("w1", (channels, 3, 3, 3)), ("b1", (channels,)), ("w2", (4, channels, 3, 3)))]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["h"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1])]
    graph = helper.make_graph(
        nodes, "two", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize(
    ("target", "options", "kept"),
    [
        (None, {}, 10),              # 20 channels, ratio 0.5: 10 kept, no rounding
        ("arm", {}, 12),             # NEON: multiple of 4
        ("x86:avx2", {}, 16),        # AVX2: multiple of 8
        ("x86:avx512", {}, 16),      # AVX-512: multiple of 16
        ("x86:avx512", {"round_to": 1}, 10),   # an explicit value wins
        ("arm", {"round_to": 8}, 16),
    ],
)
def test_round_to_default_follows_the_target(target: str | None, options: dict,
                                             kept: int) -> None:
    proto = _two_convs()
    spec = resolve_target(target) if target else None
    result = ChannelPrune(ChannelPruneOptions(ratio=0.5, **options)).run(
        load_onnx(proto), PassContext(target=spec))
    pruned = result.model.to_proto()
    onnx.checker.check_model(pruned, full_check=True)
    w1 = {i.name: numpy_helper.to_array(i) for i in pruned.graph.initializer}["w1"]
    assert w1.shape[0] == kept
    assert result.stats["round_to"] == (options.get("round_to") or
                                        (spec.round_to if spec else 1))
    assert numeric.compare(pruned, result.reference) < 1e-5


@pytest.mark.parametrize("value", [
    *[name for name in EXPECTED if not name.startswith("cuda")],
    {"kind": "llvm", "mcpu": "icelake-server"},  # AVX-512 by LLVM's own feature table
    {"kind": "llvm", "mcpu": "alderlake"},  # AVX2, no AVX-512
    {"kind": "llvm", "mcpu": "nehalem"},  # SSE only
    {"kind": "llvm"},
    {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a55"},
])
def test_schedules_and_round_to_read_the_same_lanes(value: str | dict) -> None:
    """One source for the vector width: the spec. round-to, the CPU schedule's lanes and
    the spec rebuilt from the bare TVM target (callers without a spec) all agree."""
    pytest.importorskip("tvm")
    from compress_ir.backend.schedule.cpu import cpu_params
    from compress_ir.targets.registry import spec_of_tvm_target

    spec = resolve_target(value)
    assert spec.lanes in (4, 8, 16) and spec.round_to == spec.lanes
    assert cpu_params(spec).lanes == spec.lanes
    if value != "x86":  # the host spec reads /proc/cpuinfo, a bare target cannot
        assert spec_of_tvm_target(spec.tvm_target()).lanes == spec.lanes
    want = {"icelake-server": 16, "alderlake": 8, "nehalem": 4}
    if isinstance(value, dict) and value.get("mcpu") in want:
        assert spec.lanes == want[value["mcpu"]]
