"""Run a compress-ir artifact on this machine: the half of check_artifact.py that runs on arm64.

Why a separate script: it runs INSIDE the arm64 root file system under qemu, where only the
standard library, numpy and the TVM runtime exist (no compress_ir, no onnx). It loads the
artifact's library, feeds the inputs of an ``.npz`` in ``meta.json`` order, and writes the
outputs to an ``.npz`` keyed by the meta output names, so the host can compare them with
onnxruntime. It prints one JSON line with timings on stdout.

Usage::

    python3 runner.py ARTIFACT_DIR --inputs in.npz --outputs out.npz [--repeat N]

Exit codes: 0 ok, 2 bad command line or inputs, 3 invalid artifact (meta.json, library).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

FORMAT = "compress-ir-artifact"
SCHEMAS = (1,)
EXIT_USAGE = 2
EXIT_ARTIFACT = 3
_TENSOR_KEYS = ("name", "shape", "dtype")


class RunnerError(Exception):
    """A failure to report as one line with an exit code (no traceback)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _bad_meta(path: str, reason: str) -> RunnerError:
    return RunnerError(f"{path}: {reason}", EXIT_ARTIFACT)


def _check_tensors(path: str, meta: Mapping[str, Any], key: str) -> None:
    specs = meta.get(key)
    if not isinstance(specs, list) or not specs:
        raise _bad_meta(path, f"'{key}' must be a non-empty list")
    names = set()
    for i, spec in enumerate(specs):
        where = f"{key}[{i}]"
        if not isinstance(spec, dict) or any(k not in spec for k in _TENSOR_KEYS):
            raise _bad_meta(path, f"{where} needs {', '.join(_TENSOR_KEYS)}")
        shape = spec["shape"]
        # Inputs must be concrete (we make them); an output dim may be unknown (null).
        if not isinstance(shape, list) or not all(
            (d is None and key == "outputs")
            or (isinstance(d, int) and not isinstance(d, bool) and d >= 0) for d in shape
        ):
            kind = "non-negative ints" if key == "inputs" else "non-negative ints or null"
            raise _bad_meta(path, f"{where} '{spec['name']}': shape must be {kind}")
        try:
            np.dtype(spec["dtype"])
        except TypeError as exc:
            raise _bad_meta(path, f"{where} '{spec['name']}': unknown dtype {spec['dtype']!r}"
                            ) from exc
        if spec["name"] in names:
            raise _bad_meta(path, f"{where}: duplicate name '{spec['name']}'")
        names.add(spec["name"])


def load_meta(artifact_dir: str) -> dict[str, Any]:
    """Read and validate ``meta.json`` of an artifact (format, schema, library, tensor specs)."""
    path = os.path.join(artifact_dir, "meta.json")
    try:
        with open(path, encoding="utf-8") as fh:
            meta = json.load(fh)
    except FileNotFoundError as exc:
        raise RunnerError(f"{artifact_dir}: not an artifact (no meta.json)", EXIT_USAGE) from exc
    except (OSError, ValueError) as exc:
        raise _bad_meta(path, f"cannot read: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise _bad_meta(path, f"'format' is not '{FORMAT}'")
    if meta.get("schema") not in SCHEMAS:
        raise _bad_meta(path, f"unsupported schema {meta.get('schema')!r} (known: {SCHEMAS})")
    library = meta.get("library")
    if not isinstance(library, str) or not library or os.path.basename(library) != library:
        raise _bad_meta(path, "'library' must be a file name inside the artifact")
    if not os.path.isfile(os.path.join(artifact_dir, library)):
        raise _bad_meta(path, f"library '{library}' is missing")
    if meta.get("device", "cpu") != "cpu":  # a valid artifact, for another tool: usage error
        raise RunnerError(f"{path}: device '{meta.get('device')}' is not supported here "
                          "(cpu artifacts only)", EXIT_USAGE)
    _check_tensors(path, meta, "inputs")
    _check_tensors(path, meta, "outputs")
    return meta


def ordered_inputs(meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]
                   ) -> list[np.ndarray]:
    """The input arrays in meta order, each checked against its declared shape and dtype."""
    want = [spec["name"] for spec in meta["inputs"]]
    missing = [n for n in want if n not in arrays]
    extra = sorted(set(arrays) - set(want))
    if missing or extra:
        raise RunnerError(f"inputs do not match meta.json: missing {missing}, unexpected {extra}",
                          EXIT_USAGE)
    out = []
    for spec in meta["inputs"]:
        arr = np.asarray(arrays[spec["name"]])
        if list(arr.shape) != list(spec["shape"]) or arr.dtype != np.dtype(spec["dtype"]):
            raise RunnerError(
                f"input '{spec['name']}': got {arr.dtype}{list(arr.shape)}, "
                f"artifact wants {spec['dtype']}{list(spec['shape'])}", EXIT_USAGE)
        out.append(np.ascontiguousarray(arr))
    return out


