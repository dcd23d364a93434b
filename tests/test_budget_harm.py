"""target-macs with `harm=output`: the greedy budget spends its removals where the
measured output loss rises least, not where normalised criterion scores are lowest."""

from __future__ import annotations

import numpy as np
import pytest
from test_budget import _allocation, _rows, _two_branches

from compress_ir.api import compress
from compress_ir.core import numeric
from compress_ir.core.calibration import CalibrationSet


def _calib(count: int, seed: int) -> CalibrationSet:
    data = np.random.default_rng(seed).standard_normal((count, 3, 8, 8)).astype(np.float32)
    return CalibrationSet({"x": data}, f"test:{seed}")


def _error(model, original, x: np.ndarray) -> float:  # noqa: ANN001
    """Relative output error on fresh samples (the model takes batch 1)."""
    got = np.stack([numeric.run(model, {"x": x[i:i + 1]})["y"] for i in range(len(x))])
    want = np.stack([numeric.run(original, {"x": x[i:i + 1]})["y"] for i in range(len(x))])
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def test_output_harm_prunes_the_branch_that_does_not_matter() -> None:
    proto = _two_branches()  # y = strong(x) + 0.02 * weak(x), same widths and MACs
    calib = _calib(16, 0)
    spec = "channel-prune{{criterion=l2,target-macs=0.6,harm={}}}"
    by_output = compress(proto, spec.format("output"), calibration=calib)
    by_score = compress(proto, spec.format("score"), calibration=calib)
    rows_o, rows_s = _rows(by_output), _rows(by_score)
    # both reach the budget; the measured harm spends it all on the weak branch
    assert _allocation(by_output)["reached"] and _allocation(by_score)["reached"]
    assert rows_o["strong1"]["kept"] == 8 and rows_o["weak1"]["kept"] <= 2
    assert rows_s["strong1"]["kept"] < 8  # scores normalised per group cannot tell
    fresh = _calib(32, 5).arrays["x"]
    assert _error(by_output.model, proto, fresh) < 0.5 * _error(by_score.model, proto, fresh)
    alloc = _allocation(by_output)
    assert alloc["harm"] == "output" and alloc["harm_samples"] == 16
    curve = alloc["harm_curves"][rows_o["weak1"]["group"]]
    assert curve["kept"][-1] == 8 and curve["loss"][-1] == 0.0  # the dense point
    assert by_output.report["checks"][0]["ok"]  # sliced model == masked oracle


@pytest.mark.parametrize("spec", ["channel-prune{harm=output}",
                                  "channel-prune{target-macs=0.5,harm=loss}"])
def test_bad_harm_options(spec: str) -> None:
    with pytest.raises(Exception, match="harm"):
        compress(_two_branches(), spec, calibration=_calib(4, 0))
