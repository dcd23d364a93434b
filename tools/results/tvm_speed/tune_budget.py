"""`--tune-budget` on a torchvision fixture (not a test): the budget's log and whole-model result.

    python tools/results/tvm_speed/tune_budget.py resnet18 600 > tune_budget600_resnet18.json
"""
import sys, json, time, tempfile
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import numpy as np, tvm
from bench_tvm import load_fixture, input_spec, host_target
from tvm.relax.frontend.onnx import from_onnx
from compress_ir.backend.schedule import compile_relax
name, budget = sys.argv[1], float(sys.argv[2])
p = load_fixture(name, 0); n, s = input_spec(p)
mod = from_onnx(p, shape_dict={n: s}, keep_params_in_input=False)
t0 = time.time()
with tempfile.TemporaryDirectory() as d:
    ex, st = compile_relax(mod, host_target(), tune_budget_s=budget, tuning_db=d)
out = {"model": name, "budget_s": budget, "wall_s": round(time.time() - t0, 1),
       "whole_model": st.whole_model, "budget": st.budget, "measured_candidates": st.measured_candidates,
       "winners": {k: v["winner"] for k, v in st.choices.items()},
       "choices_us": {k: {kk: (round(vv, 1) if vv else vv) for kk, vv in v.items() if kk != "winner"} for k, v in st.choices.items()},
       "seconds": {k: round(v, 1) for k, v in st.seconds.items()}}
print(json.dumps(out, indent=1))
