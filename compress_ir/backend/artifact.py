"""The artifact directory: `model.so` + `meta.json` (format agreed with tools/arm).

meta.json: {"format": "compress-ir-artifact", "schema": 1, "target", "tvm_target",
"device": "cpu"|"cuda", "library": "model.so", "inputs"/"outputs": [{"name",
"shape", "dtype"}], "tvm_version", "compress_ir_version", "model_sha256",
"build": {"options", "seconds"}, "verify": {...}} plus informative extras
("target_spec", "gpu_code", "elf_machine"). The VM entry is "main": inputs in
`inputs` order, one tensor or a tuple in `outputs` order.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from compress_ir.core.errors import ModelLoadError, UsageError

ARTIFACT_FORMAT = "compress-ir-artifact"
ARTIFACT_SCHEMA = 1
META_FILE = "meta.json"
LIBRARY_FILE = "model.so"


@dataclass(frozen=True)
class TensorSpec:
    """One graph input/output of the compiled module (shape None where unknown).

    `fixed_dims`: (axis, dim name) of dims the ONNX model leaves symbolic (batch,
    sequence, height...) that the build fixed to `shape[axis]`; meta.json lists them so a
    user knows which `--input-shape` rebuilds the artifact for other sizes.
    `values`: (kind, exclusive high) of an integer input the model indexes with or
    masks by (`core/feeds.py`: token ids within their table, 0/1 masks), so the random
    inputs of `compress-ir run` and of the build's check stay inside the model's domain.
    """

    name: str
    shape: tuple[int | None, ...]
    dtype: str
    fixed_dims: tuple[tuple[int, str], ...] = ()
    values: tuple[str, int | None] | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}
        if self.fixed_dims:
            d["fixed_dims"] = {str(axis): name for axis, name in self.fixed_dims}
        if self.values is not None:
            d["values"] = {"kind": self.values[0], "high": self.values[1]}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TensorSpec:
        fixed = tuple((int(k), str(v)) for k, v in (d.get("fixed_dims") or {}).items())
        values = d.get("values")
        kind = None if not values else (str(values["kind"]), values.get("high"))
        return cls(str(d["name"]), tuple(d["shape"]), str(d["dtype"]), fixed, kind)


@dataclass(frozen=True)
class Artifact:
    """A built artifact on disk and its metadata."""

    path: Path
    meta: dict[str, Any]

    @property
    def library(self) -> Path:
        return self.path / self.meta["library"]

    @property
    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec.from_dict(d) for d in self.meta["inputs"]]

    @property
    def outputs(self) -> list[TensorSpec]:
        return [TensorSpec.from_dict(d) for d in self.meta["outputs"]]

    @property
    def device(self) -> str:
        return str(self.meta["device"])

    @property
    def target(self) -> str:
        return str(self.meta["target"])

    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.iterdir() if f.is_file())


def is_artifact_dir(path: str | os.PathLike) -> bool:
    meta = Path(path) / META_FILE
    try:
        return json.loads(meta.read_text()).get("format") == ARTIFACT_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def load_artifact(path: str | os.PathLike) -> Artifact:
    """Read and check an artifact directory's meta.json (the library is loaded on run)."""
    root = Path(path)
    meta_path = root / META_FILE
    if not root.is_dir():
        raise UsageError(f"artifact {root}: not a directory")
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise UsageError(f"artifact {root}: no {META_FILE} (not a compress-ir artifact)") from None
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"artifact {root}: cannot read {META_FILE}: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != ARTIFACT_FORMAT:
        raise ModelLoadError(f"artifact {root}: {META_FILE} is not a {ARTIFACT_FORMAT}")
    if meta.get("schema") != ARTIFACT_SCHEMA:
        raise ModelLoadError(f"artifact {root}: schema {meta.get('schema')!r} is not supported "
                             f"(this compress-ir reads schema {ARTIFACT_SCHEMA})")
    for key in ("target", "device", "library", "inputs", "outputs"):
        if key not in meta:
            raise ModelLoadError(f"artifact {root}: {META_FILE} lacks {key!r}")
    _check_meta(root, meta)
    art = Artifact(root, meta)
    if not art.library.is_file():
        raise ModelLoadError(f"artifact {root}: library {meta['library']} is missing")
    return art


_DTYPES = {"float32", "float64", "float16", "int8", "int16", "int32", "int64", "uint8",
           "uint16", "uint32", "uint64", "bool"}
_MAX_DIM = 2**31 - 1


