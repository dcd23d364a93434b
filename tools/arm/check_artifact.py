"""Check an aarch64 compress-ir artifact under qemu against onnxruntime on the host.

Why: an ARM build is cross-compiled here and cannot run on the x86 host, so a wrong
lowering, a bad cross link or a missing runtime symbol would only show on the user's board.
This script runs the artifact for real, in an arm64 Debian root file system under
``qemu-aarch64-static`` (made once by ``tools/arm/setup_rootfs.sh``), on seeded random
inputs built from ``meta.json``, and compares every output with onnxruntime running the
ONNX model on the host (relative max error, as everywhere in compress-ir).

Usage::

    python tools/arm/check_artifact.py ARTIFACT --model MODEL.onnx [--rootfs DIR]
        [--seed S] [--tolerance T] [--repeat N] [--threads N] [--timeout S] [--json OUT]

Prints one verdict line (PASS/FAIL, errors per output, timings). Exit codes: 0 match,
1 mismatch or the artifact failed under qemu, 2 usage (not an aarch64 artifact, no rootfs,
inputs that do not fit the model), 3 invalid model or artifact.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from compress_ir.api import DEFAULT_TOLERANCE
from compress_ir.core.errors import (
    EXIT_NUMERIC,
    EXIT_OK,
    CompressIRError,
    ModelLoadError,
    UsageError,
)
from compress_ir.core.feeds import realistic_inputs
from compress_ir.core.files import write_atomic
from compress_ir.core.numeric import rel_error, session

HERE = Path(__file__).resolve().parent
RUNNER = HERE / "runner.py"
SETUP = HERE / "setup_rootfs.sh"
DEFAULT_ROOTFS = Path.home() / ".cache" / "compress-ir" / "arm64-rootfs"
SITE = "opt/compress-ir/site-packages"  # inside the rootfs, see setup_rootfs.sh
PYTHON = "usr/bin/python3.11"
STAMP = ".compress-ir-rootfs"  # written by setup_rootfs.sh once the rootfs works
QEMU = ("qemu-aarch64-static", "qemu-aarch64")
ELF_MACHINES = {3: "x86", 40: "arm", 62: "x86-64", 183: "aarch64", 243: "riscv"}
EM_AARCH64 = 183


def _load_runner() -> Any:
    """runner.py is the single parser of meta.json; load it as a module (it is not a package)."""
    spec = importlib.util.spec_from_file_location("compress_ir_arm_runner", RUNNER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


runner = _load_runner()


def load_meta(artifact: Path) -> dict[str, Any]:
    """Validated meta.json, with runner errors mapped to the project's error classes."""
    try:
        return runner.load_meta(str(artifact))
    except runner.RunnerError as exc:
        cls = UsageError if exc.exit_code == runner.EXIT_USAGE else ModelLoadError
        raise cls(str(exc)) from None


