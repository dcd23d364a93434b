"""PyTorch in, and the pruning plan back to PyTorch (`pip install 'compress-ir[torch]'`).

    from compress_ir.frontends.torch import export, compress, apply_plan
    export(model, (x,), "model.onnx")                       # TorchScript exporter
    export(model, (x,), "model.onnx", dynamo=True)          # torch.export-based exporter
    result = compress(model, (x,), "channel-prune{target-macs=0.3}", plan="plan.json")
    small = apply_plan(model, "plan.json")                  # an nn.Module to fine-tune

`export` keeps BatchNorm as its own node (both exporters would otherwise fold it
into the conv) and writes every node's module path into the node's
`metadata_props` (`compress_ir.module_path`), so the plan can name the module
that owns each cut parameter. `apply_plan` replays the plan's parameter slices on
a copy of the module; its outputs equal the pruned ONNX model's when the plan is
`exact` (only channels were removed). Torch is imported lazily: the rest of
compress-ir never needs it.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

from compress_ir.core.errors import UnsupportedModelError, UsageError
from compress_ir.core.files import write_atomic
from compress_ir.core.plan import read_plan
from compress_ir.passes.analysis.prune_plan import MODULE_KEY, module_path

if TYPE_CHECKING:
    import torch
    from torch import nn

    from compress_ir.api import CompressResult

INSTALL_HINT = "pip install 'compress-ir[torch]'"
_EXPORTER_NOTICES = (".*(constant folding be turned off|legacy TorchScript|feature will be "
                     "removed|dynamic_axes' is not recommended|from_dynamic_axes_to_dynamic_"
                     "shapes|LeafSpec).*")
DEFAULT_OPSET = 18


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise UsageError(f"PyTorch is not installed: {INSTALL_HINT}") from None
    return torch


def _as_tuple(example_inputs: Any) -> tuple:
    return tuple(example_inputs) if isinstance(example_inputs, list | tuple) else (example_inputs,)


def _annotate(proto: onnx.ModelProto, module: nn.Module, exporter: str) -> None:
    """Write each node's module path (checked against the module tree) into its metadata."""
    modules = dict(module.named_modules())
    owners = {f"{name}.{p}": name for name, m in modules.items()
              for p, _ in (*m.named_parameters(recurse=False), *m.named_buffers(recurse=False))}
    owners = {k.lstrip("."): v for k, v in owners.items()}
    for node in proto.graph.node:
        meta = {p.key: p.value for p in node.metadata_props}
        path = module_path(node.name, meta)
        if path not in modules:  # fall back to the module that owns a parameter input
            path = next((owners[i] for i in node.input if i in owners), None)
        if path is not None and MODULE_KEY not in meta:
            node.metadata_props.add(key=MODULE_KEY, value=path)
    # NodeProto.metadata_props is IR version 10 (onnx 1.16); the TorchScript exporter writes 8
    proto.ir_version = max(proto.ir_version, 10)
    torch = _torch()
    for key, value in (("compress_ir.exporter", exporter),
                       ("compress_ir.torch_version", str(torch.__version__))):
        proto.metadata_props.add(key=key, value=value)


def export_proto(
    module: nn.Module, example_inputs: Any, *, dynamic_axes: dict | None = None,
    dynamo: bool = False, input_names: list[str] | None = None,
    output_names: list[str] | None = None, opset: int = DEFAULT_OPSET,
) -> onnx.ModelProto:
    """Export `module` in eval mode with one of torch's two exporters; see `export`."""
    torch = _torch()
    args = _as_tuple(example_inputs)
    names = input_names or (["input"] if len(args) == 1 else [f"input_{i}" for i in range(
        len(args))])
    was_training = module.training
    module.eval()
    try:
        with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()), \
                warnings.catch_warnings():
            # eval-mode PRESERVE is what we want; the legacy-exporter notices are not news
            warnings.filterwarnings("ignore", message=_EXPORTER_NOTICES)
            path = os.path.join(tmp, "model.onnx")
            if dynamo:
                # optimize=False: the optimiser would fold BatchNorm into the conv and the
                # plan could no longer name the BatchNorm module to cut.
                torch.onnx.export(module, args, path, dynamo=True, optimize=False,
                                  input_names=names, output_names=output_names,
                                  dynamic_axes=dynamic_axes, opset_version=opset,
                                  external_data=False, verbose=False)
            else:
                # PRESERVE (the module is in eval mode) skips the exporter's Conv+BN fusion.
                torch.onnx.export(module, args, path, dynamo=False,
                                  training=torch.onnx.TrainingMode.PRESERVE,
                                  input_names=names, output_names=output_names,
                                  dynamic_axes=dynamic_axes, opset_version=opset)
            proto = onnx.load(path)
    except Exception as exc:  # the exporters raise many types; name the module and exporter
        kind = "dynamo" if dynamo else "TorchScript"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsupportedModelError(
            f"{type(module).__name__}: the {kind} ONNX exporter failed: {first}") from exc
    finally:
        module.train(was_training)
    _annotate(proto, module, "dynamo" if dynamo else "torchscript")
    return proto