def split_outputs(meta: Mapping[str, Any], result: Any) -> dict[str, np.ndarray]:
    """Name the VM result (one tensor or a tuple, in meta output order) and check the count."""
    parts = [result] if hasattr(result, "numpy") else list(result)
    specs = meta["outputs"]
    if len(parts) != len(specs):
        raise RunnerError(f"the library returned {len(parts)} outputs, meta.json declares "
                          f"{len(specs)}", EXIT_ARTIFACT)
    return {spec["name"]: np.asarray(part.numpy()) for spec, part in zip(specs, parts, strict=True)}


def run_artifact(artifact_dir: str, arrays: Mapping[str, np.ndarray], repeat: int = 1
                 ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Load the artifact with the TVM runtime and run it; outputs and timings (seconds)."""
    meta = load_meta(artifact_dir)
    args = ordered_inputs(meta, arrays)
    t0 = time.perf_counter()
    import tvm  # late: importing TVM under qemu takes tens of seconds

    t1 = time.perf_counter()
    try:
        lib = tvm.runtime.load_module(os.path.join(artifact_dir, meta["library"]))
        vm = tvm.relax.VirtualMachine(lib, tvm.cpu())
    except Exception as exc:  # noqa: BLE001 - TVM raises many types; report them as one line
        msg = str(exc).strip().splitlines()
        raise RunnerError(f"cannot load {meta['library']}: {msg[-1] if msg else type(exc)}",
                          EXIT_ARTIFACT) from exc
    t2 = time.perf_counter()
    dev_args = [tvm.runtime.tensor(a, tvm.cpu()) for a in args]
    times = []
    outputs: dict[str, np.ndarray] = {}
    for _ in range(max(1, repeat)):
        start = time.perf_counter()
        result = vm["main"](*dev_args)
        outputs = split_outputs(meta, result)  # .numpy() copies back: part of a real call
        times.append(time.perf_counter() - start)
    timing = {"import_tvm_s": t1 - t0, "load_s": t2 - t1, "first_run_s": times[0],
              "run_s": times, "median_run_s": statistics.median(times)}
    return outputs, timing


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("artifact", help="artifact directory (meta.json + library)")
    p.add_argument("--inputs", required=True, help=".npz with one array per meta input name")
    p.add_argument("--outputs", required=True, help=".npz to write, keyed by meta output name")
    p.add_argument("--repeat", type=int, default=1, help="timed runs (default 1)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        if args.repeat < 1:
            raise RunnerError("--repeat must be >= 1", EXIT_USAGE)
        try:
            with np.load(args.inputs, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except (OSError, ValueError) as exc:
            raise RunnerError(f"{args.inputs}: cannot read inputs: {exc}", EXIT_USAGE) from exc
        outputs, timing = run_artifact(args.artifact, arrays, args.repeat)
        tmp = args.outputs + ".tmp.npz"  # np.savez appends .npz to names without it
        np.savez(tmp, **outputs)
        os.replace(tmp, args.outputs)
    except RunnerError as exc:
        print(f"runner.py: {exc}", file=sys.stderr)
        return exc.exit_code
    print(json.dumps(timing))
    return 0


if __name__ == "__main__":
    sys.exit(main())
