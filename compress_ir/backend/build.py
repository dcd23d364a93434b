"""Build an ONNX model for a target with TVM and export a verified artifact directory.

import (from_onnx, fixed batch) -> [sparse rewrite] -> compile_relax -> export
(cross-linked for arm, nvcc fatbin for cuda) -> verify against onnxruntime ->
meta.json -> atomic rename. A failed build or check leaves no directory behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from compress_ir import __version__
from compress_ir.backend.artifact import (
    ARTIFACT_FORMAT,
    ARTIFACT_SCHEMA,
    LIBRARY_FILE,
    META_FILE,
    Artifact,
    TensorSpec,
    is_artifact_dir,
    load_artifact,
)
from compress_ir.backend.elf import elf_machine
from compress_ir.backend.normalize import normalize_for_tvm
from compress_ir.core.errors import ModelLoadError, UnsupportedModelError, UsageError
from compress_ir.core.files import write_atomic
from compress_ir.core.limits import DEFAULT_RPC_TIMEOUT
from compress_ir.targets import TargetSpec, resolve_target

DEFAULT_BUILD_TOLERANCE = 1e-4  # fp32 compiled code reassociates sums: ~1e-6 typical


@dataclass(frozen=True)
class BuildOptions:
    """How to build: batch / input shapes for dynamic dims, tuning, sparse kernels,
    verification."""

    batch: int = 1
    tune_trials: int = 0
    tune_budget: float = 0.0  # seconds of tuning (wall clock); 0: trials only
    tuning_db: str | None = None
    sparse_kernels: float | None = None  # min sparsity of a weight to use sparse kernels
    verify: bool = True
    tolerance: float = DEFAULT_BUILD_TOLERANCE
    seed: int = 0
    rpc: str | None = None
    # input name -> dims (`--input-shape`): fixes symbolic dims, shared by name across inputs
    input_shapes: dict[str, tuple[int, ...]] | None = None
    rpc_timeout: float = DEFAULT_RPC_TIMEOUT  # seconds per RPC connect and remote call

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise UsageError(f"batch must be >= 1, got {self.batch}")
        if self.tune_trials < 0:
            raise UsageError(f"tune-trials must be >= 0, got {self.tune_trials}")
        if not 0 <= self.tune_budget < float("inf"):
            raise UsageError(f"tune-budget must be >= 0 seconds, got {self.tune_budget}")
        if self.sparse_kernels is not None and not 0.0 <= self.sparse_kernels < 1.0:
            raise UsageError(f"sparse-kernels min sparsity must be in [0, 1), "
                             f"got {self.sparse_kernels}")
        if not self.tolerance >= 0:
            raise UsageError(f"tolerance must be >= 0, got {self.tolerance}")
        if not 0 < self.rpc_timeout < float("inf"):
            raise UsageError(f"rpc-timeout must be > 0 seconds, got {self.rpc_timeout}")
        if self.tune_trials and self.rpc:
            from compress_ir.backend.runner import parse_rpc

            if not parse_rpc(self.rpc).key:  # before any work: RPCRunner needs a tracker
                raise UsageError(f"--rpc {self.rpc}: tuning over RPC needs a tracker and "
                                 "device key (HOST:PORT:KEY)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _load(model: onnx.ModelProto | str | os.PathLike, source: str | None
          ) -> tuple[onnx.ModelProto, str]:
    if isinstance(model, onnx.ModelProto):
        return model, source or "<model>"
    try:
        return onnx.load(os.fspath(model)), os.fspath(model)
    except FileNotFoundError:
        raise UsageError(f"{model}: no such file") from None
    except Exception as exc:  # noqa: BLE001 - protobuf decode errors
        raise ModelLoadError(f"{model}: cannot read ONNX: {exc}") from None


def fixed_input_specs(proto: onnx.ModelProto, batch: int,
                      input_shapes: dict[str, tuple[int, ...]] | None = None
                      ) -> list[TensorSpec]:
    """Real graph inputs with a concrete shape.

    A symbolic dim takes its value from `input_shapes` (by dim name, so one given
    input fixes `sequence` for all inputs that share it); a remaining dynamic first
    dim becomes `batch`; any other dynamic dim is an error naming `--input-shape`.
    """
    from compress_ir.core.shapes import declared_dims, resolve_shapes

    plan = resolve_shapes(proto, input_shapes or {})
    given = {k: d.value for k, d in plan.dims.items() if d.source == "input-shape"}
    inits = {i.name for i in proto.graph.initializer}
    specs = []
    for inp in proto.graph.input:
        if inp.name in inits:
            continue
        t = inp.type.tensor_type
        dims = declared = declared_dims(proto)[inp.name]
        if input_shapes and inp.name in input_shapes:
            dims = [int(v) for v in input_shapes[inp.name]]
        if dims is None:
            raise UnsupportedModelError(
                f"input {inp.name!r} has no shape; TVM needs static shapes: give them with "
                f"--input-shape {inp.name}=d0,d1,...")
        shape = []
        for axis, d in enumerate(dims):
            if isinstance(d, int):
                shape.append(d)
            elif d in given:
                shape.append(given[d])
            elif axis == 0:
                shape.append(batch)
            else:
                example = ",".join(str(v) for v in plan.inputs[inp.name])
                raise UnsupportedModelError(
                    f"input {inp.name!r}: dim {axis} ({d}) is dynamic; fix it with "
                    f"--input-shape {inp.name}={example} (Python: input_shapes=)")
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)
        specs.append(TensorSpec(inp.name, tuple(shape), np.dtype(dtype).name,
                                _symbolic(declared or [])))
    return specs


def _with_value_kinds(proto: onnx.ModelProto, specs: list[TensorSpec]) -> list[TensorSpec]:
    """Record how integer inputs are used (ids into a table, masks) for realistic inputs."""
    from compress_ir.core.feeds import input_kinds

    kinds = input_kinds(proto)
    out = []
    for s in specs:
        kind = kinds.get(s.name)
        if kind is not None and kind.kind not in ("float", "int") and \
                not np.issubdtype(np.dtype(s.dtype), np.floating):
            s = replace(s, values=(kind.kind, kind.high))
        out.append(s)
    return out


def _symbolic(declared: list[int | str]) -> tuple[tuple[int, str], ...]:
    return tuple((axis, d) for axis, d in enumerate(declared) if not isinstance(d, int))


def _output_specs(proto: onnx.ModelProto, mod: Any) -> list[TensorSpec]:
    """Names from ONNX; shapes and dtypes from the imported Relax function's return type."""
    ret = mod["main"].ret_ty
    types = list(ret.fields) if hasattr(ret, "fields") else [ret]
    names = [o.name for o in proto.graph.output]
    if len(types) != len(names):
        raise UnsupportedModelError(f"TVM import returned {len(types)} outputs, the model has "
                                    f"{len(names)}")
    specs = []
    for name, ty in zip(names, types, strict=True):
        shape: list[int | None] = []
        for v in getattr(getattr(ty, "shape", None), "values", []) or []:
            try:
                shape.append(int(v))
            except (TypeError, ValueError):
                shape.append(None)
        specs.append(TensorSpec(name, tuple(shape), str(ty.dtype)))
    return specs