def export(
    module: nn.Module, example_inputs: Any, path: str | os.PathLike, *,
    dynamic_axes: dict | None = None, dynamo: bool = False,
    input_names: list[str] | None = None, output_names: list[str] | None = None,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Export to ONNX at `path` (atomically), keeping node-to-module metadata.

    `dynamo=False` uses the TorchScript exporter (node names such as
    `/layer1/layer1.0/conv1/Conv`), `dynamo=True` the torch.export-based one
    (module scopes in `pkg.torch.onnx.name_scopes`; needs onnxscript). Both are
    annotated with `compress_ir.module_path` per node. `dynamic_axes` as in
    `torch.onnx.export`, e.g. `{"input": {0: "batch"}}`.
    """
    proto = export_proto(module, example_inputs, dynamic_axes=dynamic_axes, dynamo=dynamo,
                         input_names=input_names, output_names=output_names, opset=opset)
    write_atomic(path, proto.SerializeToString())
    return Path(path)


def compress(
    module: nn.Module, example_inputs: Any, pipeline: str | list[str] | None, *,
    dynamo: bool = False, dynamic_axes: dict | None = None, **kwargs: Any,
) -> CompressResult:
    """Export `module` and run `compress_ir.api.compress` on it (same keyword arguments).

    `plan="plan.json"` writes the pruning plan that `apply_plan` turns back into a
    pruned module; `output="small.onnx"` writes the compressed model.
    """
    from compress_ir.api import compress as compress_onnx
    from compress_ir.frontends.onnx import load_onnx

    proto = export_proto(module, example_inputs, dynamic_axes=dynamic_axes, dynamo=dynamo)
    ir = load_onnx(proto)
    ir.source = f"<torch {type(module).__name__}>"
    return compress_onnx(ir, pipeline, **kwargs)


# -- apply_plan ------------------------------------------------------------------

# (ONNX op, input index) -> the torch parameter of the node's module that it holds.
_ROLES: dict[tuple[str, int], str] = {
    ("Conv", 1): "weight", ("Conv", 2): "bias",
    ("ConvTranspose", 1): "weight", ("ConvTranspose", 2): "bias",
    ("Gemm", 1): "weight", ("Gemm", 2): "bias",
    ("MatMul", 1): "weight", ("Add", 0): "bias", ("Add", 1): "bias",
    ("Mul", 0): "weight", ("Mul", 1): "weight", ("PRelu", 1): "weight",
    ("BatchNormalization", 1): "weight", ("BatchNormalization", 2): "bias",
    ("BatchNormalization", 3): "running_mean", ("BatchNormalization", 4): "running_var",
    ("InstanceNormalization", 1): "weight", ("InstanceNormalization", 2): "bias",
    ("LayerNormalization", 1): "weight", ("LayerNormalization", 2): "bias",
    ("GroupNormalization", 1): "weight", ("GroupNormalization", 2): "bias",
}


def _transposed(entry: dict[str, Any]) -> bool:
    """ONNX holds Linear weights as (in, out) for MatMul and for Gemm with transB=0."""
    if entry["input"] != 1:
        return False
    return entry["op"] == "MatMul" or (entry["op"] == "Gemm" and not entry.get("trans_b", 1))


def _map_axis(onnx_shape: list[int], torch_shape: list[int], axis: int, flip: bool) -> int | None:
    """The torch axis holding ONNX axis `axis`, or None if the shapes do not correspond."""
    if flip and len(onnx_shape) == 2:
        onnx_shape, axis = onnx_shape[::-1], 1 - axis
    if list(onnx_shape) == list(torch_shape):
        return axis
    big = [i for i, d in enumerate(onnx_shape) if d != 1]  # (1, C, 1, 1) bias vs (C,)
    tbig = [i for i, d in enumerate(torch_shape) if d != 1]
    if axis in big and [onnx_shape[i] for i in big] == [torch_shape[i] for i in tbig]:
        return tbig[big.index(axis)]
    return None


def _resolve(entry: dict[str, Any], tensors: dict[str, torch.Tensor]) -> tuple[str, int]:
    """(qualified torch parameter/buffer name, torch axis) for one plan slice."""
    where = f"node {entry['node']!r} ({entry['op']}, module {entry['module']!r})"
    candidates = []
    if entry["param"] in tensors:  # the exporters keep parameter names as initializer names
        candidates.append((entry["param"], False))
    role = _ROLES.get((entry["op"], entry["input"]))
    if entry["module"] is not None and role is not None:
        name = f"{entry['module']}.{role}" if entry["module"] else role
        if name in tensors:
            candidates.append((name, _transposed(entry)))
    for name, flip in candidates:
        axis = _map_axis(entry["shape"], list(tensors[name].shape), entry["axis"], flip)
        if axis is not None:
            return name, axis
    if not candidates:
        raise UnsupportedModelError(
            f"plan: {where}: its parameter {entry['param']!r} is not a parameter of the "
            "module, and no module path names it (export with compress_ir.frontends.torch"
            ".export so nodes carry their module)")
    raise UnsupportedModelError(
        f"plan: {where}: parameter {candidates[0][0]!r} has shape "
        f"{list(tensors[candidates[0][0]].shape)}, the plan expects {entry['shape']}; "
        "was the plan made from another model?")


def _set_tensor(root: nn.Module, name: str, value: torch.Tensor) -> None:
    torch = _torch()
    owner_name, _, attr = name.rpartition(".")
    owner = root.get_submodule(owner_name)
    if attr in owner._parameters:
        old = owner._parameters[attr]
        owner._parameters[attr] = torch.nn.Parameter(value, requires_grad=old.requires_grad)
    else:
        owner._buffers[attr] = value


def _refresh(m: nn.Module) -> None:
    """Make a module's size attributes agree with its (cut) parameters."""
    from torch import nn

    w = getattr(m, "weight", None)
    if isinstance(m, nn.modules.conv._ConvTransposeNd):
        m.in_channels, m.out_channels = w.shape[0], w.shape[1] * m.groups
    elif isinstance(m, nn.modules.conv._ConvNd):
        m.out_channels, m.in_channels = w.shape[0], w.shape[1] * m.groups
    elif isinstance(m, nn.Linear):
        m.out_features, m.in_features = w.shape
    elif isinstance(m, nn.modules.batchnorm._NormBase):
        m.num_features = m.running_mean.shape[0] if m.running_mean is not None else w.shape[0]
    elif isinstance(m, nn.LayerNorm) and w is not None:
        m.normalized_shape = tuple(w.shape)
    elif isinstance(m, nn.GroupNorm) and w is not None:
        m.num_channels = w.shape[0]


def _set_groups(m: nn.Module, value: int) -> None:
    m.groups = int(value)


def _set_num_groups(m: nn.Module, value: int) -> None:
    m.num_groups = int(value)


# Plan attribute rewrites that are module attributes in torch. The others (reshape
# sizes, split sizes, slice ranges) live in forward() code, which apply_plan cannot edit.
_ATTRIBUTES = {"conv-group": _set_groups, "groupnorm-groups": _set_num_groups}
_NORMS = ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "LayerNorm", "GroupNorm")


