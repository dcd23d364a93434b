"""`share-weights`: k-means weight sharing per layer (Han et al. 2016, Deep Compression §3).

Each Conv/Gemm/MatMul weight is replaced by at most 2^bits codes: Lloyd's k-means on
its non-zero values, centroids initialised linearly between their min and max (the
initialisation Han et al. found best), zeros left exactly zero so pruning's sparsity
survives. When the weight has zeros, zero takes one code and 2^bits - 1 centroids
remain, so every weight (filler zeros of the relative index included) fits a
`bits`-bit index; a weight without zeros gets 2^bits centroids.

The ONNX stays a dense float model whose weights take the codebook's values.

Numeric reference: sharing is lossy by design, so comparing with the input would
only test a tolerance the user has to guess. The reference is instead the input
model with every shared weight rebuilt at run time from its stored form,
`Gather(codebook, codes)`, i.e. what a Deep-Compression decoder computes. It checks
that the dense model written is exactly the codebook model (wiring, layout, zeros,
dtype); how far sharing moved the model is reported, not checked: stats
`weight_rel_error` (||W' - W|| / ||W|| over all shared weights) and
`output_rel_error` (outputs vs the pass's input on seeded random inputs).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper, numpy_helper

from compress_ir.core import numeric
from compress_ir.core.model import Model
from compress_ir.core.passes import Pass, PassContext, PassResult, option, register_pass
from compress_ir.passes.weight_layers import WEIGHT_OPS, weight_layers


@dataclass(frozen=True)
class ShareWeightsOptions:
    bits: int = option(4, "index bits per layer: at most 2^bits codes (zero is one of them when"
                       " the layer has zeros)")
    conv_bits: int = option(0, "bits for Conv weights (0 = bits), e.g. 8 as in the paper")
    fc_bits: int = option(0, "bits for Gemm/MatMul weights (0 = bits), e.g. 5 as in the paper")
    exclude: tuple[str, ...] = option((), "node names or glob patterns whose weights stay as is")
    min_size: int = option(0, "leave weights with fewer elements than this as is")
    iterations: int = option(100, "most Lloyd iterations per layer (stops earlier on convergence)")

    def __post_init__(self) -> None:
        if not 1 <= self.bits <= 8:
            raise ValueError(f"bits must be in 1..8, got {self.bits}")
        for name in ("conv_bits", "fc_bits"):
            value = getattr(self, name)
            if value and not 1 <= value <= 8:
                raise ValueError(f"{name.replace('_', '-')} must be in 1..8 (0 = bits), "
                                 f"got {value}")
        if self.min_size < 0 or self.iterations < 1:
            raise ValueError("min-size must be >= 0 and iterations >= 1")

    def bits_for(self, kind: str) -> int:
        """Index bits for a layer kind ("conv" or "fc")."""
        override = {"conv": self.conv_bits, "fc": self.fc_bits}.get(kind, 0)
        return override or self.bits


def kmeans_1d(values: np.ndarray, k: int, iterations: int) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means on scalars from a linear initialisation; (sorted centroids, labels).

    In 1-D every cluster is an interval of the sorted values, cut at the midpoints
    between sorted centroids, so an iteration is k bisections plus prefix sums
    (O(k log n) after one sort) instead of a pass over all n weights. Stops when the
    cuts stop moving. Empty clusters keep their centroid; unused ones are dropped.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    ordered = np.sort(v)
    prefix = np.concatenate([[0.0], np.cumsum(ordered)])
    centroids = np.linspace(ordered[0], ordered[-1], k)
    cuts = None
    for _ in range(iterations):
        # value x joins cluster j when mid[j-1] < x <= mid[j] (as searchsorted below)
        new_cuts = np.searchsorted(ordered, (centroids[1:] + centroids[:-1]) / 2, "right")
        if cuts is not None and np.array_equal(new_cuts, cuts):
            break
        cuts = new_cuts
        bounds = np.concatenate([[0], cuts, [v.size]])
        counts = np.diff(bounds)
        sums = prefix[bounds[1:]] - prefix[bounds[:-1]]
        centroids = np.sort(np.where(counts > 0, sums / np.maximum(counts, 1), centroids))
    labels = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, v)
    used = np.unique(labels)
    remap = np.zeros(k, dtype=np.int64)
    remap[used] = np.arange(used.size)
    return centroids[used], remap[labels]


@dataclass(frozen=True)
class SharedWeight:
    """One layer's sharing: the stored form (codebook, codes) and the dense result."""

    codebook: np.ndarray  # weight dtype; codebook[0] == 0 when the weight has zeros
    codes: np.ndarray  # int64, shape of the weight
    dense: np.ndarray


