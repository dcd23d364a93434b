"""Calibration data: load it, batch it, and capture intermediate activations.

`--calib` accepts `random[:N]` (a smoke run), an `.npy` file (the model's single
input), an `.npz` file (arrays keyed by input name), or a folder of images with a
declared preprocessing. Activations are captured by exposing intermediate tensors
as outputs of an onnxruntime session and streamed batch by batch, so memory is
bounded by one batch plus whatever statistics the caller keeps.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from compress_ir.core import numeric
from compress_ir.core.array_files import is_regular_file, read_npy, read_npz
from compress_ir.core.errors import ModelRunError, UsageError
from compress_ir.core.feeds import realistic_inputs
from compress_ir.core.limits import MAX_CALIB_BYTES, MAX_IMAGE_PIXELS, human_bytes
from compress_ir.core.shapes import Shapes, resolve_shapes
from compress_ir.core.validate import random_count

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".webp"}


@dataclass(frozen=True)
class ImageOptions:
    """How to turn image files into the model's input tensor."""

    size: tuple[int, int] | None = None  # (height, width); None: the model's input size
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    scale: float = 1.0 / 255.0  # applied before mean/std
    layout: str = "NCHW"  # or "NHWC"
    channel_order: str = "RGB"  # or "BGR"; "L" for grayscale


@dataclass
class CalibrationSet:
    """Calibration samples by input name; axis 0 indexes samples."""

    arrays: dict[str, np.ndarray]
    source: str

    @property
    def size(self) -> int:
        return int(next(iter(self.arrays.values())).shape[0])

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, self.size, batch_size):
            yield {k: v[start : start + batch_size] for k, v in self.arrays.items()}


def _check_arrays(arrays: dict[str, np.ndarray], proto: onnx.ModelProto, source: str) -> None:
    specs = numeric.graph_inputs(proto)
    missing = set(specs) - set(arrays)
    if missing:
        raise UsageError(f"{source}: no calibration data for input(s) {sorted(missing)}")
    for name, arr in arrays.items():
        if arr.ndim == 0:
            raise UsageError(f"{source}: {name!r} is a scalar; expected samples on axis 0")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise UsageError(f"{source}: {name!r} holds NaN or infinite values")
    sizes = {a.shape[0] for a in arrays.values()}
    if len(sizes) != 1 or 0 in sizes:
        raise UsageError(f"{source}: inputs disagree on the number of samples {sorted(sizes)}")
    for name, (dims, dtype) in specs.items():
        arr = arrays[name]
        if arr.ndim != len(dims) or any(
            isinstance(d, int) and d > 0 and i > 0 and arr.shape[i] != d for i, d in enumerate(dims)
        ):
            raise UsageError(
                f"{source}: input {name!r} expects shape {dims} (samples on axis 0), "
                f"got {list(arr.shape)}"
            )
        arrays[name] = arr.astype(dtype, copy=False)