_RELAX_CALL = re.compile(r"^(R\.[\w.]+)\(")


def _first_line(exc: BaseException) -> str:
    """The message line of a TVM error: the last line after a traceback, else the first;
    a dumped offending Relax call is named by its op (the dump itself is dropped)."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines()
             if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        return type(exc).__name__
    if any(ln.startswith("Traceback") for ln in lines):
        return lines[-1]
    ops = [m.group(1) for ln in lines[1:] if (m := _RELAX_CALL.match(ln))]
    return lines[0] + (f" (offending call: {ops[0]})" if ops else "")


def _node_label(node: onnx.NodeProto) -> str:
    return f"node {node.name!r} ({node.op_type})" if node.name else f"a {node.op_type} node"


def _unsupported_node(proto: onnx.ModelProto) -> onnx.NodeProto | None:
    """The first node whose op the Relax importer has no converter for."""
    from tvm.relax.frontend.onnx import onnx_frontend

    known = set(onnx_frontend._get_convert_map()) | {"If", "Constant"}  # noqa: SLF001
    return next((n for n in proto.graph.node if n.op_type not in known), None)


@contextlib.contextmanager
def _track_nodes(seen: list[onnx.NodeProto]):  # noqa: ANN202 - context manager
    """Record each node the importer starts converting (it parses the node's name first).

    Why: the importer's errors name neither the node nor its op; the last node it started
    is the one that failed. Only observes; restores the importer's method on exit.
    """
    from tvm.relax.frontend.onnx import onnx_frontend

    cls = getattr(onnx_frontend, "ONNXGraphImporter", None)
    original = None if cls is None else cls.__dict__.get("_parse_value_proto")
    if original is None:  # another TVM: import without naming the node
        yield
        return

    def parse(self: Any, value_proto: Any) -> Any:
        if isinstance(value_proto, onnx.NodeProto):
            seen.append(value_proto)
        return original(self, value_proto)

    cls._parse_value_proto = parse  # noqa: SLF001
    try:
        yield
    finally:
        cls._parse_value_proto = original  # noqa: SLF001


def import_relax(proto: onnx.ModelProto, inputs: list[TensorSpec], source: str) -> Any:
    """Relax module of `proto` at the fixed `inputs` shapes; errors name file and node."""
    try:
        from tvm.relax.frontend.onnx import from_onnx
    except ImportError:
        raise UsageError("--target needs TVM: pip install apache-tvm") from None
    bad = _unsupported_node(proto)
    if bad is not None:
        raise UnsupportedModelError(f"{source}: TVM cannot import the model: {_node_label(bad)}: "
                                    f"op {bad.op_type} has no TVM Relax converter")
    seen: list[onnx.NodeProto] = []
    try:
        with _track_nodes(seen), contextlib.redirect_stdout(io.StringIO()):
            return from_onnx(proto, shape_dict={s.name: list(s.shape) for s in inputs},
                             keep_params_in_input=False)
    except Exception as exc:  # noqa: BLE001 - the importer raises many kinds
        where = f"{_node_label(seen[-1])}: " if seen else ""
        raise UnsupportedModelError(f"{source}: TVM cannot import the model: {where}"
                                    f"{_first_line(exc)}") from None


def _sparse(mod: Any, target: Any, min_sparsity: float) -> tuple[Any, dict[str, Any]]:
    try:
        from compress_ir.backend.sparse import rewrite_sparse
    except ImportError:
        raise UsageError("sparse kernels are not available") from None
    return rewrite_sparse(mod, target, min_sparsity=min_sparsity)


def _check_tools(spec: TargetSpec) -> None:
    if spec.family == "arm" and shutil.which(spec.cross_compiler or "") is None:
        raise UsageError(f"target {spec.name} needs the cross linker {spec.cross_compiler}: "
                         "apt-get install gcc-aarch64-linux-gnu")
    if spec.family == "cuda" and shutil.which("nvcc") is None:
        raise UsageError(f"target {spec.name} needs nvcc (the CUDA toolkit) on PATH")


def _gpu_code(spec: TargetSpec, target: Any) -> tuple[Any, Any]:
    """(what GPU code the build embeds, the context the compile runs in) for `spec`."""
    if spec.family != "cuda":
        return None, contextlib.nullcontext()
    from compress_ir.backend.cuda_pack import GpuCode, compile_hook

    info = GpuCode()
    return info, compile_hook(spec.cuda_arch, target, info)


def _export(ex: Any, spec: TargetSpec, target: Any, lib_path: Path, meta: dict[str, Any],
            gpu: Any = None) -> None:
    if spec.family == "arm":
        from tvm.support import cc

        ex.export_library(str(lib_path), fcompile=cc.cross_compiler(spec.cross_compiler))
        meta["elf_machine"] = elf_machine(lib_path)
    elif spec.family == "cuda":
        from compress_ir.backend.cuda_pack import library_gpu_code, make_fpack_imports

        info = gpu
        ex.export_library(str(lib_path),
                          fpack_imports=make_fpack_imports(spec.cuda_arch, target, info))
        found = library_gpu_code(lib_path)
        if found["cuda_source"] or found["fatbin_modules"] != info.modules:
            raise RuntimeError(f"exported CUDA library is not what was packed: {found}")
        meta["gpu_code"] = {**asdict(info), "found": found}
    else:
        ex.export_library(str(lib_path))


def default_artifact_dir(base: str | os.PathLike, spec: TargetSpec) -> Path:
    """`<dir>/<stem>.<target>`: next to the output model (or the input)."""
    p = Path(base)
    return p.with_name(f"{p.stem}.{spec.slug}")


@contextlib.contextmanager
def _staging(out: Path):  # noqa: ANN202 - context manager
    """A temp dir next to `out`, renamed over it on success, removed on failure."""
    check_destination(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".cir-", dir=out.parent))  # short: long names fit
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=".cir-", dir=out.parent))
            os.replace(out, old / "a")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_destination(out: Path) -> None:
    """Only an earlier artifact holding nothing else (or an empty folder) may be replaced."""
    if out.exists() and not is_artifact_dir(out) and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"{out} exists and is not a compress-ir artifact; not replacing it")
    if out.is_dir():
        others = sorted(p.name for p in out.iterdir() if p.name not in (LIBRARY_FILE, META_FILE))
        if others:
            raise UsageError(f"{out} holds other files ({', '.join(others[:3])}); replacing "
                             "the artifact would delete them, so it is left alone")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def build(model: onnx.ModelProto | str | os.PathLike, target: str | dict | TargetSpec,
          out_dir: str | os.PathLike, options: BuildOptions | None = None, *,
          source: str | None = None) -> Artifact:
    """Compile `model` for `target` into the artifact directory `out_dir` (atomically).

    With `options.verify`, the compiled module is compared with onnxruntime on the
    same model wherever it can run (this host, or `options.rpc`); a mismatch raises
    NumericMismatchError and nothing is written. `source` names a proto in errors (a
    path is named by itself). The model is first rewritten for the importer
    (`normalize.py`); the check compares with the model as given.
    """
    from compress_ir.backend.schedule import compile_relax
    from compress_ir.backend.verify import verify_artifact

    options = options or BuildOptions()
    spec = resolve_target(target)
    _check_tools(spec)
    check_destination(Path(out_dir))
    remote = None
    if options.tune_trials and options.rpc:  # candidates measured on the tracker's devices
        from compress_ir.backend.schedule.remote import remote_tuning

        remote = remote_tuning(options.rpc, options.rpc_timeout)
    proto, source = _load(model, source)
    inputs = _with_value_kinds(proto, fixed_input_specs(proto, options.batch,
                                                         options.input_shapes))
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    prepared, normalized = normalize_for_tvm(proto, source, inputs)
    seconds["normalize"] = time.perf_counter() - t0
    mod = import_relax(prepared, inputs, source)
    outputs = _output_specs(prepared, mod)
    seconds["import"] = time.perf_counter() - t0 - seconds["normalize"]
    tvm_target = spec.tvm_target()
    meta: dict[str, Any] = {"normalize": normalized}
    if options.sparse_kernels is not None:
        mod, meta["sparse"] = _sparse(mod, tvm_target, options.sparse_kernels)
    out = Path(out_dir)
    with _staging(out) as tmp, tempfile.TemporaryDirectory(prefix="compress-ir-tvm-") as work:
        t1 = time.perf_counter()
        gpu, hook = _gpu_code(spec, tvm_target)
        try:
            with hook:
                ex, build_stats = compile_relax(mod, tvm_target, spec,
                                                tune_trials=options.tune_trials,
                                                tune_budget_s=options.tune_budget,
                                                tuning_db=options.tuning_db, work_dir=work,
                                                remote=remote)
        except (UsageError, UnsupportedModelError):
            raise
        except Exception as exc:  # noqa: BLE001 - TVM lowering errors
            raise UnsupportedModelError(f"{source}: TVM cannot compile for {spec.name}: "
                                        f"{_first_line(exc)}") from exc
        seconds["compile"] = time.perf_counter() - t1
        meta["schedule"] = build_stats.as_dict()
        if remote is not None:
            meta["tuning_rpc"] = remote.to_dict()
        t2 = time.perf_counter()
        _export(ex, spec, tvm_target, tmp / LIBRARY_FILE, meta, gpu)
        seconds["export"] = time.perf_counter() - t2
        seconds["total"] = time.perf_counter() - t0
        import tvm

        meta = {
            "format": ARTIFACT_FORMAT,
            "schema": ARTIFACT_SCHEMA,
            "target": spec.name,
            "tvm_target": spec.tvm,
            "device": spec.device,
            "library": LIBRARY_FILE,
            "inputs": [s.to_dict() for s in inputs],
            "outputs": [s.to_dict() for s in outputs],
            "tvm_version": str(tvm.__version__),
            "compress_ir_version": __version__,
            "model_sha256": hashlib.sha256(proto.SerializeToString()).hexdigest(),
            "build": {"options": options.to_dict(),
                      "seconds": {k: round(v, 3) for k, v in seconds.items()}},
            "target_spec": {**spec.to_dict(), "required_cpu_flags":
                            list(spec.required_cpu_flags)},
            **meta,
        }
        staged = Artifact(tmp, meta)
        meta["verify"] = (verify_artifact(staged, proto, options) if options.verify
                          else {"ran": False, "reason": "verification disabled"})
        write_atomic(tmp / META_FILE, (json.dumps(meta, indent=2) + "\n").encode())
    return load_artifact(out)