def elf_machine(path: Path) -> str:
    """The architecture in an ELF header (e_machine), e.g. 'aarch64' or 'x86-64'."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(20)
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read: {exc.strerror}") from None
    if len(head) < 20 or head[:4] != b"\x7fELF":
        raise ModelLoadError(f"{path}: not an ELF shared library")
    order = "little" if head[5] == 1 else "big"
    machine = int.from_bytes(head[18:20], order)
    return ELF_MACHINES.get(machine, f"e_machine {machine}")


def require_aarch64(artifact: Path, meta: Mapping[str, Any]) -> None:
    """Refuse artifacts not built for aarch64: by meta target and by the library itself."""
    target = meta.get("tvm_target")
    triple = target.get("mtriple", "") if isinstance(target, dict) else str(target or "")
    if not str(triple).startswith(("aarch64", "arm64")):
        raise UsageError(
            f"{artifact}: target '{meta.get('target')}' ({json.dumps(target)}) is not aarch64; "
            "this tool checks arm artifacts only (x86 artifacts run on the host)")
    machine = elf_machine(artifact / meta["library"])
    if machine != "aarch64":
        raise UsageError(f"{artifact / meta['library']}: library is built for {machine}, "
                         "not aarch64, although meta.json says "
                         f"{triple}; rebuild the artifact")


@dataclass(frozen=True)
class Rootfs:
    """An arm64 root file system made by setup_rootfs.sh, and the qemu binary to run it."""

    path: Path
    qemu: str

    @property
    def python(self) -> Path:
        return self.path / PYTHON

    @property
    def site(self) -> Path:
        return self.path / SITE


def find_rootfs(path: Path) -> Rootfs:
    """The rootfs at `path` if usable; a usage error telling how to make it otherwise."""
    qemu = next((q for q in map(shutil.which, QEMU) if q), None)
    if qemu is None:
        raise UsageError("qemu-aarch64-static not found (apt-get install qemu-user-static)")
    fs = Rootfs(path, qemu)
    if not fs.python.is_file() or not (fs.site / "tvm").is_dir():
        raise UsageError(f"no arm64 rootfs with python3.11 and TVM at {path}: "
                         f"run {SETUP} {path}")
    if not (path / STAMP).is_file():
        raise UsageError(f"arm64 rootfs at {path} is incomplete (setup did not finish): "
                         f"run {SETUP} {path}")
    return fs


def make_inputs(meta: Mapping[str, Any], seed: int,
                proto: onnx.ModelProto | None = None) -> dict[str, np.ndarray]:
    """Seeded random inputs in meta order: normal floats, small ints, random bools.

    With the model, inputs are drawn by kind as the CLI's own verify does (token ids inside
    their embedding table, 0/1 masks): small ints alone index out of a 2-row table such as
    BERT's token types, and onnxruntime refuses them.
    """
    if proto is not None:
        shapes = {spec["name"]: tuple(spec["shape"]) for spec in meta["inputs"]}
        drawn = realistic_inputs(proto, shapes, seed)
        return {spec["name"]: np.asarray(drawn[spec["name"]]).astype(spec["dtype"])
                for spec in meta["inputs"]}
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in meta["inputs"]:
        shape, dtype = tuple(spec["shape"]), np.dtype(spec["dtype"])
        if np.issubdtype(dtype, np.floating):
            feeds[spec["name"]] = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[spec["name"]] = rng.integers(0, 2, shape).astype(dtype)
        else:
            feeds[spec["name"]] = rng.integers(0, 4, shape).astype(dtype)
    return feeds


def load_model(model: Path) -> onnx.ModelProto:
    """The ONNX model the artifact is compared with."""
    try:
        return onnx.load(str(model))
    except (OSError, DecodeError) as exc:
        raise ModelLoadError(f"{model}: cannot load ONNX model: {exc}") from None


def same_model(proto: onnx.ModelProto, meta: Mapping[str, Any]) -> bool | None:
    """Whether `proto` is the model the artifact was built from (None: meta has no hash)."""
    want = meta.get("model_sha256")
    if not isinstance(want, str):
        return None
    return hashlib.sha256(proto.SerializeToString()).hexdigest() == want


def reference_outputs(model: Path, meta: Mapping[str, Any], feeds: Mapping[str, np.ndarray],
                      repeat: int = 3, proto: onnx.ModelProto | None = None
                      ) -> tuple[dict[str, np.ndarray], float]:
    """onnxruntime outputs named in meta, and the median run time (s) on the host."""
    proto = load_model(model) if proto is None else proto
    inits = {i.name for i in proto.graph.initializer}
    model_inputs = [i.name for i in proto.graph.input if i.name not in inits]
    if sorted(model_inputs) != sorted(feeds):
        raise UsageError(f"{model}: inputs {model_inputs} do not match the artifact's "
                         f"{list(feeds)}; is this the model the artifact was built from?")
    model_outputs = [o.name for o in proto.graph.output]
    wanted = [spec["name"] for spec in meta["outputs"]]
    missing = [n for n in wanted if n not in model_outputs]
    if missing:
        raise UsageError(f"{model}: has no output(s) {missing} that the artifact declares")
    try:
        sess = session(proto)
        times = []
        for _ in range(max(1, repeat)):
            start = time.perf_counter()
            values = sess.run(wanted, dict(feeds))
            times.append(time.perf_counter() - start)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors
        raise UsageError(f"{model}: onnxruntime cannot run it on the artifact's inputs: "
                         f"{str(exc).splitlines()[0]}") from None
    return dict(zip(wanted, values, strict=True)), statistics.median(times)


class QemuRunError(CompressIRError):
    """The artifact did not produce outputs under qemu (crash, load failure, timeout)."""

    exit_code = EXIT_NUMERIC


def _no_core_dumps() -> None:
    """A crashing artifact must not leave qemu core files (hundreds of MB) behind."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def run_under_qemu(fs: Rootfs, artifact: Path, meta: Mapping[str, Any],
                   feeds: Mapping[str, np.ndarray], repeat: int = 1, threads: int = 1,
                   timeout: float = 3600.0, keep: bool = False
                   ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Copy artifact, inputs and runner.py into the rootfs, run them under qemu, read back."""
    tmp_root = fs.path / "tmp"
    tmp_root.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="compress-ir-check-", dir=tmp_root))
    try:
        art = work / "artifact"
        art.mkdir()
        for name in ("meta.json", meta["library"]):
            shutil.copy2(artifact / name, art / name)
        shutil.copy2(RUNNER, work / "runner.py")
        np.savez(work / "inputs.npz", **feeds)
        cmd = [fs.qemu, "-L", str(fs.path), str(fs.python), "-s", "-B", str(work / "runner.py"),
               str(art), "--inputs", str(work / "inputs.npz"),
               "--outputs", str(work / "outputs.npz"), "--repeat", str(repeat)]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8",
               "PYTHONPATH": str(fs.site), "TVM_NUM_THREADS": str(threads)}
        start = time.perf_counter()
        try:
            proc = subprocess.run(cmd, env=env, cwd=work, capture_output=True, text=True,
                                  timeout=timeout, check=False, preexec_fn=_no_core_dumps)
        except subprocess.TimeoutExpired:
            raise QemuRunError(f"{artifact}: no result under qemu within {timeout:g} s "
                               "(raise --timeout)") from None
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
            last = lines[-1] if lines else "no message"
            raise QemuRunError(f"{artifact}: FAIL under qemu (exit {proc.returncode}): {last}")
        try:
            timing = json.loads(proc.stdout.strip().splitlines()[-1])
            with np.load(work / "outputs.npz", allow_pickle=False) as npz:
                outputs = {k: npz[k] for k in npz.files}
        except (IndexError, ValueError, OSError) as exc:
            raise QemuRunError(f"{artifact}: runner gave no readable result: {exc}") from None
        timing["qemu_wall_s"] = wall
        if keep:
            timing["work_dir"] = str(work)
        return outputs, timing
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def compare(meta: Mapping[str, Any], got: Mapping[str, np.ndarray],
            want: Mapping[str, np.ndarray]) -> dict[str, float]:
    """The check's error (`numeric.rel_error`) of each declared output (inf when missing
    or mis-shaped)."""
    return {spec["name"]: (rel_error(got[spec["name"]], want[spec["name"]])
                           if spec["name"] in got else float("inf"))
            for spec in meta["outputs"]}


def verdict_line(artifact: Path, errors: Mapping[str, float], tolerance: float,
                 timing: Mapping[str, Any], ort_s: float, total_s: float) -> str:
    """The one-line summary printed for the user."""
    worst = max(errors.values())
    ok = worst <= tolerance
    per = ", ".join(f"{k} {v:.1e}" for k, v in errors.items())
    runs = timing["run_s"]
    return (f"{'PASS' if ok else 'FAIL'}: {artifact} (aarch64, qemu) vs onnxruntime: "
            f"max rel err {worst:.2e} {'<=' if ok else '>'} {tolerance:.0e} [{per}]; "
            f"qemu: import tvm {timing['import_tvm_s']:.1f} s, load {timing['load_s']:.2f} s, "
            f"run {timing['median_run_s'] * 1e3:.1f} ms (median of {len(runs)}); "
            f"onnxruntime host {ort_s * 1e3:.2f} ms; total {total_s:.1f} s")


def check(artifact: Path, model: Path, rootfs: Path, seed: int = 0,
          tolerance: float = DEFAULT_TOLERANCE, repeat: int = 1, threads: int = 1,
          timeout: float = 3600.0, keep: bool = False) -> dict[str, Any]:
    """Run the whole check; the result dict (``ok``, ``errors``, timings, ``verdict``)."""
    start = time.perf_counter()
    if not artifact.is_dir():
        raise UsageError(f"{artifact}: not an artifact directory")
    if not model.is_file():
        raise UsageError(f"{model}: no such ONNX model")
    meta = load_meta(artifact)
    require_aarch64(artifact, meta)
    fs = find_rootfs(rootfs)
    proto = load_model(model)
    feeds = make_inputs(meta, seed, proto)
    same = same_model(proto, meta)
    want, ort_s = reference_outputs(model, meta, feeds, proto=proto)
    got, timing = run_under_qemu(fs, artifact, meta, feeds, repeat, threads, timeout, keep)
    errors = compare(meta, got, want)
    total = time.perf_counter() - start
    verdict = verdict_line(artifact, errors, tolerance, timing, ort_s, total)
    if same is False:
        verdict += "; note: --model differs from the model the artifact was built from"
    return {"artifact": str(artifact), "model": str(model), "seed": seed,
            "tolerance": tolerance, "ok": max(errors.values()) <= tolerance, "errors": errors,
            "model_matches_meta": same, "qemu": timing, "onnxruntime_host_s": ort_s,
            "total_s": total, "verdict": verdict}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        self.exit(2, f"check_artifact.py: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """Command line options (see the module docstring)."""
    p = _Parser(prog="check_artifact.py", description=__doc__.split("\n\n")[0])
    p.add_argument("artifact", type=Path, help="artifact directory (meta.json + model.so)")
    p.add_argument("--model", type=Path, required=True, help="the ONNX model it was built from")
    p.add_argument("--rootfs", type=Path, default=DEFAULT_ROOTFS,
                   help=f"arm64 rootfs from setup_rootfs.sh (default {DEFAULT_ROOTFS})")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                   help=f"max relative error (default {DEFAULT_TOLERANCE:g})")
    p.add_argument("--repeat", type=int, default=1, help="timed runs under qemu (default 1)")
    p.add_argument("--threads", type=int, default=1, help="TVM_NUM_THREADS (default 1)")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds (default 3600)")
    p.add_argument("--json", type=Path, help="also write the result as JSON")
    p.add_argument("--keep", action="store_true", help="keep the work dir inside the rootfs")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        if args.repeat < 1 or args.threads < 1 or args.tolerance < 0 or args.timeout <= 0:
            raise UsageError("--repeat/--threads must be >= 1, --tolerance >= 0, --timeout > 0")
        result = check(args.artifact, args.model, args.rootfs, args.seed, args.tolerance,
                       args.repeat, args.threads, args.timeout, args.keep)
    except CompressIRError as exc:
        print(f"check_artifact.py: {exc}", file=sys.stderr)
        return exc.exit_code
    print(result["verdict"])
    if "work_dir" in result["qemu"]:
        print(f"kept: {result['qemu']['work_dir']}")
    if args.json is not None:
        write_atomic(args.json, (json.dumps(result, indent=1) + "\n").encode())
    return EXIT_OK if result["ok"] else EXIT_NUMERIC


if __name__ == "__main__":
    sys.exit(main())
