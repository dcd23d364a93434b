"""Demo: an aarch64 device farm under qemu — verify, benchmark and tune through a tracker.

Why: proves the whole RPC path for a cross target without a board: two TVM RPC servers
run the aarch64 TVM runtime under qemu-aarch64 user-mode emulation (the rootfs of
setup_rootfs.sh), registered under one key at a local tracker (tools/rpc_farm.py). Then,
through the CLI, exactly as with real boards:

1. the tiny CNN is pruned, cross-compiled for `arm`, checked on an "arm board" against
   onnxruntime, and `--benchmark` times the original and the pruned artifact, interleaved,
   on the same emulated device;
2. a one-layer model is tuned for `arm` with MetaSchedule's RPC runner (`--tune-trials`),
   its candidates measured on the emulated boards.

qemu translates every instruction: the timings show the path works, not how fast a
board is (and the ratios are those of emulated code).

    python tools/arm/rpc_demo.py [--rootfs DIR] [--servers 2] [--trials 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
TINY_CNN = ROOT / "tools" / "models" / "tiny_cnn.onnx"
DEFAULT_ROOTFS = Path.home() / ".cache" / "compress-ir" / "arm64-rootfs"


def _farm_module() -> Any:
    spec = importlib.util.spec_from_file_location("rpc_farm", ROOT / "tools" / "rpc_farm.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def dense_relu(path: Path) -> Path:
    """One MetaSchedule task: MatMul 8x256 @ 256x128 + ReLU."""
    rng = np.random.default_rng(3)
    w = numpy_helper.from_array(rng.standard_normal((256, 128)).astype(np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["m"]), helper.make_node("Relu", ["m"], ["y"])],
        "dense_relu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 128])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def compress_ir(*args: str | Path) -> tuple[int, float, str]:
    """Run the CLI as a user would; exit code, seconds, stderr tail."""
    exe = Path(sys.executable).with_name("compress-ir")
    cmd = [str(exe) if exe.exists() else "compress-ir", *map(str, args), "-q"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    return proc.returncode, time.perf_counter() - t0, proc.stderr.strip()[-600:]


def main(argv: list[str] | None = None) -> int:
    """Start the qemu farm, run the two demos, print (and optionally save) the numbers."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rootfs", default=os.environ.get("COMPRESS_IR_ARM_ROOTFS", DEFAULT_ROOTFS))
    p.add_argument("--servers", type=int, default=2)
    p.add_argument("--trials", type=int, default=2, help="MetaSchedule trials per task")
    p.add_argument("--repeat", type=int, default=10, help="benchmark rounds")
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args(argv)
    results: dict[str, Any] = {"rootfs": str(args.rootfs), "servers": args.servers}
    t0 = time.perf_counter()
    with _farm_module().Farm(servers=0, arm_servers=args.servers, rootfs=args.rootfs) as farm, \
            tempfile.TemporaryDirectory(prefix="cir-arm-rpc-") as tmp:
        results["farm_start_s"] = round(time.perf_counter() - t0, 1)
        address = farm.address(farm.arm_key)
        print("\n".join(farm.describe()), flush=True)
        work = Path(tmp)
        report = work / "bench.json"
        code, secs, err = compress_ir(
            TINY_CNN, "--pass", "channel-prune{ratio=0.5}", "-o", work / "pruned.onnx",
            "--target", "arm", "--artifact", work / "pruned.arm", "--rpc", address,
            "--benchmark", "--repeat", args.repeat, "--report", report)
        bench_doc = json.loads(report.read_text()) if report.exists() else {}
        target = bench_doc.get("target") or {}
        results["benchmark"] = {"exit": code, "seconds": round(secs, 1), "error": err if code
                                else None, "verify": target.get("verify"),
                                "benchmark": target.get("benchmark")}
        print(f"benchmark: exit {code} in {secs:.0f} s", flush=True)
        tuned = work / "tuned.json"
        code, secs, err = compress_ir(
            dense_relu(work / "dense_relu.onnx"), "--target", "arm", "--artifact",
            work / "dense.arm", "--rpc", address, "--tune-trials", args.trials,
            "--report", tuned)
        tuned_doc = json.loads(tuned.read_text()) if tuned.exists() else {}
        target = tuned_doc.get("target") or {}
        sched = target.get("schedule") or {}
        results["tuning"] = {"exit": code, "seconds": round(secs, 1),
                             "error": err if code else None,
                             "tuning_rpc": target.get("tuning_rpc"),
                             "verify": target.get("verify"),
                             **{k: sched.get(k) for k in ("tuned_tasks", "measured_candidates",
                                                          "measured_defaults", "default_errors",
                                                          "choices", "rules")}}
        results["sessions_per_server"] = {
            str(s.port): s.log.read_text(errors="replace").count("connected from")
            for s in farm.servers}
        print(f"tuning: exit {code} in {secs:.0f} s", flush=True)
    print(json.dumps(results, indent=1, default=str))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str) + "\n")
    return 0 if results["benchmark"]["exit"] == 0 and results["tuning"]["exit"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
