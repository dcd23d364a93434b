"""Lazy reads and streamed, atomic writes of ONNX external-data tensors.

The graph (without weights) is small and loaded whole; each weight is read on demand
from its (location, offset, length) so peak memory is one tensor, not the model.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from compress_ir.core.errors import ModelLoadError, OutputError

ALIGN = 4096  # page-aligned offsets let onnxruntime mmap the tensors


def _external(tensor: onnx.TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in tensor.external_data}


def is_external(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == onnx.TensorProto.EXTERNAL


def external_bytes(model: onnx.ModelProto) -> int:
    """Total bytes of the model's weights that live in external data."""
    return sum(int(_external(t).get("length", 0)) for t in model.graph.initializer
               if is_external(t))


def load_graph(path: str | os.PathLike) -> onnx.ModelProto:
    """The model without its external weights (their protos keep location/offset)."""
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - any parse failure is a load error
        raise ModelLoadError(f"{path}: cannot read model: {exc}") from None


def external_locations(model: onnx.ModelProto, model_path: str | os.PathLike) -> list[Path]:
    """The external-data files `model` (at `model_path`) reads, resolved."""
    base = Path(model_path).resolve().parent
    return sorted({(base / _external(t)["location"]).resolve()
                   for t in model.graph.initializer if is_external(t)})


class TensorReader:
    """Reads initializers of a model loaded with `load_graph`, one at a time."""

    def __init__(self, model_path: str | os.PathLike) -> None:
        self.base = Path(model_path).resolve().parent

    def read(self, tensor: onnx.TensorProto) -> np.ndarray:
        if not is_external(tensor):
            return numpy_helper.to_array(tensor)
        info = _external(tensor)
        path = (self.base / info["location"]).resolve()
        if self.base not in path.parents:
            raise ModelLoadError(f"tensor {tensor.name}: external location "
                                 f"{info['location']!r} leaves the model's folder")
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))
        count = int(np.prod(tensor.dims, dtype=np.int64))
        offset = int(info.get("offset", 0))
        length = int(info.get("length", count * dtype.itemsize))
        if length != count * dtype.itemsize:
            raise ModelLoadError(f"tensor {tensor.name}: length {length} does not match "
                                 f"shape {list(tensor.dims)}")
        with open(path, "rb") as f:
            f.seek(offset)
            data = np.fromfile(f, dtype=dtype, count=count)
        if data.size != count:
            raise ModelLoadError(f"tensor {tensor.name}: {path.name} is truncated")
        return data.reshape(tuple(tensor.dims))


class TensorWriter:
    """Appends tensors to one external-data file next to the output model.

    Both files are written under temporary names and renamed into place by `commit`
    (data first, then the model), so a failed run leaves no half-written output.
    """

    def __init__(self, out_path: str | os.PathLike, data_name: str | None = None) -> None:
        self.out = Path(out_path).resolve()
        self.data_path = self.out.parent / data_name if data_name else \
            self.data_path_for(self.out)
        self.data_name = self.data_path.name
        self._tmp = self.out.parent / f".{self.data_name}.{os.getpid()}.tmp"
        self._f = open(self._tmp, "wb")  # noqa: SIM115 - closed in commit/abort
        self.offset = 0

    @staticmethod
    def data_path_for(out_path: str | os.PathLike) -> Path:
        """Where the default writer for `out_path` puts its external data."""
        out = Path(out_path).resolve()
        return out.parent / (out.name + ".data")

    def write(self, tensor: onnx.TensorProto, array: np.ndarray) -> None:
        """Store `array` as `tensor`'s value in the data file (tensor proto updated)."""
        array = np.asarray(array, dtype=onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))
        if tuple(array.shape) != tuple(tensor.dims):
            raise ValueError(f"{tensor.name}: shape {array.shape} != {list(tensor.dims)}")
        pad = -self.offset % ALIGN
        if pad:
            self._f.write(b"\0" * pad)
            self.offset += pad
        start = self.offset
        array.tofile(self._f)
        self.offset += array.nbytes
        tensor.ClearField("raw_data")
        for field in ("float_data", "int32_data", "int64_data", "double_data",
                      "uint64_data", "string_data"):
            tensor.ClearField(field)
        del tensor.external_data[:]
        tensor.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", self.data_name), ("offset", str(start)),
                           ("length", str(array.nbytes))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value

    def commit(self, model: onnx.ModelProto) -> None:
        """Flush the data, then write the model proto; rename both into place."""
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        tmp_model = self.out.parent / f".{self.out.name}.{os.getpid()}.tmp"
        try:
            with open(tmp_model, "wb") as f:
                f.write(model.SerializeToString())
                f.flush()
                os.fsync(f.fileno())
            os.replace(self._tmp, self.data_path)
            os.replace(tmp_model, self.out)
        except OSError as exc:
            tmp_model.unlink(missing_ok=True)
            self.abort()
            raise OutputError(f"{self.out}: cannot write output: {exc}") from None

    def abort(self) -> None:
        if not self._f.closed:
            self._f.close()
        self._tmp.unlink(missing_ok=True)
