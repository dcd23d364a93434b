"""Apply a channel removal to the graph, and build the masked-model oracle.

`apply_removal` physically slices every constant and rewrites every attribute
that the analysis recorded. `masked_reference` builds, independently and on the
ONNX proto, the original model with the removed channels' input weights zeroed
in every consumer that sums over them: both must compute the same outputs.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper

from compress_ir.core.model import Model
from compress_ir.passes.analysis.channel_groups import ChannelAnalysis, ConstSlice, Fixup


def _group_mask(mask: np.ndarray, groups: int, where: str) -> np.ndarray:
    """Per-group local mask of a grouped weight axis; groups must agree (they are tied)."""
    table = mask.reshape(groups, -1)
    if not (table == table[0]).all():
        raise AssertionError(f"{where}: grouped channels were not removed rectangularly")
    return table[0]


def _set_const(node: gs.Node, index: int, values: np.ndarray) -> None:
    """Replace a constant input, copying it if other nodes share it."""
    old = node.inputs[index]
    if len(old.outputs) == 1:
        old.values = values
    else:
        node.inputs[index] = gs.Constant(f"{old.name}__{node.name}", values)


def _slice_one(node: gs.Node, s: ConstSlice, keep: np.ndarray) -> None:
    values = np.asarray(node.inputs[s.input_index].values)
    mask = _group_mask(keep, s.groups, node.name) if s.groups > 1 else keep
    if mask.all():
        return
    _set_const(node, s.input_index, np.compress(mask, values, axis=s.axis))


def _ints_input(node: gs.Node, index: int, values: list[int]) -> None:
    node.inputs[index] = gs.Constant(
        f"{node.name}__{index}_pruned", np.asarray(values, dtype=np.int64)
    )


def _fix_conv_group(model: Model, node: gs.Node, f: Fixup, keep: dict) -> None:
    node.attrs["group"] = int(keep[f.data["by"]].sum())


def _fix_split(model: Model, node: gs.Node, f: Fixup, keep: dict) -> None:
    sizes = [int(keep[o.name].sum()) for o in node.outputs]
    if model.opset >= 13:
        node.attrs.pop("num_outputs", None)
        while len(node.inputs) < 2:
            node.inputs.append(gs.Variable.empty())
        _ints_input(node, 1, sizes)
    else:
        node.attrs["split"] = sizes


def _fix_slice(model: Model, node: gs.Node, f: Fixup, keep: dict) -> None:
    mask = keep[f.data["by"]]
    start, stop = int(mask[: f.data["start"]].sum()), int(mask[: f.data["stop"]].sum())
    pos = f.data["position"]
    for name, index, value in (("starts", 1, start), ("ends", 2, stop)):
        if name in node.attrs:
            values = list(node.attrs[name])
            values[pos] = value
            node.attrs[name] = values
        else:
            values = [int(v) for v in np.atleast_1d(node.inputs[index].values)]
            values[pos] = value
            _ints_input(node, index, values)


def _fix_shape_element(model: Model, node: gs.Node, f: Fixup, keep: dict) -> None:
    """Set one literal element of a shape input to the kept channel count.

    `how`: the input is a constant (`const`), or the literal comes from a constant
    input of the Concat that builds it (`concat`, copied if shared), or else an
    `Add` of a one-hot delta is inserted before the op (`delta`): constants other
    nodes read are never changed under them.
    """
    index, pos, old = f.data["index"], f.data["position"], f.data["old"]
    new = int(keep[f.data["by"]].sum())
    if new == old:
        return
    shape_t = node.inputs[index]
    if f.data["how"] == "const":
        values = np.array(shape_t.values).copy()
        values.flat[pos] = new
        node.inputs[index] = gs.Constant(f"{node.name}__{index}_pruned", values)
    elif f.data["how"] == "concat":
        cname, cindex, cpos = f.data["origin"]
        concat = next(n for n in model.graph.nodes if n.name == cname)
        values = np.array(concat.inputs[cindex].values).copy()
        values.flat[cpos] = new
        _set_const(concat, cindex, values)
    else:
        delta = np.zeros(shape_t.shape[0] if shape_t.shape else pos + 1, dtype=np.int64)
        delta[pos] = new - old
        out = gs.Variable(f"{shape_t.name}__{node.name}_pruned", dtype=np.int64,
                          shape=list(delta.shape))
        add = gs.Node("Add", name=f"{node.name}__shape_delta",
                      inputs=[shape_t, gs.Constant(f"{node.name}__shape_delta", delta)],
                      outputs=[out])
        model.graph.nodes.append(add)
        node.inputs[index] = out


def _fix_groupnorm(model: Model, node: gs.Node, f: Fixup, keep: dict) -> None:
    node.attrs["num_groups"] = int(keep[f.data["by"]].sum()) // f.data["per_group"]


def _fix_groupnorm_param(model: Model, node: gs.Node, f: Fixup, keep: dict) -> None:
    group_keep = keep[f.data["by"]].reshape(-1, f.data["per_group"])[:, 0]
    values = np.asarray(node.inputs[f.data["index"]].values)
    _set_const(node, f.data["index"], values[group_keep])


def _fix_gather_input(model: Model, node: gs.Node, f: Fixup, keep: dict) -> None:
    """Read a computed input at the kept channels only (`Gather` on its channel axis).

    Why: a per-head bias built at run time (ALiBi slopes times positions, sliced to the
    sequence length) has no constant to slice; gathering the kept heads is exact.
    """
    mask = keep[f.data["by"]]
    if mask.all():
        return
    index, axis = f.data["index"], f.data["axis"]
    src = node.inputs[index]
    kept = gs.Constant(f"{node.name}__{index}_kept", np.flatnonzero(mask).astype(np.int64))
    out = gs.Variable(f"{src.name}__{node.name}_kept", dtype=src.dtype)
    model.graph.nodes.append(gs.Node("Gather", name=f"{node.name}__{index}_gather",
                                     attrs={"axis": axis}, inputs=[src, kept], outputs=[out]))
    node.inputs[index] = out


FIXUPS: dict[str, Callable[[Model, gs.Node, Fixup, dict], None]] = {
    "conv-group": _fix_conv_group,
    "split-sizes": _fix_split,
    "slice-range": _fix_slice,
    "shape-element": _fix_shape_element,
    "groupnorm-groups": _fix_groupnorm,
    "groupnorm-param": _fix_groupnorm_param,
    "gather-input": _fix_gather_input,
}


def apply_removal(model: Model, analysis: ChannelAnalysis, removed_units: set[int]) -> None:
    """Physically remove the units from `model` (the model the analysis ran on)."""
    keep = analysis.keep_masks(removed_units)
    nodes = {n.name: n for n in model.graph.nodes}
    for s in analysis.slices:
        _slice_one(nodes[s.node], s, keep[s.by])
    for f in analysis.fixups:
        FIXUPS[f.kind](model, nodes[f.node], f, keep)
    boundary = {t.name for t in (*model.graph.inputs, *model.graph.outputs)}
    for name, tensor in model.tensors().items():
        if isinstance(tensor, gs.Variable) and name not in boundary:
            tensor.shape = None  # stale: shape inference recomputes them


def masked_reference(
    proto: onnx.ModelProto, analysis: ChannelAnalysis, removed_units: set[int]
) -> onnx.ModelProto:
    """The original model with removed channels zeroed where they are summed over."""
    ref = onnx.ModelProto()
    ref.CopyFrom(proto)
    keep = analysis.keep_masks(removed_units)
    inits = {i.name: i for i in ref.graph.initializer}
    nodes = {n.name: n for n in ref.graph.node}
    for s in analysis.slices:
        if not s.reduces or keep[s.by].all():
            continue
        node = nodes[s.node]
        name = node.input[s.input_index]
        values = numpy_helper.to_array(inits[name]).copy()
        drop = ~keep[s.by]
        moved = np.moveaxis(values, s.axis, 0)  # a view: writes land in `values`
        if s.groups > 1:
            rows_per_group = values.shape[0] // s.groups
            table = drop.reshape(s.groups, -1)
            for g in range(s.groups):
                rows = slice(g * rows_per_group, (g + 1) * rows_per_group)
                values[rows][:, table[g]] = 0
        else:
            moved[drop] = 0
        new_name = f"{name}__masked_{s.node}"
        ref.graph.initializer.append(numpy_helper.from_array(values, new_name))
        node.input[s.input_index] = new_name
    return ref