def _check_norms(model: nn.Module, step: dict[str, Any]) -> None:
    """A norm layer missing from the exported graph was folded away: its cut is unknown."""
    seen = set(step["modules"])
    if not seen:
        return
    missing = [n for n, m in model.named_modules() if type(m).__name__ in _NORMS and n not in seen]
    if missing:
        raise UnsupportedModelError(
            f"plan: {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''} "
            f"({type(model.get_submodule(missing[0])).__name__}) do not appear in the exported "
            "graph (folded into a conv?), so the plan cannot say how to cut them; export with "
            "compress_ir.frontends.torch.export, which keeps them")


def _step_cuts(model: nn.Module, step: dict[str, Any]) -> tuple[dict, list[dict]]:
    """Resolve every slice to (torch tensor name, axis) -> kept, with role; and code rewrites."""
    tensors = _tensors(model)
    modules = dict(model.named_modules())
    cuts: dict[tuple[str, int], tuple[list[int], str, int]] = {}
    for entry in step["slices"]:
        name, axis = _resolve(entry, tensors)
        kept = entry["kept"]
        if cuts.setdefault((name, axis), (kept, entry["role"], entry["groups"]))[0] != kept:
            raise UnsupportedModelError(
                f"plan: parameter {name!r} axis {axis} is cut two different ways (node "
                f"{entry['node']!r}); is the parameter shared between layers?")
    code = []
    for entry in step["attributes"]:
        if entry["kind"] not in _ATTRIBUTES:
            code.append(entry)
        elif entry["module"] not in modules:
            raise UnsupportedModelError(
                f"plan: node {entry['node']!r} ({entry['kind']}) has no module in this model")
    return cuts, code


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(model.named_parameters(remove_duplicate=False)),
            **dict(model.named_buffers(remove_duplicate=False))}


