"""`--stream auto|on|off`: route a run to the streamed engine, or refuse it clearly.

auto streams when the model's external data exceeds 2 GiB (protobuf's limit, and the
size where loading everything in memory, then writing it, starts to double the peak).
What the engine cannot do is refused (UsageError, exit 2) rather than silently run
in memory or approximated.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compress_ir.core.errors import ModelLoadError, UsageError
from compress_ir.stream.engine import STREAM_MIN_BYTES, StreamReport, stream_sparsify
from compress_ir.stream.external import external_bytes, load_graph

MODES = ("auto", "on", "off")
# sparsify options the engine implements, with the value it implements (defaults of the
# pass); anything else set to another value is refused
_SUPPORTED = {"criterion": "magnitude", "scope": "layer", "override": (), "exclude": (),
              "min_size": 0}
# options of the run (CompressOptions) that need the whole model in memory
_IN_MEMORY = ("target", "artifact", "plan", "calibration", "sparse_storage", "benchmark")


def should_stream(mode: str, model_path: str) -> bool:
    if mode not in MODES:
        raise UsageError(f"--stream must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "off":
        return False
    if mode == "on":
        return True
    path = Path(model_path)
    if path.suffix != ".onnx" or not path.is_file():
        return False  # stdin, other formats: the in-memory path reports on them
    try:
        return external_bytes(load_graph(path)) > STREAM_MIN_BYTES
    except ModelLoadError:
        return False  # the in-memory path gives its own, fuller message


def _refuse(why: str) -> UsageError:
    return UsageError(f"--stream: {why}; streamed runs support one sparsify pass with "
                      "criterion=magnitude, scope=layer (N:M or unstructured) and -o "
                      "(or give --stream off to load the whole model in memory)")


def sparsify_args(options: Any) -> dict[str, Any]:
    """stream_sparsify keyword arguments for `options`, or UsageError saying why not."""
    import compress_ir.passes  # noqa: F401 - registers the passes
    from compress_ir.passes.transform.sparsify import resolved
    from compress_ir.recipe import build_steps, step_specs

    if not options.output:
        raise _refuse("an output file (-o) is required")
    for name in _IN_MEMORY:
        if getattr(options, name, None):
            raise _refuse(f"--{name.replace('_', '-')} needs the model in memory")
    names = [name for name, _ in step_specs(options.passes)]
    if names != ["sparsify"]:
        raise _refuse(f"pipeline {names} is not streamable")
    opts = build_steps(options.passes)[0].options
    opts = resolved(opts, calibrated=False)  # criterion=auto: no calibration here, magnitude
    for key, value in _SUPPORTED.items():
        if getattr(opts, key) != value:
            raise _refuse(f"sparsify {key.replace('_', '-')}={getattr(opts, key)!r}")
    if opts.parsed_pattern.kind == "block":
        raise _refuse("sparsify pattern=block")
    return {"pattern": opts.pattern, "sparsity": opts.sparsity,
            "skip_first": opts.skip_first, "skip_last": opts.skip_last}


def run_streamed(options: Any) -> StreamReport:
    return stream_sparsify(options.model, options.output, **sparsify_args(options))