def _random(proto: onnx.ModelProto, count: int, seed: int,
            shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """`count` realistic samples (feeds.py: ids in range, 0/1 masks) at the resolved shapes."""
    wanted = {name: (count, *shape[1:]) for name, shape in shapes.items()}
    total = sum(math.prod(shape) * 8 for shape in wanted.values())
    if total > MAX_CALIB_BYTES:
        raise UsageError(f"--calib random:{count}: {count} samples would take "
                         f"{human_bytes(total)}, over the limit of {human_bytes(MAX_CALIB_BYTES)}")
    return realistic_inputs(proto, wanted, seed)


def _images(folder: Path, proto: onnx.ModelProto, opts: ImageOptions,
            shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    try:
        from PIL import Image  # noqa: F401 - fail early with the extra to install
    except ImportError:
        raise UsageError(
            "image folders need Pillow: pip install 'compress-ir[images]'"
        ) from None
    specs = numeric.graph_inputs(proto)
    if len(specs) != 1:
        raise UsageError(f"{folder}: an image folder can feed a single-input model only")
    name, (_, dtype) = next(iter(specs.items()))
    dims = shapes[name]
    if len(dims) != 4:
        raise UsageError(f"{folder}: an image folder feeds a 4-D input; {name!r} has dims "
                         f"{list(specs[name][0])}")
    # regular files only: a FIFO named x.png would block the reader forever
    files = sorted(p for p in folder.iterdir()
                   if p.suffix.lower() in IMAGE_SUFFIXES and is_regular_file(p))
    if not files:
        raise UsageError(f"{folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    nchw = opts.layout.upper() == "NCHW"
    height, width = opts.size or ((dims[2], dims[3]) if nchw else (dims[1], dims[2]))
    if not all(isinstance(v, int) and v > 0 for v in (height, width)):
        raise UsageError(f"{folder}: the model's input size is not fixed ({height}x{width}); "
                         "give --calib-size HxW")
    mode = "L" if opts.channel_order == "L" else "RGB"
    per_image = int(height) * int(width) * (1 if mode == "L" else 3) * 4
    if per_image * len(files) > MAX_CALIB_BYTES:
        raise UsageError(f"{folder}: {len(files)} images of {height}x{width} would take "
                         f"{human_bytes(per_image * len(files))}, over the limit")
    images = []
    for path in files:
        arr = _read_image(path, mode, int(width), int(height))
        arr = arr[..., None] if arr.ndim == 2 else arr
        if opts.channel_order == "BGR":
            arr = arr[..., ::-1]
        arr = (arr * opts.scale - np.asarray(opts.mean, np.float32)) / np.asarray(
            opts.std, np.float32
        )
        images.append(arr.transpose(2, 0, 1) if nchw else arr)
    return {name: np.stack(images).astype(dtype)}


def _read_image(path: Path, mode: str, width: int, height: int) -> np.ndarray:
    """Decode one image, refusing decompression bombs and anything Pillow cannot read."""
    import warnings

    from PIL import Image

    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img = img.convert(mode).resize((width, height))
                return np.asarray(img, dtype=np.float32)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UsageError(f"{path}: image is larger than {MAX_IMAGE_PIXELS} pixels "
                         "(decompression bomb?)") from None
    except MemoryError:
        raise UsageError(f"{path}: image too large to decode") from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types on corrupt files
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise UsageError(f"{path}: cannot read image ({first})") from None


def load_calibration(
    spec: str,
    proto: onnx.ModelProto,
    samples: int | None = None,
    seed: int = 0,
    image: ImageOptions | None = None,
    input_shapes: Shapes | None = None,
) -> CalibrationSet:
    """Load calibration data described by `spec` for the inputs of `proto`.

    `random[:N]` and image folders need concrete shapes: `input_shapes` where
    given, else the resolved assumption for each symbolic dim (see shapes.py).
    """
    if samples is not None and samples < 1:
        raise UsageError(f"--calib-samples must be >= 1, got {samples}")
    if spec == "random" or spec.startswith("random:"):
        count = random_count(spec) or samples or 64
        shapes = resolve_shapes(proto, input_shapes).inputs
        return CalibrationSet(_random(proto, count, seed, shapes), spec)
    if "\x00" in spec:
        raise UsageError(f"--calib {spec!r}: a path cannot contain a NUL byte")
    path = Path(spec)
    if path.is_dir():
        shapes = resolve_shapes(proto, input_shapes).inputs
        arrays = _images(path, proto, image or ImageOptions(), shapes)
    elif path.suffix == ".npy" and path.exists():
        specs = numeric.graph_inputs(proto)
        if len(specs) != 1:
            raise UsageError(f"{spec}: a .npy file can feed a single-input model only; use .npz")
        arrays = {next(iter(specs)): read_npy(path)}
    elif path.suffix == ".npz" and path.exists():
        arrays = read_npz(path)
        specs = numeric.graph_inputs(proto)
        if len(arrays) == 1 and len(specs) == 1 and next(iter(specs)) not in arrays:
            arrays = {next(iter(specs)): next(iter(arrays.values()))}
    else:
        raise UsageError(
            f"--calib {spec!r}: expected 'random[:N]', a .npy/.npz file or an image folder"
        )
    _check_arrays(arrays, proto, spec)
    if samples is not None:
        arrays = {k: v[:samples] for k, v in arrays.items()}
    return CalibrationSet(arrays, spec)


CHECK_SAMPLES = 4  # calibration samples the numeric check runs on


def check_batches(
    calib: CalibrationSet, proto: onnx.ModelProto, samples: int = CHECK_SAMPLES
) -> list[dict[str, np.ndarray]]:
    """The first `samples` calibration samples as feed dicts (the model's static batch wins)."""
    head = CalibrationSet({k: v[:samples] for k, v in calib.arrays.items()}, calib.source)
    return list(head.batches(batch_size_for(proto, samples)))


def batch_size_for(proto: onnx.ModelProto, wanted: int) -> int:
    """The model's static batch size if it has one (e.g. 1), else `wanted`."""
    for dims, _ in numeric.graph_inputs(proto).values():
        if dims and isinstance(dims[0], int) and dims[0] > 0:
            return dims[0]
    return wanted


class ActivationCapture:
    """Runs a model with extra outputs and streams the requested tensors per batch."""

    def __init__(self, proto: onnx.ModelProto, tensors: list[str]) -> None:
        work = onnx.ModelProto()
        work.CopyFrom(proto)
        existing = {o.name for o in work.graph.output}
        known = {vi.name: vi for vi in (*work.graph.value_info, *work.graph.input)}
        for name in tensors:
            if name in existing:
                continue
            vi = onnx.ValueInfoProto()
            if name in known:
                vi.CopyFrom(known[name])
            else:
                vi.name = name
            work.graph.output.append(vi)
        self.tensors = list(dict.fromkeys(tensors))
        self.session = numeric.session(work, optimize=True)
        self.proto = proto

    def stream(
        self, calib: CalibrationSet, batch_size: int = 32, desc: str = "calibration"
    ) -> Iterator[dict[str, np.ndarray]]:
        """Yield the requested tensors per batch (a static model batch size wins).

        Progress (batches) shows when the CLI enables it (see compress_ir/logs.py).
        """
        from compress_ir.logs import progress

        size = batch_size_for(self.proto, batch_size)
        total = -(-calib.size // size)
        for feeds in progress(calib.batches(size), total=total, desc=desc, unit="batch"):
            # run([]) would return every output, so nothing requested means nothing run
            try:
                values = self.session.run(self.tensors, feeds) if self.tensors else []
            except numeric.RUN_ERRORS as exc:
                raise ModelRunError(f"calibration data {calib.source}: onnxruntime fails on "
                                    f"it: {numeric.last_line(exc)}") from None
            yield dict(zip(self.tensors, values, strict=True))