def _apply_step(model: nn.Module, step: dict[str, Any], cuts: dict) -> None:
    torch = _torch()
    modules = dict(model.named_modules())
    tensors = _tensors(model)
    touched = set()
    for (name, axis), (kept, _, _) in sorted(cuts.items()):
        value = tensors[name].detach()
        cut = value.index_select(axis, torch.as_tensor(kept, dtype=torch.long)).clone()
        _set_tensor(model, name, cut)
        tensors[name] = cut  # the next axis of the same tensor is cut from this
        touched.add(name.rpartition(".")[0])
    for entry in step["attributes"]:
        if entry["kind"] in _ATTRIBUTES:
            _ATTRIBUTES[entry["kind"]](modules[entry["module"]], entry["value"])
            touched.add(entry["module"])
    for path in touched:
        _refresh(modules[path])


def _mask_step(model: nn.Module, cuts: dict) -> None:
    """The oracle: zero, in every consumer that sums over them, the removed channels' weights.

    The pruned module must compute exactly what this masked original computes.
    """
    tensors = _tensors(model)
    for (name, axis), (kept, role, _groups) in cuts.items():
        if role != "in":
            continue
        value = tensors[name]
        drop = sorted(set(range(value.shape[axis])) - set(kept))
        with _torch().no_grad():
            value.index_fill_(axis, _torch().as_tensor(drop, dtype=_torch().long), 0.0)


def _outputs(module: nn.Module, args: tuple) -> list[torch.Tensor]:
    torch = _torch()
    with torch.no_grad():
        out = module(*args)
    flat = out if isinstance(out, list | tuple) else [out]
    return [o for o in flat if isinstance(o, torch.Tensor)]


def _check_against_mask(original: nn.Module, pruned: nn.Module, masked: nn.Module,
                        args: tuple, tolerance: float) -> float:
    """Relative max error of the pruned module against the masked original on `args`."""
    was = (original.training, pruned.training)
    masked.eval()
    pruned.eval()
    try:
        try:
            got = _outputs(pruned, args)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise UnsupportedModelError(
                f"apply_plan: the pruned module fails to run ({first}); its forward() "
                "probably hardcodes a channel count") from None
        want = _outputs(masked, args)
    finally:
        pruned.train(was[1])
    if [tuple(g.shape) for g in got] != [tuple(w.shape) for w in want]:
        raise UnsupportedModelError(
            f"apply_plan: the pruned module's outputs have shapes {[tuple(g.shape) for g in got]}"
            f", expected {[tuple(w.shape) for w in want]}")
    err = max((float((g - w).abs().max() / max(float(w.abs().max()), 1e-12))
               for g, w in zip(got, want, strict=True)), default=0.0)
    if not err <= tolerance:
        raise UnsupportedModelError(
            f"apply_plan: the pruned module differs from the masked original by {err:.3g} "
            f"(tolerance {tolerance:.0e}); its forward() probably hardcodes a channel count")
    return err


def apply_plan(
    module: nn.Module, plan: str | os.PathLike | dict[str, Any], example_inputs: Any = None,
    *, inplace: bool = False, structure_only: bool = False, tolerance: float = 1e-4,
) -> nn.Module:
    """The module with the plan's channels physically removed (a copy unless `inplace`).

    Parameters are cut along the plan's axes and Conv/Linear/BatchNorm/LayerNorm/
    GroupNorm size attributes updated, so the result trains and exports like any
    module. For an `exact` plan its outputs equal the pruned ONNX model's.

    With `example_inputs` the result is checked against the oracle: the original
    module with the removed channels' weights zeroed in their consumers must give
    the same outputs (error > `tolerance` raises). Plans that also rewrote sizes
    held in forward() code (the Reshape after a flatten, Split sizes) need it: only
    running the module shows whether that code adapts (`flatten(1)`) or hardcodes
    the old count. A plan whose pipeline also changed weight values (reconstruct,
    sparsify, merge) only gives the pruned structure with the original weights:
    `structure_only=True` accepts that (fine-tuning recovers it).
    """
    doc = read_plan(plan)
    if not doc["exact"] and not structure_only:
        raise UsageError(
            f"plan: passes {', '.join(doc['weight_changes'])} also changed weight values, "
            "which the plan does not carry; apply_plan(..., structure_only=True) gives the "
            "pruned structure with the original weights")
    _torch()
    args = None if example_inputs is None else _as_tuple(example_inputs)
    model = module if inplace else copy.deepcopy(module)
    for step in doc["steps"]:
        _check_norms(model, step)
        cuts, code = _step_cuts(model, step)
        if code and args is None:
            where = ", ".join(f"{e['node']!r} ({e['kind']})" for e in code[:3])
            raise UsageError(
                f"plan: the pruned graph also rewrote sizes that forward() code computes ({where}"
                f"{' ...' if len(code) > 3 else ''}); pass example_inputs so apply_plan can "
                "check the pruned module")
        masked = copy.deepcopy(model) if args is not None else None
        _apply_step(model, step, cuts)
        if masked is not None:
            _mask_step(masked, cuts)
            _check_against_mask(module, model, masked, args, tolerance)
    return model
