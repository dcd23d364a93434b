"""`--stream auto|on|off`: route a run to a streamed engine, or refuse it clearly.

Engines: `sparsify` magnitude (tensor by tensor, `engine.py`), `sparsify` criterion=obs
(block by block, sequential, needs --calib: `sequential.py`), `channel-prune`
[+ `reconstruct`] (heads and FFN neurons block by block: `blockwise.py`).

auto streams when the model's external data exceeds 2 GiB (protobuf's limit, and the
size where loading everything in memory, then writing it, starts to double the peak).
What the engine cannot do is refused (UsageError, exit 2) rather than silently run
in memory or approximated.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from compress_ir.core.errors import ModelLoadError, UsageError
from compress_ir.logs import LOGGER
from compress_ir.stream.engine import STREAM_MIN_BYTES, StreamReport, stream_sparsify
from compress_ir.stream.external import external_bytes, load_graph

MODES = ("auto", "on", "off")
# sparsify options the engine implements, with the value it implements (defaults of the
# pass); anything else set to another value is refused
_SUPPORTED = {"scope": "layer", "override": (), "exclude": (), "min_size": 0}
# options of the run (CompressOptions) that need the whole model in memory
_IN_MEMORY = ("target", "artifact", "plan", "sparse_storage", "benchmark")


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
    return UsageError(f"--stream: {why}; streamed runs support one sparsify pass "
                      "(scope=layer, N:M or unstructured; criterion=obs with --calib) or "
                      "channel-prune[,reconstruct], and -o "
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
    if options.calib is not None:
        raise _refuse("--calib is used by sparsify criterion=obs only")
    opts = build_steps(options.passes)[0].options
    opts = resolved(opts, calibrated=False)  # criterion=auto without --calib: magnitude
    if opts.criterion != "magnitude":
        raise _refuse(f"sparsify criterion={opts.criterion!r} is not streamed tensor by tensor")
    for key, value in _SUPPORTED.items():
        if getattr(opts, key) != value:
            raise _refuse(f"sparsify {key.replace('_', '-')}={getattr(opts, key)!r}")
    if opts.parsed_pattern.kind == "block":
        raise _refuse("sparsify pattern=block")
    return {"pattern": opts.pattern, "sparsity": opts.sparsity,
            "skip_first": opts.skip_first, "skip_last": opts.skip_last}


def _pipeline(options: Any) -> list[str]:
    from compress_ir.recipe import step_specs

    return [name for name, _ in step_specs(options.passes)]


def _calibration(options: Any) -> Any:
    from compress_ir.core.calibration import load_calibration

    return load_calibration(options.calib, load_graph(options.model), options.calib_samples,
                            options.seed, options.image(), input_shapes=options.input_shapes)


def _common(options: Any) -> None:
    if not options.output:
        raise _refuse("an output file (-o) is required")
    for name in _IN_MEMORY:
        if getattr(options, name, None):
            raise _refuse(f"--{name.replace('_', '-')} needs the model in memory")


def _run_obs(options: Any) -> StreamReport:
    import compress_ir.passes  # noqa: F401 - registers the passes
    from compress_ir.passes.transform.sparsify import resolved
    from compress_ir.recipe import build_steps
    from compress_ir.stream.sequential import stream_obs

    _common(options)
    opts = resolved(build_steps(options.passes)[0].options, calibrated=True)
    for key, value in _SUPPORTED.items():
        if getattr(opts, key) != value:
            raise _refuse(f"sparsify {key.replace('_', '-')}={getattr(opts, key)!r}")
    if opts.parsed_pattern.kind == "block":
        raise _refuse("sparsify pattern=block")
    if options.calib is None:
        raise _refuse("sparsify criterion=obs needs --calib")
    if opts.solver != "obs":  # the pass's default; the streamed engine has OBS only
        logging.getLogger(LOGGER).warning(
            "--stream: sparsify solves with solver=obs (SparseGPT); solver=%s needs an "
            "eigendecomposition per layer and runs in memory only (--stream off)", opts.solver)
        opts = dataclasses.replace(opts, solver="obs")
    return stream_obs(options.model, options.output, _calibration(options), opts,
                      seed=options.seed)


def _run_blockwise(options: Any) -> Any:
    from compress_ir.stream.blockwise import stream_blockwise

    _common(options)
    calib = _calibration(options) if options.calib is not None else None
    return stream_blockwise(options.model, options.output, ",".join(options.passes), calib,
                            seed=options.seed)


def _is_obs(options: Any) -> bool:
    import compress_ir.passes  # noqa: F401 - registers the passes
    from compress_ir.passes.transform.sparsify import resolved
    from compress_ir.recipe import build_steps

    opts = resolved(build_steps(options.passes)[0].options, options.calib is not None)
    return opts.criterion == "obs"  # criterion=auto with --calib is obs, as in memory


def run_streamed(options: Any) -> Any:
    """Run `options` with the streamed engine that fits (StreamReport or
    BlockwiseReport), or UsageError saying why none does."""
    from compress_ir.stream.blockwise import BLOCK_PASSES

    names = _pipeline(options)
    if names and names[0] == "channel-prune" and all(n in BLOCK_PASSES for n in names):
        return _run_blockwise(options)
    if names == ["sparsify"] and _is_obs(options):
        return _run_obs(options)
    return stream_sparsify(options.model, options.output, **sparsify_args(options))


def describe(report: Any, output: str) -> str:
    """One line for the CLI, from what was written."""
    if isinstance(report, StreamReport):
        return (f"streamed sparsify: {len(report.layers)} layers, sparsity "
                f"{report.sparsity:.4f} (counted from the written weights), "
                f"{report.seconds:.1f} s -> {output}")
    kept = report.params_after / report.params_before if report.params_before else 1.0
    return (f"streamed block-wise pruning: {len(report.blocks)} blocks, weight params "
            f"{report.params_after}/{report.params_before} ({kept:.3f}) in the blocks, "
            f"{report.seconds:.1f} s -> {output}")
