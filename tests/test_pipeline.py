"""Pipeline text: parse, build, print back; clear usage errors; the runner names the
pass that failed and verification catches a broken model a pass returns."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from oracle import tiny_net

from compress_ir.api import compress
from compress_ir.core.errors import (
    EXIT_MODEL,
    EXIT_USAGE,
    PassError,
    UsageError,
    VerificationError,
)
from compress_ir.core.model import Model
from compress_ir.core.passes import PASSES, Pass, PassContext, PassResult, register_pass
from compress_ir.core.pipeline import (
    build_passes,
    format_pipeline,
    parse_pipeline,
    run_pipeline,
)
from compress_ir.core.verify import output_shapes, verify_model
from compress_ir.frontends.onnx import load_onnx
from compress_ir.passes.analysis.importance import CRITERIA

# --- parsing and printing ------------------------------------------------------------


def test_parse_options() -> None:
    assert parse_pipeline("channel-prune{ratio=0.5,criterion=l2,scope=global}") == [
        ("channel-prune", {"ratio": "0.5", "criterion": "l2", "scope": "global"})
    ]


def test_parse_list_option() -> None:
    assert parse_pipeline("channel-prune{exclude=[conv1,stem*]}") == [
        ("channel-prune", {"exclude": ["conv1", "stem*"]})
    ]
    assert parse_pipeline("channel-prune{exclude=[]}") == [("channel-prune", {"exclude": []})]


def test_parse_several_passes_and_whitespace() -> None:
    text = " channel-prune { ratio = 0.25 , exclude=[ a , b ] } , channel-prune"
    assert parse_pipeline(text) == [
        ("channel-prune", {"ratio": "0.25", "exclude": ["a", "b"]}),
        ("channel-prune", {}),
    ]


def test_build_passes_types_the_options() -> None:
    (p,) = build_passes(
        "channel-prune{ratio=0.25,criterion=l1,scope=global,round-to=4,min-channels=2,"
        "exclude=[conv1,stem*]}"
    )
    assert p.name == "channel-prune"
    o = p.options
    assert (o.ratio, o.criterion, o.scope, o.round_to, o.min_channels, o.exclude) == (
        0.25, "l1", "global", 4, 2, ("conv1", "stem*"))
    assert isinstance(o.ratio, float) and isinstance(o.round_to, int)


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("channel-prune", "channel-prune"),
        ("channel-prune{ratio=0.5,criterion=l2,scope=global}", "channel-prune{scope=global}"),
        ("channel-prune{exclude=[conv1,stem*]}", "channel-prune{exclude=[conv1,stem*]}"),
        ("channel-prune{ratio=0.3,round_to=8}", "channel-prune{ratio=0.3,round-to=8}"),
        ("channel-prune{criterion=l1},channel-prune{ratio=0.25}",
         "channel-prune{criterion=l1},channel-prune{ratio=0.25}"),
        ("channel-prune{exclude=conv1}", "channel-prune{exclude=[conv1]}"),
    ],
)
def test_format_pipeline_round_trip(text: str, canonical: str) -> None:
    passes = build_passes(text)
    assert format_pipeline(passes) == canonical
    again = build_passes(canonical)
    assert format_pipeline(again) == canonical
    assert [p.options for p in again] == [p.options for p in passes]


def test_build_passes_accepts_a_list_of_pipelines() -> None:
    passes = build_passes(
        ["channel-prune{ratio=0.25}", "channel-prune{scope=global},channel-prune"])
    assert format_pipeline(passes) == (
        "channel-prune{ratio=0.25},channel-prune{scope=global},channel-prune")


_names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.*/-]{0,8}", fullmatch=True)


@settings(max_examples=60, deadline=None)
@given(
    ratio=st.floats(0.0, 1.0, exclude_max=True),
    criterion=st.sampled_from(CRITERIA.names()),
    scope=st.sampled_from(["uniform", "global"]),
    round_to=st.integers(1, 64),
    min_channels=st.integers(1, 64),
    exclude=st.lists(_names, max_size=4),
)
def test_format_then_build_is_identity(
    ratio: float, criterion: str, scope: str, round_to: int, min_channels: int,
    exclude: list[str],
) -> None:
    text = (f"channel-prune{{ratio={ratio!r},criterion={criterion},scope={scope},"
            f"round-to={round_to},min-channels={min_channels},exclude=[{','.join(exclude)}]}}")
    (p,) = build_passes(text)
    assert p.options.ratio == ratio and p.options.exclude == tuple(exclude)
    (q,) = build_passes(format_pipeline([p]))
    assert q.options == p.options
    assert format_pipeline([q]) == format_pipeline([p])


# --- usage errors --------------------------------------------------------------------


def _usage_error(text: str) -> str:
    with pytest.raises(UsageError) as info:
        build_passes(text)
    assert info.value.exit_code == EXIT_USAGE == 2
    message = str(info.value)
    assert "\n" not in message
    return message


def test_unknown_pass_lists_known_passes() -> None:
    message = _usage_error("chanel-prune{ratio=0.5}")
    assert "'chanel-prune'" in message
    for name in PASSES.names():
        assert name in message
    assert "channel-prune" in message


def test_unknown_option_lists_options() -> None:
    message = _usage_error("channel-prune{ratoi=0.5}")
    assert "'ratoi'" in message
    for opt in ("ratio", "criterion", "scope", "round-to", "min-channels", "exclude"):
        assert opt in message


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("channel-prune{ratio=abc}", ["'abc'", "float"]),
        ("channel-prune{ratio=1.5}", ["ratio", "1.5"]),
        ("channel-prune{ratio=-0.1}", ["ratio"]),
        ("channel-prune{ratio=nan}", ["ratio"]),
        ("channel-prune{ratio=[0.1,0.2]}", ["list"]),
        ("channel-prune{round-to=2.5}", ["'2.5'", "int"]),
        ("channel-prune{round-to=-1}", ["round-to"]),
        ("channel-prune{min-channels=0}", ["min-channels"]),
        ("channel-prune{criterion=taylor-magic}", ["'taylor-magic'", "l1", "l2"]),
        ("channel-prune{scope=galactic}", ["'galactic'", "uniform", "global"]),
    ],
)
def test_bad_option_value(text: str, fragments: list[str]) -> None:
    message = _usage_error(text)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


@pytest.mark.parametrize(
    "text",
    [
        "channel-prune{ratio=0.5",
        "channel-prune{ratio=0.5}}",
        "channel-prune}",
        "channel-prune{exclude=[a,b}",
        "channel-prune{exclude=a,b]}",
    ],
)
def test_unbalanced_braces(text: str) -> None:
    message = _usage_error(text)
    assert "unbalanced" in message or "unclosed" in message


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty pass name"),
        ("channel-prune,,channel-prune", "empty pass name"),
        ("channel-prune,", "empty pass name"),
        ("1prune", "bad pass name"),
        ("channel-prune{0.5}", "not key=value"),
        ("channel-prune{=0.5}", "not key=value"),
        ("channel-prune(ratio=0.5)", "{key=value"),
        ("channel-prune{ratio=0.5}x", "{key=value"),
    ],
)
def test_malformed_pipeline_text(text: str, fragment: str) -> None:
    assert fragment in _usage_error(text)


def test_registering_a_name_twice_fails() -> None:
    with pytest.raises(ValueError, match="registered twice"):
        register_pass("channel-prune")(type("Dup", (Pass,), {"in_place": False}))


# --- the runner ----------------------------------------------------------------------


def _output_conv(model: Model) -> gs.Node:
    return next(n for n in model.graph.nodes if n.name == "conv2")


def _wrong_weight(model: Model) -> None:
    conv = _output_conv(model)  # reads 8 channels; the weight now says 5
    conv.inputs[1] = gs.Constant("conv2.w_bad", np.zeros((4, 5, 3, 3), np.float32))


def _dangling_input(model: Model) -> None:
    _output_conv(model).inputs[0] = gs.Variable("ghost", dtype=np.float32, shape=[1, 8, 8, 8])


def _unknown_op(model: Model) -> None:
    next(n for n in model.graph.nodes if n.name == "relu1").op = "Frobnicate"


def _output_shape_change(model: Model) -> None:
    conv = _output_conv(model)  # 3 output channels where the graph promised 4
    weight = np.asarray(conv.inputs[1].values)[:3]
    conv.inputs[1] = gs.Constant("conv2.w_sliced", weight)
    conv.outputs[0].shape = [1, 3, 8, 8]  # consistent, but not what the graph promised


BREAKAGES = {
    "wrong-weight-shape": (_wrong_weight, "conv2"),
    "dangling-input": (_dangling_input, "ghost"),
    "unknown-op": (_unknown_op, "Frobnicate"),
    "output-shape-change": (_output_shape_change, "changed shape"),
}


class _Broken(Pass):
    summary = "test only: returns a broken model"
    in_place = False
    breakage = staticmethod(_wrong_weight)

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        work = model.copy()
        type(self).breakage(work)
        return PassResult(work, modified=True)


class _Crashing(Pass):
    summary = "test only: raises"
    in_place = False

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        raise RuntimeError("boom")


class _Identity(Pass):
    summary = "test only: returns the model unchanged"
    in_place = False

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        return PassResult(model, modified=False)


@pytest.fixture
def test_passes() -> Iterator[None]:
    """Register throwaway passes; unregister them so other tests see the real registry."""
    names = {"test-broken": _Broken, "test-crashing": _Crashing, "test-identity": _Identity}
    for name, cls in names.items():
        register_pass(name)(cls)
    try:
        yield
    finally:
        for name in names:
            PASSES._items.pop(name, None)


def _run(proto: onnx.ModelProto, text: str):  # noqa: ANN202
    model = load_onnx(proto)
    expected = output_shapes(model.to_proto())
    return run_pipeline(model, build_passes(text), PassContext(),
                        lambda m: verify_model(m, expected))


@pytest.mark.usefixtures("test_passes")
@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_verification_catches_a_broken_model_and_names_the_pass(
    breakage: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    breaker, fragment = BREAKAGES[breakage]
    monkeypatch.setattr(_Broken, "breakage", staticmethod(breaker))
    with pytest.raises(PassError) as info:
        _run(tiny_net(), "test-identity,test-broken")
    message = str(info.value)
    assert message.startswith("pass 'test-broken' (after test-identity): invalid model") or (
        message.startswith("pass 'test-broken' (after test-identity): graph output")
    ), message
    assert fragment in message, message
    assert info.value.exit_code == EXIT_MODEL
    assert isinstance(info.value.__cause__, VerificationError)


@pytest.mark.usefixtures("test_passes")
def test_runner_wraps_an_unexpected_exception() -> None:
    with pytest.raises(PassError, match=r"pass 'test-crashing': internal error RuntimeError: boom"):
        _run(tiny_net(), "test-crashing")


@pytest.mark.usefixtures("test_passes")
def test_runner_names_pass_and_predecessors_through_the_api() -> None:
    with pytest.raises(PassError) as info:
        compress(tiny_net(), "channel-prune{ratio=0.25},test-broken")
    assert str(info.value).startswith(
        "pass 'test-broken' (after channel-prune): invalid model")
    assert "conv2" in str(info.value)


@pytest.mark.usefixtures("test_passes")
def test_unmodified_result_is_not_verified() -> None:
    result = _run(tiny_net(), "test-identity,channel-prune")
    assert [p.name for p, _ in result.results] == ["test-identity", "channel-prune"]
    assert result.results[1][1].modified


def test_usage_error_inside_a_pass_keeps_exit_code_2() -> None:
    # `channel-prune` checks its criterion's needs at run time; make one need calibration.
    class _NeedsCalib(CRITERIA.get("l2")):  # type: ignore[misc, valid-type]
        needs_calibration = True

    CRITERIA.register("test-needs-calib")(_NeedsCalib)
    try:
        with pytest.raises(PassError) as info:
            compress(tiny_net(), "channel-prune{criterion=test-needs-calib}")
    finally:
        CRITERIA._items.pop("test-needs-calib", None)
    assert info.value.exit_code == EXIT_USAGE
    assert "calibration" in str(info.value)
    assert str(info.value).startswith("pass 'channel-prune{criterion=test-needs-calib}'")


def test_in_memory_model_with_a_target_needs_an_artifact_path(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """A ModelProto has no path to name the artifact after: a usage error, no `<ModelProto>.x86`."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match="--artifact"):
        compress(tiny_net(), "fold-bn", target="x86")
    assert list(tmp_path.iterdir()) == []
