"""Oracle tests on real topologies: the `onnx` package's light zoo and torchvision.

Both store weights as ConstantOfShape placeholders; they get seeded random weights
here. Each pruned model must equal its masked original in onnxruntime, keep its
output shapes, and (for the big four) lose at least 35 % of its MACs at ratio 0.5.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx
import pytest
from oracle import prune_and_check

from compress_ir.core.metrics import model_metrics
from compress_ir.frontends.placeholders import fill_placeholders

LIGHT = Path(os.path.dirname(onnx.__file__)) / "backend" / "test" / "data" / "light"
TORCHVISION = Path(__file__).parent / "fixtures" / "torchvision"

LIGHT_MODELS = sorted(p.stem.removeprefix("light_") for p in LIGHT.glob("light_*.onnx"))
TORCHVISION_MODELS = sorted(p.stem for p in TORCHVISION.glob("*.onnx"))

# Models whose 50 % uniform prune must remove >= 35 % of the MACs (issue #2).
MACS_FLOOR = {"resnet50": 0.65, "vgg19": 0.65, "densenet121": 0.65, "mobilenet_v2": 0.65}


def _lrn_is_a_named_barrier(groups: list[dict]) -> None:
    reasons = {r for g in groups for r in g["blocked_by"]}
    assert any(r.startswith("LRN node") for r in reasons), reasons


def _convnext_residual_stream_blocked_by_layernorm(groups: list[dict]) -> None:
    blocked = [g for g in groups if g["status"] == "blocked"]
    assert blocked and all(
        any("LayerNormalization" in r or "graph output" in r for r in g["blocked_by"])
        for g in blocked
    )
    # the MLP hidden channels (4C) are still pruned
    assert any(g["status"] == "pruned" and g["kept"] < g["size"] for g in groups)


EXTRA_CHECKS = {
    "bvlc_alexnet": _lrn_is_a_named_barrier,
    "zfnet512": _lrn_is_a_named_barrier,
    "convnext_tiny": _convnext_residual_stream_blocked_by_layernorm,
}


def test_all_light_models_present() -> None:
    assert set(LIGHT_MODELS) == {
        "bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50",
        "shufflenet", "squeezenet", "vgg19", "zfnet512",
    }


def test_torchvision_fixtures_present() -> None:
    required = {"mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "resnext50_32x4d",
                "regnet_x_400mf", "shufflenet_v2_x0_5", "googlenet", "convnext_tiny",
                "lraspp_mobilenet_v3_large"}
    assert required <= set(TORCHVISION_MODELS)


def _check(path: Path, name: str) -> None:
    outcome = prune_and_check(fill_placeholders(onnx.load(path), seed=0))
    before = model_metrics(outcome.original)["macs"]
    after = model_metrics(outcome.pruned)["macs"]
    assert after < before
    if name in MACS_FLOOR:
        assert after / before <= MACS_FLOOR[name], f"{name}: MACs ratio {after / before:.3f}"
    groups = outcome.result.details["groups"]
    # every group that was not pruned says why
    for g in groups:
        if g["status"] == "blocked":
            assert g["blocked_by"], g
    EXTRA_CHECKS.get(name, lambda _: None)(groups)


@pytest.mark.parametrize("name", LIGHT_MODELS)
def test_light_zoo_oracle(name: str) -> None:
    _check(LIGHT / f"light_{name}.onnx", name)


@pytest.mark.parametrize("name", TORCHVISION_MODELS)
def test_torchvision_oracle(name: str) -> None:
    _check(TORCHVISION / f"{name}.onnx", name)



def test_ratio_zero_returns_input_unchanged() -> None:
    proto = fill_placeholders(onnx.load(LIGHT / "light_resnet50.onnx"))
    outcome = prune_and_check(proto, "channel-prune{ratio=0.0}", expect_modified=False)
    assert outcome.result.model.to_proto().graph == outcome.original.graph
