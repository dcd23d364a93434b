"""Loader policy for every byte a model points to outside its own file.

External data (of initializers, attribute tensors and both halves of a
`sparse_initializer`) is read only from regular files inside the model's folder,
resolved from that folder (never from the current directory), at the offset and
length the tensor declares, which must match its dims and dtype and stay under
`limits.MAX_TENSOR_BYTES`. Anything else is a one-line ModelLoadError naming the
tensor. Declared sizes of in-file tensors are checked the same way, so a 4 KB
file cannot claim a terabyte tensor.
"""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import onnx

from compress_ir.core.errors import ModelLoadError
from compress_ir.core.limits import MAX_TENSOR_BYTES, human_bytes

# bytes per element of fixed-size types (STRING has none; 4-bit types are packed)
_ITEMSIZE = {
    onnx.TensorProto.FLOAT: 4, onnx.TensorProto.UINT8: 1, onnx.TensorProto.INT8: 1,
    onnx.TensorProto.UINT16: 2, onnx.TensorProto.INT16: 2, onnx.TensorProto.INT32: 4,
    onnx.TensorProto.INT64: 8, onnx.TensorProto.BOOL: 1, onnx.TensorProto.FLOAT16: 2,
    onnx.TensorProto.DOUBLE: 8, onnx.TensorProto.UINT32: 4, onnx.TensorProto.UINT64: 8,
    onnx.TensorProto.COMPLEX64: 8, onnx.TensorProto.COMPLEX128: 16,
    onnx.TensorProto.BFLOAT16: 2,
}


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _graphs(g)


def all_tensors(proto: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every TensorProto of the model: initializers, sparse halves, attribute tensors."""
    for g in _graphs(proto.graph):
        yield from g.initializer
        for sparse in g.sparse_initializer:
            yield sparse.values
            yield sparse.indices
        for node in g.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors
                if attr.HasField("sparse_tensor"):
                    yield attr.sparse_tensor.values
                    yield attr.sparse_tensor.indices
                for sp in attr.sparse_tensors:
                    yield sp.values
                    yield sp.indices


def declared_nbytes(tensor: onnx.TensorProto) -> int | None:
    """Bytes the tensor's dims and dtype call for (None for strings/unknown types)."""
    item = _ITEMSIZE.get(tensor.data_type)
    if item is None:
        return None
    return math.prod(int(d) for d in tensor.dims) * item


def _fail(source: str, tensor: onnx.TensorProto, message: str) -> ModelLoadError:
    return ModelLoadError(f"{source}: tensor {tensor.name!r}: {message}")


def check_declared_sizes(proto: onnx.ModelProto, source: str) -> None:
    """Negative dims, tensors over the cap, raw data of the wrong length: refused."""
    for tensor in all_tensors(proto):
        if any(int(d) < 0 for d in tensor.dims):
            raise _fail(source, tensor, f"negative dimension in {list(tensor.dims)}")
        nbytes = declared_nbytes(tensor)
        if nbytes is None:
            continue
        if nbytes > MAX_TENSOR_BYTES:
            raise _fail(source, tensor, f"dims {list(tensor.dims)} make "
                        f"{human_bytes(nbytes)}, over the limit of "
                        f"{human_bytes(MAX_TENSOR_BYTES)}")
        if (tensor.data_location != onnx.TensorProto.EXTERNAL and tensor.HasField("raw_data")
                and len(tensor.raw_data) != nbytes):
            raise _fail(source, tensor, f"holds {len(tensor.raw_data)} bytes of data, its "
                        f"dims {list(tensor.dims)} need {nbytes}")


def _int_field(info: dict[str, str], key: str, tensor: onnx.TensorProto, source: str
               ) -> int | None:
    if key not in info:
        return None
    try:
        value = int(info[key])
    except ValueError:
        raise _fail(source, tensor, f"external data {key} {info[key]!r} is not a number") \
            from None
    if value < 0:
        raise _fail(source, tensor, f"external data {key} {value} is negative")
    return value


def _read_one(tensor: onnx.TensorProto, root: Path, source: str) -> Path:
    info = {e.key: e.value for e in tensor.external_data}
    location = info.get("location", "")
    if not location:
        raise _fail(source, tensor, "external data without a location")
    if "\x00" in location:
        raise _fail(source, tensor, f"external data location {location!r} contains a NUL byte")
    target = (root / location).resolve()
    if os.path.isabs(location) or root not in target.parents:
        raise _fail(source, tensor, f"external data {location!r} lies outside the model's "
                    "folder")
    try:
        st = os.stat(target)
    except OSError:
        raise _fail(source, tensor, f"external data file {location!r} missing") from None
    if not stat.S_ISREG(st.st_mode):
        raise _fail(source, tensor, f"external data {location!r} is not a regular file")
    offset = _int_field(info, "offset", tensor, source) or 0
    length = _int_field(info, "length", tensor, source)
    expected = declared_nbytes(tensor)
    if expected is None:
        raise _fail(source, tensor, "external data of this dtype is not supported")
    if length is None:
        length = expected
    if length != expected:
        raise _fail(source, tensor, f"external data length {length} != {expected} bytes its "
                    f"dims {list(tensor.dims)} need")
    if length > MAX_TENSOR_BYTES:
        raise _fail(source, tensor, f"external data of {human_bytes(length)} is over the limit "
                    f"of {human_bytes(MAX_TENSOR_BYTES)}")
    if offset + length > st.st_size:
        raise _fail(source, tensor, f"external data {location!r} has {st.st_size} bytes, the "
                    f"tensor needs {length} at offset {offset}")
    try:
        with open(target, "rb") as fh:
            fh.seek(offset)
            data = fh.read(length)
    except OSError as exc:
        raise _fail(source, tensor, f"cannot read external data {location!r}: "
                    f"{exc.strerror or exc}") from None
    if len(data) != length:
        raise _fail(source, tensor, f"external data {location!r} is shorter than declared")
    tensor.raw_data = data
    del tensor.external_data[:]
    tensor.data_location = onnx.TensorProto.DEFAULT
    return target


def load_external(proto: onnx.ModelProto, base: Path, source: str) -> list[Path]:
    """Inline every external tensor from files under `base`; return the files read."""
    root = base.resolve()
    files: dict[str, Path] = {}
    for tensor in all_tensors(proto):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            path = _read_one(tensor, root, source)
            files[str(path)] = path
    return list(files.values())