def share_weight(weight: np.ndarray, bits: int, iterations: int) -> SharedWeight | None:
    """Cluster the non-zeros of `weight` into at most 2^bits codes (zero included).

    None when the weight already has that few distinct values or no non-zero.
    """
    w = np.asarray(weight)
    nonzero = w != 0
    has_zero = not nonzero.all()
    k = (1 << bits) - int(has_zero)
    values = w[nonzero]
    if values.size == 0 or k < 1 or np.unique(values).size <= k:
        return None
    centroids, labels = kmeans_1d(values, k, iterations)
    zero = [0.0] if has_zero else []
    codebook = np.concatenate([zero, centroids]).astype(w.dtype)
    codes = np.zeros(w.shape, dtype=np.int64)
    codes[nonzero] = labels + int(has_zero)
    dense = np.zeros_like(w)
    dense[nonzero] = centroids.astype(w.dtype)[labels]
    return SharedWeight(codebook, codes, dense)


def codebook_reference(proto: onnx.ModelProto, shared: dict[str, SharedWeight]) -> onnx.ModelProto:
    """`proto` with each shared initializer rebuilt at run time by Gather(codebook, codes)."""
    ref = onnx.ModelProto()
    ref.CopyFrom(proto)
    graph = ref.graph
    kept = [i for i in graph.initializer if i.name not in shared]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    inputs = [i for i in graph.input if i.name not in shared]
    del graph.input[:]
    graph.input.extend(inputs)
    gathers = []
    for name, sw in shared.items():
        graph.initializer.append(numpy_helper.from_array(sw.codebook, f"{name}__codebook"))
        graph.initializer.append(numpy_helper.from_array(sw.codes, f"{name}__codes"))
        gathers.append(helper.make_node("Gather", [f"{name}__codebook", f"{name}__codes"],
                                        [name], name=f"{name}__decode", axis=0))
    nodes = gathers + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    return ref


def _weights(model: Model) -> dict[str, tuple[gs.Constant, list[gs.Node]]]:
    """The weights of the weight layers and the nodes that use each."""
    found: dict[str, tuple[gs.Constant, list[gs.Node]]] = {}
    for layer in weight_layers(model):
        found.setdefault(layer.weight.name, (layer.weight, []))[1].append(layer.node)
    return found


@register_pass("share-weights")
class ShareWeights(Pass):
    summary = "k-means weight sharing per layer: at most 2^bits values, zeros kept (lossy)"
    changes_storage = True
    in_place = True
    Options = ShareWeightsOptions

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        opts = self.options
        before = model.to_proto()
        shared: dict[str, SharedWeight] = {}
        rows: list[dict[str, Any]] = []
        err2 = norm2 = 0.0
        skipped = 0
        for name, (const, nodes) in _weights(model).items():
            w = np.asarray(const.values)
            bits = min(opts.bits_for(WEIGHT_OPS[n.op]) for n in nodes)
            names = [n.name for n in nodes]
            if w.size < opts.min_size or any(
                fnmatch.fnmatchcase(n, pat) for n in names for pat in opts.exclude
            ):
                skipped += 1
                continue
            sw = share_weight(w, bits, opts.iterations)
            dense = w if sw is None else sw.dense
            diff = dense.astype(np.float64) - w
            err2 += float(np.sum(diff**2))
            norm2 += float(np.sum(np.asarray(w, np.float64) ** 2))
            rows.append({
                "nodes": names, "weight": name, "shape": list(w.shape), "bits": bits,
                "nnz": int(np.count_nonzero(w)),
                "distinct": int(np.unique(dense[dense != 0]).size),
                "changed": sw is not None,
                "rel_error": float(np.sqrt(np.sum(diff**2)) / max(np.linalg.norm(w), 1e-30)),
            })
            if sw is not None:
                shared[name] = sw
                const.values = sw.dense
        stats: dict[str, float] = {
            "layers": len(rows),
            "layers_changed": len(shared),
            "layers_skipped": skipped,
            "conv_bits": opts.bits_for("conv"),
            "fc_bits": opts.bits_for("fc"),
            "max_distinct": max((r["distinct"] for r in rows), default=0),
            "weight_rel_error": round(float(np.sqrt(err2 / norm2)) if norm2 else 0.0, 6),
        }
        details = {"layers": rows}
        if not shared:
            return PassResult(model, modified=False, stats=stats, details=details)
        stats["output_rel_error"] = round(numeric.compare(model.to_proto(), before, ctx.seed), 6)
        reference = codebook_reference(before, shared)
        return PassResult(model, modified=True, stats=stats, details=details, reference=reference)
