"""`--tune-budget` on a torchvision fixture (not a test): the budget's log, whole-model result.

    python tools/results/tvm_speed/tune_budget.py resnet18 600 > tune_budget600_resnet18.json
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench_tvm import host_target, input_spec, load_fixture  # noqa: E402
from tvm.relax.frontend.onnx import from_onnx  # noqa: E402

from compress_ir.backend.schedule import compile_relax  # noqa: E402


def main() -> int:
    name, budget = sys.argv[1], float(sys.argv[2])
    proto = load_fixture(name, 0)
    in_name, shape = input_spec(proto)
    mod = from_onnx(proto, shape_dict={in_name: shape}, keep_params_in_input=False)
    t0 = time.time()
    with tempfile.TemporaryDirectory() as db:
        _ex, st = compile_relax(mod, host_target(), tune_budget_s=budget, tuning_db=db)
    out = {"model": name, "budget_s": budget, "wall_s": round(time.time() - t0, 1),
           "whole_model": st.whole_model, "budget": st.budget,
           "measured_candidates": st.measured_candidates,
           "winners": {k: v["winner"] for k, v in st.choices.items()},
           "choices_us": {k: {kk: (round(vv, 1) if vv else vv) for kk, vv in v.items()
                              if kk != "winner"} for k, v in st.choices.items()},
           "seconds": {k: round(v, 1) for k, v in st.seconds.items()}}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
