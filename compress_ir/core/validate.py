"""Input validation shared by the CLI and the Python API: one place for ranges and types.

Each check raises UsageError (exit 2) naming the flag/parameter and the bad value,
so `--seed -1` and `compress(seed=-1)` fail the same way before any work starts.
"""

from __future__ import annotations

import math
import os
from typing import Any

from compress_ir.core.errors import UsageError

MAX_SEED = 2**32 - 1
MAX_IMAGE_SIDE = 16384
PLOT_SUFFIXES = (".png", ".svg", ".pdf")


def finite(value: Any, name: str, minimum: float | None = None,
           above: float | None = None) -> float:
    """A real, finite number (bools and NaN refused), optionally >= minimum / > above."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UsageError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise UsageError(f"{name} must be a finite number, got {value!r}")
    if minimum is not None and v < minimum:
        raise UsageError(f"{name} must be >= {minimum:g}, got {value!r}")
    if above is not None and v <= above:
        raise UsageError(f"{name} must be > {above:g}, got {value!r}")
    return v


def integer(value: Any, name: str, minimum: int | None = None, maximum: int | None = None
            ) -> int:
    """An int in [minimum, maximum] (bools and floats refused)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise UsageError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise UsageError(f"{name} must be <= {maximum}, got {value}")
    return value


def tolerance(value: Any, name: str = "tolerance") -> float:
    return finite(value, name, minimum=0.0)


def seed(value: Any, name: str = "seed") -> int:
    return integer(value, name, 0, MAX_SEED)


def path_like(value: Any, name: str, allow_none: bool = True) -> None:
    """A str or os.PathLike (None where optional); NUL bytes refused."""
    if value is None and allow_none:
        return
    if not isinstance(value, str | os.PathLike):
        raise UsageError(f"{name} must be a path (str or os.PathLike), got "
                         f"{type(value).__name__}")
    text = os.fspath(value)
    if not isinstance(text, str) or not text:
        raise UsageError(f"{name} must be a non-empty text path, got {value!r}")
    if "\x00" in text:
        raise UsageError(f"{name} {text!r}: a path cannot contain a NUL byte")


def random_count(spec: str) -> int | None:
    """N of `random:N` (None for plain `random`); refuses non-integers and N < 1."""
    text = spec.partition(":")[2]
    if not text:
        return None
    try:
        count = int(text, 10)
    except ValueError:
        raise UsageError(f"--calib {spec!r}: N in random:N must be a whole number") from None
    if count < 1:
        raise UsageError(f"--calib {spec!r}: N in random:N must be >= 1")
    return count


def image_options(opts: Any) -> None:
    """Size, mean, std, layout and colour order of image calibration."""
    if opts.size is not None:
        if (not isinstance(opts.size, tuple | list) or len(opts.size) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in opts.size)):
            raise UsageError(f"calib-size must be (height, width), got {opts.size!r}")
        for v in opts.size:
            integer(v, "calib-size", 1, MAX_IMAGE_SIDE)
    for name, values in (("calib-mean", opts.mean), ("calib-std", opts.std)):
        if not isinstance(values, tuple | list) or len(values) not in (1, 3):
            raise UsageError(f"{name} takes 1 or 3 numbers, got {values!r}")
        for v in values:
            finite(v, name)
    for v in opts.std:
        if float(v) == 0.0:
            raise UsageError(f"calib-std must not be 0 (it divides), got {opts.std!r}")
    finite(opts.scale, "image scale", above=0.0)
    if str(opts.layout).upper() not in ("NCHW", "NHWC"):
        raise UsageError(f"calib-layout must be NCHW or NHWC, got {opts.layout!r}")
    if opts.channel_order not in ("RGB", "BGR", "L"):
        raise UsageError(f"calib-color must be RGB, BGR or L, got {opts.channel_order!r}")


def plot_path(value: str, name: str = "plot") -> None:
    """A plot is an image: refusing other suffixes keeps `plot=model.onnx` off the model."""
    if value and not value.lower().endswith(PLOT_SUFFIXES):
        raise UsageError(f"{name}={value!r}: the file name must end in "
                         f"{', '.join(PLOT_SUFFIXES)}")
    if "\x00" in value:
        raise UsageError(f"{name}: a path cannot contain a NUL byte")


def compress_options(options: Any, model: Any) -> None:
    """The values of a CompressOptions that the schema/CLI types do not already bound."""
    from compress_ir.core.model import Model

    if not isinstance(model, str | os.PathLike | Model) and type(model).__name__ != \
            "ModelProto":
        raise UsageError(f"model must be a path, a ModelProto or a Model, got "
                         f"{type(model).__name__}")
    if isinstance(model, str | os.PathLike):
        path_like(model, "model")
    for name in ("output", "artifact", "plan"):
        path_like(getattr(options, name), name)
    for path in options.report:
        path_like(path, "report")
    for name in ("check", "benchmark", "sparse_storage"):
        if not isinstance(getattr(options, name), bool):
            raise UsageError(f"{name} must be True or False, got {getattr(options, name)!r}")
    tolerance(options.tolerance)
    seed(options.seed)
    if options.calib_samples is not None:
        integer(options.calib_samples, "calib_samples", 1)
    integer(options.repeat, "repeat", 1)
    finite(options.rpc_timeout, "rpc_timeout", above=0.0)
    calib = options.calib
    if isinstance(calib, str):
        path_like(calib, "calibration")
        if calib == "random" or calib.startswith("random:"):
            random_count(calib)
    image_options(options.image())
