"""Python API: the same job as the CLI, returning the model and the report.

    from compress_ir.api import compress
    result = compress("model.onnx", "channel-prune{ratio=0.5}", output="small.onnx")
    print(result.report["ratios"]["macs"])

With `target=` ("x86", "arm:rpi4", "cuda:sm_80", or a TVM target dict) the
compressed model is also compiled with TVM into an artifact directory, verified
against onnxruntime where it can run, and described in `report["target"]`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

import compress_ir.passes  # noqa: F401 - registers the passes
from compress_ir.core import numeric
from compress_ir.core.calibration import CalibrationSet, ImageOptions, load_calibration
from compress_ir.core.errors import UsageError
from compress_ir.core.model import Model
from compress_ir.core.passes import Pass, PassContext, PassResult
from compress_ir.core.pipeline import build_passes, format_pipeline, run_pipeline
from compress_ir.core.report import build_report
from compress_ir.core.verify import output_shapes, verify_model
from compress_ir.frontends.onnx import load_onnx, save_onnx
from compress_ir.targets import TargetSpec, resolve_target

if TYPE_CHECKING:
    from compress_ir.backend import Artifact, BuildOptions

DEFAULT_TOLERANCE = 1e-4


@dataclass
class CompressResult:
    model: onnx.ModelProto
    report: dict[str, Any]
    artifact: Artifact | None = None


def _metrics(proto: onnx.ModelProto) -> dict[str, int]:
    from compress_ir.core.metrics import model_metrics

    return model_metrics(proto)


def compress(
    model: str | os.PathLike | onnx.ModelProto | Model,
    pipeline: str | list[str] | None,
    output: str | os.PathLike | None = None,
    check: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
    seed: int = 0,
    calibration: str | CalibrationSet | None = None,
    calib_samples: int | None = None,
    image_options: ImageOptions | None = None,
    target: str | dict | TargetSpec | None = None,
    artifact: str | os.PathLike | None = None,
    build_options: BuildOptions | None = None,
    benchmark: bool = False,
    benchmark_repeat: int = 20,
    sizes: bool | None = None,
    sparse_storage: bool = False,
) -> CompressResult:
    """Load, run the pipeline (verifying each transform), optionally write the result.

    With `check`, every pass that declares a numeric reference is compared against
    it in onnxruntime on seeded random inputs; a mismatch raises
    NumericMismatchError (CLI exit code 1) and nothing is written. `calibration` is
    a `--calib` spec (`random[:N]`, .npy/.npz, image folder) or a CalibrationSet.

    `target` compiles the result into `artifact` (default `<output or input stem>.
    <target>` next to the output, else the input; colons become dashes). The build
    is compared with onnxruntime unless `check` is off or `build_options.verify` is
    False; a mismatch raises NumericMismatchError and leaves no artifact.
    `benchmark` times onnxruntime (original, compressed) and the artifact.

    `sizes` adds `report["sizes"]` (dense / CSR / BSR / Deep-Compression bytes per
    layer, measured by encoding); None means "when the pipeline sparsifies or shares
    weights" since encoding costs ~1 s per million weights. `sparse_storage` writes
    sparse weights as ONNX `sparse_initializer`s (smaller files; runtimes densify them).
    """
    no_passes = pipeline is None or (isinstance(pipeline, list | tuple) and not pipeline)
    if no_passes and target is None:
        raise UsageError("give a pipeline (--pass) or a target (--target)")
    passes: list[Pass] = [] if no_passes else build_passes(pipeline)
    spec = resolve_target(target) if target is not None else None
    if benchmark and spec is None:
        raise UsageError("--benchmark needs --target")
    ir = model if isinstance(model, Model) else load_onnx(model)
    source = ir.source or "<model>"
    before_proto = ir.to_proto()
    expected = output_shapes(before_proto)

    def verify(m: Model) -> None:
        verify_model(m, expected)

    def numeric_check(p: Pass, result: PassResult) -> dict[str, Any]:
        err = numeric.compare(result.model.to_proto(), result.reference, seed=seed)
        return {"pass": p.name, "against": "reference", "rel_error": err,
                "tolerance": tolerance, "ok": bool(err <= tolerance)}

    calib = calibration
    if isinstance(calibration, str):
        calib = load_calibration(calibration, before_proto, calib_samples, seed, image_options)
    ctx = PassContext(seed=seed, calibration=calib, original=before_proto, target=spec)
    result = run_pipeline(ir, passes, ctx, verify, numeric_check if check else None)
    proto = result.model.to_proto()
    report = build_report(
        source=source,
        output=None if output is None else str(output),
        pipeline=format_pipeline(passes),
        before=_metrics(before_proto),
        after=_metrics(proto),
        passes=[{"name": p.name, "spec": p.spec(), "modified": r.modified,
                 "stats": r.stats, "details": r.details} for p, r in result.results],
        checks=result.checks,
    )
    if sizes or (sizes is None and any(p.changes_storage for p in passes)):
        from compress_ir.passes.analysis.size_report import size_report

        report["sizes"] = size_report(proto)
    art = None
    if spec is not None:
        base = output if output is not None else ir.source
        if artifact is None and not base:
            raise UsageError("give an artifact directory (--artifact) for a model without a path")
        options = build_options or _default_build_options(check, tolerance, seed)
        art, section = _build_target(before_proto, proto, spec, artifact, base, options,
                                     benchmark, benchmark_repeat)
        report["target"] = section
    if output is not None:  # after the build: a failed compile check writes nothing
        save_onnx(proto, output, sparse=sparse_storage)
    return CompressResult(model=proto, report=report, artifact=art)


def _default_build_options(check: bool, tolerance: float, seed: int) -> BuildOptions:
    from compress_ir.backend import BuildOptions

    return BuildOptions(verify=check, tolerance=tolerance, seed=seed)


def _build_target(
    original: onnx.ModelProto, proto: onnx.ModelProto, spec: TargetSpec,
    artifact: str | os.PathLike | None, base: str | os.PathLike | None,
    options: BuildOptions, benchmark: bool, repeat: int,
) -> tuple[Artifact, dict[str, Any]]:
    """Build, verify and optionally benchmark the compressed model for `spec`."""
    from compress_ir.backend import build, default_artifact_dir
    from compress_ir.backend.benchmark import benchmark as run_benchmark
    from compress_ir.backend.report import target_section

    out = Path(artifact) if artifact is not None else default_artifact_dir(base, spec)
    art = build(proto, spec, out, options)
    bench = None
    if benchmark:
        bench = run_benchmark(original, proto, art, repeat=repeat, seed=options.seed,
                              rpc=options.rpc)
    return art, target_section(spec, art, bench)
