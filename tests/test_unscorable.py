"""A criterion that cannot score some groups leaves them whole and says why."""

from __future__ import annotations

from pathlib import Path

import pytest

import compress_ir.passes  # noqa: F401 - registers the passes
from compress_ir.core import numeric
from compress_ir.core.calibration import load_calibration
from compress_ir.core.errors import UsageError
from compress_ir.core.passes import PassContext
from compress_ir.core.pipeline import build_passes
from compress_ir.frontends.onnx import load_onnx

PLAIN = Path(__file__).resolve().parents[1] / "tools" / "models" / "mnist_plain_cnn.onnx"


def test_hrank_leaves_fc_groups_whole_and_reports_them() -> None:
    model = load_onnx(PLAIN)
    calib = load_calibration("random:8", model.to_proto())
    (p,) = build_passes("channel-prune{ratio=0.5,criterion=hrank}")
    result = p.run(model, PassContext(calibration=calib))
    rows = result.details["groups"]
    unscored = [g for g in rows if g["status"] == "unscored"]
    pruned = [g for g in rows if g["status"] == "pruned" and g["kept"] < g["size"]]
    assert unscored and all("hrank" in g["unscored"] for g in unscored)
    assert all(any("Gemm" in p for p in g["producers"]) for g in unscored)
    assert len(pruned) == 3  # the three convs
    assert numeric.compare(result.model.to_proto(), result.reference) <= 1e-4


def test_bn_scale_on_a_model_without_bn_is_an_error() -> None:
    model = load_onnx(PLAIN)
    (p,) = build_passes("channel-prune{ratio=0.5,criterion=bn-scale}")
    with pytest.raises(UsageError, match="BatchNormalization"):
        p.run(model, PassContext())
