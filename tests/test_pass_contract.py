"""Each registered pass keeps its declared mutation contract (`Pass.in_place`), the
pipeline enforces it, exporting has no side effects, and the API leaves a caller's
Model alone."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest

import compress_ir.passes  # noqa: F401 - registers the passes
from compress_ir.api import compress
from compress_ir.core.calibration import load_calibration
from compress_ir.core.errors import PassError
from compress_ir.core.model import Model
from compress_ir.core.passes import PASSES, Pass, PassContext, PassResult, register_pass
from compress_ir.core.pipeline import build_passes, run_checked, run_pipeline
from compress_ir.frontends.onnx import load_onnx

TINY = Path(__file__).parents[1] / "tools" / "models" / "tiny_cnn.onnx"


def _plain(text: str) -> Callable[[], tuple[Model, PassContext, Pass]]:
    def setup() -> tuple[Model, PassContext, Pass]:
        model = load_onnx(TINY)
        return model, PassContext(original=model.to_proto()), build_passes(text)[0]
    return setup


def _reconstruct() -> tuple[Model, PassContext, Pass]:
    original = load_onnx(TINY).to_proto()
    pruned = compress(original, "channel-prune{ratio=0.5}").model
    ctx = PassContext(original=original,
                      calibration=load_calibration("random:8", original, seed=0))
    return load_onnx(pruned), ctx, build_passes("reconstruct{samples=256}")[0]


def _refit_norms() -> tuple[Model, PassContext, Pass]:
    """Two post-norm blocks whose LN scales moved: the refit changes them back."""
    from test_refit_norms import _blocks, _calib, _ln_params

    original = _blocks(np.random.default_rng(0))
    moved = [(g * 1.5, b) for g, b in _ln_params(original)]
    current = _blocks(np.random.default_rng(0), ln_params=moved)
    ctx = PassContext(original=original, calibration=_calib(np.random.default_rng(1)))
    return Model.from_proto(current), ctx, build_passes("refit-norms")[0]


def _distill() -> tuple[Model, PassContext, Pass]:
    """Magnitude-sparse tiny CNN: gradient steps toward the original's output."""
    original = load_onnx(TINY).to_proto()
    sparse = compress(original, "sparsify{sparsity=0.5,criterion=magnitude}").model
    ctx = PassContext(original=original,
                      calibration=load_calibration("random:16", original, seed=0))
    return load_onnx(sparse), ctx, build_passes("distill{epochs=1,lr=1e-3,batch=4}")[0]


# One setup per registered pass, each making a transform change something (an analysis
# pass, `transforms = False`, must change nothing). A new pass
# fails `test_every_pass_has_a_contract_case` until it gets a line here.
CASES: dict[str, Callable[[], tuple[Model, PassContext, Pass]]] = {
    "channel-prune": _plain("channel-prune{ratio=0.5}"),
    "channel-groups": _plain("channel-groups"),
    "fold-bn": _plain("fold-bn"),
    "sparsify": _plain("sparsify{sparsity=0.5}"),
    "share-weights": _plain("share-weights{bits=2}"),
    "reconstruct": _reconstruct,
    "refit-norms": _refit_norms,
    "distill": _distill,
}


def test_every_pass_has_a_contract_case() -> None:
    assert sorted(CASES) == PASSES.names()


@pytest.mark.parametrize("name", PASSES.names())
def test_pass_keeps_its_declared_mutation_contract(name: str) -> None:
    model, ctx, p = CASES[name]()
    assert isinstance(p.in_place, bool), f"{name} does not declare in_place"
    before = model.to_proto().SerializeToString()
    result = p.run(model, ctx)
    if not p.transforms:  # an analysis: reads and reports only
        assert not result.modified and result.model is model
        assert model.to_proto().SerializeToString() == before
        return
    assert result.modified, f"the {name} case changes nothing: it proves nothing"
    if p.in_place:
        assert result.model is model
    else:
        assert result.model is not model
        assert model.to_proto().SerializeToString() == before  # input bytes unchanged


def test_export_has_no_side_effects() -> None:
    """to_proto used to clean up and sort the live graph; now the graph stays as it is."""
    model = load_onnx(TINY)
    dead = gs.Node("Relu", "dead", inputs=[model.graph.inputs[0]],
                   outputs=[gs.Variable("dead_out", dtype=np.float32)])
    model.graph.nodes.insert(0, model.graph.nodes.pop())  # out of topological order
    model.graph.nodes.append(dead)
    order = [n.name for n in model.graph.nodes]
    proto = model.to_proto()
    assert [n.name for n in model.graph.nodes] == order
    assert "dead" not in {n.name for n in proto.graph.node}  # the export is still clean
    onnx.checker.check_model(proto)


def test_api_leaves_a_callers_model_alone() -> None:
    model = load_onnx(TINY)
    before = model.to_proto().SerializeToString()
    compress(model, "sparsify{sparsity=0.5},share-weights{bits=2},fold-bn")
    assert model.to_proto().SerializeToString() == before


# --- the pipeline enforces the declaration -------------------------------------------------


class _SneakyFunctional(Pass):
    """Declared functional, but swaps a weight of its input."""

    summary = "test only"
    in_place = False

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        const = next(t for t in model.graph.tensors().values() if isinstance(t, gs.Constant))
        const.values = np.zeros_like(const.values)
        return PassResult(model.copy(), modified=True)


class _WritesWeightsInPlace(Pass):
    """Declared functional, but writes into its input's weight array."""

    summary = "test only"
    in_place = False

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        const = next(t for t in model.graph.tensors().values() if isinstance(t, gs.Constant))
        const.values[...] = 0
        return PassResult(model.copy(), modified=True)


class _CopyingInPlace(Pass):
    """Declared in place, but returns a copy."""

    summary = "test only"
    in_place = True

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        return PassResult(model.copy(), modified=True)


@pytest.fixture
def bad_passes() -> Iterator[None]:
    names = {"test-sneaky": _SneakyFunctional, "test-writes": _WritesWeightsInPlace,
             "test-copying": _CopyingInPlace}
    for name, cls in names.items():
        register_pass(name)(cls)
    try:
        yield
    finally:
        for name in names:
            PASSES._items.pop(name, None)


@pytest.mark.usefixtures("bad_passes")
@pytest.mark.parametrize("name, fragment", [
    ("test-sneaky", "changed the model it was given"),
    ("test-writes", "read-only"),
    ("test-copying", "different model object"),
])
def test_pipeline_refuses_a_pass_that_breaks_its_declaration(name: str, fragment: str) -> None:
    model = load_onnx(TINY)
    weights = {t.name: np.asarray(t.values).copy() for t in model.graph.tensors().values()
               if isinstance(t, gs.Constant)}
    with pytest.raises(PassError, match=fragment):
        run_pipeline(model, build_passes(name), PassContext(), lambda m: None)
    if name == "test-writes":  # the write was stopped, and the arrays are writable again
        for t in model.graph.tensors().values():
            if isinstance(t, gs.Constant):
                assert np.array_equal(t.values, weights[t.name]) and t.values.flags.writeable


def test_undeclared_pass_is_refused_at_registration() -> None:
    with pytest.raises(TypeError, match="in_place"):
        register_pass("test-undeclared")(type("Undeclared", (Pass,), {}))
    assert "test-undeclared" not in PASSES


def test_run_checked_passes_a_well_behaved_functional_pass() -> None:
    model, ctx, p = CASES["channel-prune"]()
    result = run_checked(p, model, ctx)
    assert result.modified and result.model is not model
    assert all(np.asarray(t.values).flags.writeable for t in model.graph.tensors().values()
               if isinstance(t, gs.Constant))