def _check_meta(root: Path, meta: dict[str, Any]) -> None:
    """Types and values a tampered meta.json could get wrong, and the library policy.

    The library must be a plain file name inside the artifact folder: a meta.json
    pointing at `../evil.so` or `/tmp/x.so` would otherwise make `run` dlopen() it.
    """
    where = f"artifact {root}: {META_FILE}"
    if not isinstance(meta["target"], str) or not isinstance(meta["device"], str) \
            or meta["device"] not in ("cpu", "cuda"):
        raise ModelLoadError(f"{where}: bad target or device {str(meta['device'])[:40]!r}")
    for key, kinds in (("target_spec", dict), ("tvm_target", (dict, str)),
                       ("model_sha256", str), ("elf_machine", int)):
        if key in meta and not isinstance(meta[key], kinds):
            raise ModelLoadError(f"{where}: {key!r} has the wrong type")
    spec = meta.get("target_spec", {})
    flags = spec.get("required_cpu_flags", [])
    if not isinstance(spec.get("family", ""), str) or not isinstance(flags, list) \
            or not all(isinstance(f, str) for f in flags):
        raise ModelLoadError(f"{where}: 'target_spec' is malformed")
    lib = meta["library"]
    if (not isinstance(lib, str) or not lib or lib in (".", "..") or "/" in lib
            or "\\" in lib or "\x00" in lib or Path(lib).name != lib):
        raise ModelLoadError(f"{where}: library {lib!r} must be a plain file name inside "
                             "the artifact folder")
    real = (root / lib).resolve()
    if real.parent != root.resolve():
        raise ModelLoadError(f"{where}: library {lib!r} points outside the artifact folder")
    for key in ("inputs", "outputs"):
        specs = meta[key]
        if not isinstance(specs, list) or (key == "outputs" and not specs):
            raise ModelLoadError(f"{where}: {key!r} must be a list of tensors")
        for d in specs:
            if (not isinstance(d, dict) or not isinstance(d.get("name"), str)
                    or not isinstance(d.get("shape"), list)
                    or not isinstance(d.get("dtype"), str) or d["dtype"] not in _DTYPES):
                raise ModelLoadError(f"{where}: bad {key[:-1]} entry {str(d)[:80]!r} "
                                     "(needs name, shape list, dtype)")
            for dim in d["shape"]:
                unknown_ok = key == "outputs" and dim is None
                if not unknown_ok and (isinstance(dim, bool) or not isinstance(dim, int)
                                       or not 0 <= dim <= _MAX_DIM):
                    raise ModelLoadError(f"{where}: {key[:-1]} {d['name']!r} has a bad "
                                         f"dimension {dim!r}")
            if key == "inputs":
                from compress_ir.core.limits import MAX_TENSOR_BYTES, human_bytes

                nbytes = math.prod(d["shape"]) * np.dtype(d["dtype"]).itemsize
                if nbytes > MAX_TENSOR_BYTES:
                    raise ModelLoadError(f"{where}: input {d['name']!r} would take "
                                         f"{human_bytes(nbytes)}, over the limit")


def artifact_inputs(specs: list[TensorSpec], seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs of the artifact's shapes: normal floats, and integers drawn by the kind
    the build recorded (`core/feeds.py`), else small ints 0..3 like `numeric`."""
    from compress_ir.core.feeds import InputKind, draw

    rng = np.random.default_rng(seed)
    feeds = {}
    for s in specs:
        shape = tuple(int(d) for d in s.shape)
        dtype = np.dtype(s.dtype)
        if s.values is not None:
            feeds[s.name] = draw(InputKind(s.values[0], s.values[1]), shape, dtype, rng)
        elif np.issubdtype(dtype, np.floating):
            feeds[s.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[s.name] = rng.integers(0, 2, shape).astype(dtype)
        else:
            feeds[s.name] = rng.integers(0, 4, shape).astype(dtype)
    return feeds


def check_inputs(specs: list[TensorSpec], inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The inputs in VM order; a missing, unknown or mis-shaped one is a UsageError."""
    names = [s.name for s in specs]
    unknown = sorted(set(inputs) - set(names))
    if unknown:
        raise UsageError(f"input {unknown[0]!r} is not an input of the artifact; "
                         f"inputs: {', '.join(names)}")
    ordered = []
    for s in specs:
        if s.name not in inputs:
            raise UsageError(f"input {s.name!r} is missing (shape {list(s.shape)}, {s.dtype})")
        arr = np.asarray(inputs[s.name])
        if tuple(arr.shape) != tuple(s.shape):
            hint = ""
            if s.fixed_dims:
                dims = ", ".join(f"{axis} ({name})" for axis, name in s.fixed_dims)
                wanted = ",".join(str(d) for d in arr.shape)
                hint = (f"; dims {dims} were fixed when building: rebuild with "
                        f"--input-shape {s.name}={wanted}")
            raise UsageError(f"input {s.name!r}: shape {list(arr.shape)} != expected "
                             f"{list(s.shape)}{hint}")
        if arr.dtype != np.dtype(s.dtype):
            raise UsageError(f"input {s.name!r}: dtype {arr.dtype} != expected {s.dtype}")
        ordered.append(np.ascontiguousarray(arr))
    return ordered
