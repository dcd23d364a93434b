"""The pruning plan of one `channel-prune` run, in terms a training framework can replay.

The report says how many channels each group kept; a PyTorch user who wants to
fine-tune needs more: which producer and consumer nodes, which of their
parameters were cut along which axis, which indices survived, and which
framework module each node came from. Everything here is read off the channel
analysis the pass already ran (its constant slices and attribute fixups), so the
plan is exactly what `apply_removal` did to the ONNX graph.

Module paths come from node metadata (see `module_path`); a node without one
still appears, with `module: null`, and the parameter's initializer name.
"""

from __future__ import annotations

import ast
from typing import Any

import numpy as np

from compress_ir.passes.analysis.channel_groups import ChannelAnalysis

# Written by `compress_ir.frontends.torch.export` on every node it can attribute.
MODULE_KEY = "compress_ir.module_path"
# Written by torch.onnx.export(dynamo=True): "['', 'layer1', 'layer1.0', 'conv2d_1']".
_DYNAMO_SCOPES = "pkg.torch.onnx.name_scopes"


def _scoped_name(node_name: str) -> str | None:
    """Module path from a TorchScript-exporter node name such as `/layer1/layer1.0/conv1/Conv`.

    Each scope is a child's attribute name, prefixed with its parent's scope when the
    parent is a container (`/block/mlp/mlp.0/MatMul` is `block.mlp.0`).
    """
    if not node_name.startswith("/"):
        return None
    path, previous = "", None
    for part in (p for p in node_name.split("/")[1:-1] if p):
        child = part[len(previous) + 1:] if previous and part.startswith(previous + ".") else part
        path = f"{path}.{child}" if path else child
        previous = part
    return path  # "" is the root module (an op in its own forward)


def module_path(node_name: str, meta: dict[str, str] | None) -> str | None:
    """The framework module a node came from, or None when nothing records it."""
    meta = meta or {}
    if MODULE_KEY in meta:
        return meta[MODULE_KEY]
    scopes = meta.get(_DYNAMO_SCOPES)
    if scopes:
        try:
            names = ast.literal_eval(scopes)
        except (ValueError, SyntaxError):
            names = None
        if isinstance(names, list) and len(names) >= 2:
            return str(names[-2])  # the last entry is the op itself
    return _scoped_name(node_name)


def _indices(mask: np.ndarray) -> tuple[list[int], list[int]]:
    return np.flatnonzero(mask).tolist(), np.flatnonzero(~mask).tolist()


def _group_local(mask: np.ndarray, groups: int) -> np.ndarray:
    return mask.reshape(groups, -1)[0] if groups > 1 else mask


def build_step(
    analysis: ChannelAnalysis,
    removed: set[int],
    rows: list[dict[str, Any]],
    scores: dict[int, np.ndarray],
    node_metadata: dict[str, dict[str, str]],
    spec: str,
    criterion: str,
    compensated: bool,
) -> dict[str, Any]:
    """One plan step: groups (producers, consumers, kept/removed, scores), slices, attributes."""
    keep = analysis.keep_masks(removed)
    nodes = analysis.nodes

    def where(name: str) -> dict[str, Any]:
        return {"node": name, "op": nodes[name].op,
                "module": module_path(name, node_metadata.get(name))}

    unit_group = {int(u): g.index for g in analysis.groups for u in g.units}

    def groups_of(tensor: str) -> list[int]:
        units = analysis.unit_of[analysis.layouts[tensor].ids]
        return sorted({unit_group[int(u)] for u in np.unique(units) if int(u) in unit_group})

    slices, consumers = [], {g.index: [] for g in analysis.groups}
    for s in analysis.slices:
        mask = _group_local(keep[s.by], s.groups)
        tensor = nodes[s.node].inputs[s.input_index]
        shape = list(np.asarray(tensor.values).shape)
        kept, gone = _indices(mask)
        touched = groups_of(s.by)
        if s.reduces:
            for g in touched:
                consumers[g].append({**where(s.node), "param": tensor.name, "axis": s.axis,
                                     "kept": kept, "removed": gone})
        if not gone:
            continue
        entry = {**where(s.node), "input": s.input_index, "param": tensor.name,
                 "shape": shape, "axis": s.axis, "groups": s.groups,
                 "role": "in" if s.reduces else "out", "kept": kept, "group_ids": touched}
        if entry["op"] == "Gemm":  # which way round B is held
            entry["trans_b"] = int(nodes[s.node].attrs.get("transB", 0))
        slices.append(entry)
    attributes = []
    for f in analysis.fixups:
        node = nodes[f.node]
        by = f.data.get("by")
        masks = [keep[by]] if by else [keep[o.name] for o in node.outputs if o.name in keep]
        if all(m.all() for m in masks):
            continue
        entry = {**where(f.node), "kind": f.kind}
        if f.kind == "conv-group":
            entry["value"] = int(keep[by].sum())
        elif f.kind == "groupnorm-groups":
            entry["value"] = int(keep[by].sum()) // int(f.data["per_group"])
        elif f.kind == "split-sizes":
            entry["value"] = [int(m.sum()) for m in masks]
        elif by:
            entry["value"] = int(keep[by].sum())  # new size along the tracked axis
        attributes.append(entry)

    groups = []
    for g, row in zip(analysis.groups, rows, strict=True):
        removed_units = row.get("removed", [])
        gone = set(removed_units)
        entry: dict[str, Any] = {
            "group": g.index, "status": row["status"], "size": g.size, "kept": row["kept"],
            "units": {"kept": [i for i in range(g.size) if i not in gone],
                      "removed": list(removed_units)},
            "producers": [],
            "consumers": consumers[g.index],
        }
        if g.index in scores:
            entry["units"]["scores"] = [float(v) for v in np.asarray(scores[g.index]).ravel()]
        if row.get("blocked_by"):
            entry["blocked_by"] = list(row["blocked_by"])
        for r in g.roots:
            if r.kind != "producer":
                continue
            kept, lost = _indices(keep[r.tensor])
            entry["producers"].append({
                **where(r.node), "param": r.weight, "axis": r.weight_axis,
                "tensor": r.tensor, "tensor_axis": analysis.layouts[r.tensor].axis,
                "kept": kept, "removed": lost,
            })
        groups.append(entry)
    modules = sorted({m for n in nodes
                      if (m := module_path(n, node_metadata.get(n))) is not None})
    return {"pass": spec, "criterion": criterion, "compensated": compensated,
            "modules": modules, "groups": groups, "slices": slices, "attributes": attributes}
