"""What a CI report needs beyond the metrics: provenance, fidelity, the user's evaluation.

Why: a report read weeks later must say which tool and library versions made which
output from which input (sha256), and how far the result is from the ORIGINAL model
(the per-pass checks compare each pass with its own reference, e.g. the channel-masked
model, so they say nothing about how much pruning changed the outputs).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import os
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from compress_ir import __version__
from compress_ir.core import numeric
from compress_ir.core.errors import UsageError

_PACKAGES = ("onnx", "onnxruntime", "onnx-graphsurgeon", "numpy", "apache-tvm",
             "PyYAML", "jsonschema")
FIDELITY_SAMPLES = 16


def versions() -> dict[str, str | None]:
    """compress-ir, Python, platform and dependency versions (None: not installed)."""
    out: dict[str, str | None] = {"compress-ir": __version__,
                                  "python": platform.python_version(),
                                  "platform": platform.platform()}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def sha256_file(path: str | os.PathLike) -> str | None:
    """sha256 of a file's bytes, None when it cannot be read."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0 or not (np.isfinite(na) and np.isfinite(nb)):
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def _feeds(original: onnx.ModelProto, calibration: Any, seed: int,
           input_shapes: dict[str, tuple[int, ...]]) -> tuple[list[dict[str, np.ndarray]], str]:
    """Batches to compare on: calibration samples if any, else seeded random check inputs."""
    if calibration is not None and getattr(calibration, "arrays", None):
        from compress_ir.core.calibration import batch_size_for

        size = min(calibration.size, FIDELITY_SAMPLES)
        batch = batch_size_for(original, size)
        arrays = {k: v[:size] for k, v in calibration.arrays.items()}
        batches = [{k: v[i:i + batch] for k, v in arrays.items()} for i in range(0, size, batch)]
        return batches, f"calibration ({calibration.source}, {size} samples)"
    return [numeric.random_inputs(original, seed, input_shapes)], f"random (seed {seed})"


def fidelity(original: onnx.ModelProto, compressed: onnx.ModelProto, calibration: Any = None,
             seed: int = 0, input_shapes: dict[str, tuple[int, ...]] | None = None
             ) -> dict[str, Any]:
    """Output cosine similarity and relative error of `compressed` vs `original`.

    `cosine`: the mean over samples of each output's cosine, worst output (the
    sensitivity scan's loss is 1 minus this); `cosine_min`: the worst sample;
    `rel_error`: the worst over samples and outputs; per output too. Both models run
    in onnxruntime on the same inputs (calibration data when given, else the seeded
    check inputs).
    """
    batches, source = _feeds(original, calibration, seed, input_shapes or {})
    cosines: dict[str, list[float]] = {}
    errors: dict[str, float] = {}
    for feeds in batches:
        count = next(iter(feeds.values())).shape[0] if feeds else 1
        want = numeric.run(original, feeds)
        got = numeric.run(compressed, feeds)
        for name, ref in want.items():
            value = got.get(name)
            if value is None or np.shape(value) != np.shape(ref):
                cosines.setdefault(name, []).append(0.0)
                errors[name] = float("inf")
                continue
            # per sample when the output is batched like the inputs, else the whole tensor
            per_sample = np.ndim(ref) > 0 and np.shape(ref)[0] == count and count > 1
            pairs = zip(value, ref, strict=True) if per_sample else [(value, ref)]
            cosines.setdefault(name, []).extend(_cosine(a, b) for a, b in pairs)
            errors[name] = max(errors.get(name, 0.0), numeric.max_relative_error(value, ref))
    outputs = {k: {"cosine": round(float(np.mean(v)), 6), "cosine_min": round(min(v), 6),
                   "rel_error": errors[k]} for k, v in cosines.items()}
    return {
        "against": "original",
        "inputs": source,
        "cosine": min((o["cosine"] for o in outputs.values()), default=1.0),
        "cosine_min": min((o["cosine_min"] for o in outputs.values()), default=1.0),
        "rel_error": max((o["rel_error"] for o in outputs.values()), default=0.0),
        "outputs": outputs,
    }


def run_eval(spec: str, model_path: str) -> dict[str, float]:
    """Call the user's `module:function` with the output model path; check it returns metrics.

    The module is imported from the current directory first (a CI repo's own script).
    """
    module_name, colon, func_name = spec.partition(":")
    if not colon or not module_name or not func_name:
        raise UsageError(f"--eval {spec!r}: expected module:function")
    added = os.getcwd() not in sys.path
    if added:
        sys.path.insert(0, os.getcwd())
    try:
        if module_name.endswith(".py"):
            loader_spec = importlib.util.spec_from_file_location(Path(module_name).stem,
                                                                 module_name)
            if loader_spec is None or loader_spec.loader is None:
                raise ImportError(f"cannot load {module_name}")
            module = importlib.util.module_from_spec(loader_spec)
            loader_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"--eval {spec!r}: cannot import {module_name} ({exc})") from None
    finally:
        if added:
            sys.path.remove(os.getcwd())
    func = getattr(module, func_name, None)
    if not callable(func):
        raise UsageError(f"--eval {spec!r}: {module_name} has no function {func_name!r}")
    try:
        result = func(model_path)
    except Exception as exc:  # the user's code: report its failure as one line
        raise UsageError(f"--eval {spec!r} raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(result, dict) or not all(
            isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool)
            for k, v in result.items()):
        raise UsageError(f"--eval {spec!r}: must return a dict of metric name -> number, "
                         f"got {result!r:.200}")
    return {k: float(v) for k, v in result.items()}
