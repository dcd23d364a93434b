"""The local TVM timer behind latency tables: build a model for the target, time it here.

`tvm_prepare(spec)` returns the `Prepare` that `passes.analysis.latency_table` calls:
import the ONNX model (batch 1), compile it with the project's default schedules
(`compile_relax`, the same build `compress-ir --target` uses), and return a callable
giving one `time_evaluator` sample in ms. A sample repeats the call until it lasts
about `MIN_SAMPLE_MS`, so microsecond layers are not timer noise. Local only: a
target this host cannot run is refused (RPC timers register their own factory).
"""

from __future__ import annotations

from typing import Any

import onnx

from compress_ir.core.errors import UsageError

MIN_SAMPLE_MS = 2.0


def tvm_prepare(spec: Any) -> Any:
    """`Prepare` for `spec` (a TargetSpec), timing on this host's CPU."""
    if spec.device != "cpu" or spec.family == "arm":
        raise UsageError(f"target {spec.name}: latency tables are timed locally; this host "
                         "cannot run it (use an RPC latency timer)")
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    from compress_ir.backend.schedule import compile_relax

    target = spec.tvm_target()

    def prepare(proto: onnx.ModelProto) -> Any:
        inits = {i.name for i in proto.graph.initializer}
        shapes = {i.name: [d.dim_value if d.dim_value > 0 else 1
                           for d in i.type.tensor_type.shape.dim]
                  for i in proto.graph.input if i.name not in inits}
        mod = from_onnx(proto, shape_dict=shapes, keep_params_in_input=False)
        executable, _ = compile_relax(mod, target, spec)
        dev = tvm.cpu()
        vm = relax.VirtualMachine(executable, dev)
        import numpy as np

        rng = np.random.default_rng(0)
        args = [tvm.runtime.tensor(rng.standard_normal(s).astype(np.float32), dev)
                for s in shapes.values()]
        vm["main"](*args)
        once = vm.time_evaluator("main", dev, number=1, repeat=1)
        first = float(once(*args).results[0]) * 1e3
        number = max(1, int(MIN_SAMPLE_MS / max(first, 1e-4)))
        evaluator = vm.time_evaluator("main", dev, number=number, repeat=1)
        return lambda: float(evaluator(*args).results[0]) * 1e3

    return prepare
