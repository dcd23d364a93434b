"""ONNX `sparse_initializer` storage: write sparse weights compactly, read them back dense.

A sparsified model stays dense in the IR (zeros stored) so every runtime runs it;
only the file changes. The ONNX spec's SparseTensorProto is COO: `values` (a 1-D
tensor of the NNZ non-zeros, named like the initializer), `indices` (INT64,
either `[NNZ]` positions in the row-major flattened tensor, ascending, or
`[NNZ, rank]` coordinates) and `dims`. We write the linear form: 8 bytes of index
plus the value per non-zero, so a tensor is only written sparse when that is
smaller than dense (float32: above ~2/3 sparsity) and it reaches `min_sparsity`.
onnxruntime accepts such models (it densifies them at load).
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import numpy_helper

from compress_ir.core.errors import ModelLoadError
from compress_ir.core.limits import MAX_TENSOR_BYTES, human_bytes

_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
                onnx.TensorProto.BFLOAT16}
_MIN_ELEMENTS = 16  # shape-like and scalar constants stay dense


def _subgraphs(graph: onnx.GraphProto) -> list[onnx.GraphProto]:
    found = [graph]
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else
                        list(attr.graphs) if attr.type == onnx.AttributeProto.GRAPHS else []):
                found.extend(_subgraphs(sub))
    return found


def sparse_to_dense(sparse: onnx.SparseTensorProto, source: str = "<model>") -> onnx.TensorProto:
    """The dense TensorProto of a COO SparseTensorProto (linear or coordinate indices)."""
    name = sparse.values.name
    try:
        values = numpy_helper.to_array(sparse.values).reshape(-1)
        indices = numpy_helper.to_array(sparse.indices).astype(np.int64)
    except (ValueError, TypeError) as exc:
        raise ModelLoadError(f"{source}: sparse initializer {name!r} is unreadable: "
                             f"{exc}") from None
    dims = tuple(int(d) for d in sparse.dims)
    size = math.prod(dims)
    if any(d < 0 for d in dims) or size * values.itemsize > MAX_TENSOR_BYTES:
        raise ModelLoadError(f"{source}: sparse initializer {name!r}: dims {list(dims)} are "
                             f"negative or over the limit of {human_bytes(MAX_TENSOR_BYTES)}")
    if indices.ndim == 2:
        if indices.shape[1] != len(dims) or (indices >= np.asarray(dims)).any():
            raise ModelLoadError(f"{source}: sparse initializer {name!r}: indices of shape "
                                 f"{list(indices.shape)} do not fit dims {list(dims)}")
        indices = np.ravel_multi_index(tuple(indices.T), dims) if indices.size else \
            indices.reshape(-1)
    if indices.shape[0] != values.shape[0] or (indices.size and (
            indices.min() < 0 or indices.max() >= size)):
        raise ModelLoadError(f"{source}: sparse initializer {name!r}: {indices.shape[0]} "
                             f"indices for {values.shape[0]} values in a tensor of {size}")
    dense = np.zeros(size, dtype=values.dtype)
    dense[indices] = values
    return numpy_helper.from_array(dense.reshape(dims), name)


def densify_sparse_initializers(graph: onnx.GraphProto, source: str = "<model>") -> int:
    """Turn every `sparse_initializer` (graph and subgraphs) into a normal initializer.

    Transforms read weights from `initializer` only; returns how many were converted.
    """
    converted = 0
    for g in _subgraphs(graph):
        for sparse in g.sparse_initializer:
            g.initializer.append(sparse_to_dense(sparse, source))
            converted += 1
        del g.sparse_initializer[:]
    return converted


def dense_to_sparse(tensor: onnx.TensorProto) -> onnx.SparseTensorProto:
    """COO with ascending linear INT64 indices; `values` keeps the tensor's name and dtype."""
    array = numpy_helper.to_array(tensor)
    flat = array.reshape(-1)
    indices = np.flatnonzero(flat).astype(np.int64)
    values = numpy_helper.from_array(flat[indices], tensor.name)
    return onnx.helper.make_sparse_tensor(
        values, numpy_helper.from_array(indices, ""), list(array.shape))


def sparse_nbytes(nnz: int, itemsize: int) -> int:
    """Payload bytes of the COO form: values plus 8-byte linear indices."""
    return nnz * (itemsize + 8)


def to_sparse_initializers(proto: onnx.ModelProto, min_sparsity: float = 0.5) -> list[str]:
    """Move eligible initializers of the main graph to `sparse_initializer`, in place.

    Eligible: floating point, at least 16 elements, not listed as a graph input,
    sparsity >= `min_sparsity`, and the COO payload smaller than the dense one.
    Returns the names moved.
    """
    graph = proto.graph
    listed = {i.name for i in graph.input}
    kept, moved = [], []
    for init in graph.initializer:
        array = None
        if init.data_type in _FLOAT_TYPES and init.name not in listed and \
                int(np.prod(init.dims)) >= _MIN_ELEMENTS:
            array = numpy_helper.to_array(init)
        if array is not None:
            nnz = int(np.count_nonzero(array))
            sparsity = 1.0 - nnz / array.size
            if sparsity >= min_sparsity and sparse_nbytes(nnz, array.itemsize) < array.nbytes:
                graph.sparse_initializer.append(dense_to_sparse(init))
                moved.append(init.name)
                continue
        kept.append(init)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return moved
