"""Python API: the same job as the CLI, returning the model and the report.

    from compress_ir.api import compress
    result = compress("model.onnx", "channel-prune{ratio=0.5}", output="small.onnx")
    print(result.report["ratios"]["macs"])
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import onnx

import compress_ir.passes  # noqa: F401 - registers the passes
from compress_ir.core import numeric
from compress_ir.core.calibration import CalibrationSet, ImageOptions, load_calibration
from compress_ir.core.model import Model
from compress_ir.core.passes import Pass, PassContext, PassResult
from compress_ir.core.pipeline import build_passes, format_pipeline, run_pipeline
from compress_ir.core.report import build_report
from compress_ir.core.verify import output_shapes, verify_model
from compress_ir.frontends.onnx import load_onnx, save_onnx

DEFAULT_TOLERANCE = 1e-4


@dataclass
class CompressResult:
    model: onnx.ModelProto
    report: dict[str, Any]


def _metrics(proto: onnx.ModelProto) -> dict[str, int]:
    from compress_ir.core.metrics import model_metrics

    return model_metrics(proto)


def compress(
    model: str | os.PathLike | onnx.ModelProto | Model,
    pipeline: str | list[str],
    output: str | os.PathLike | None = None,
    check: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
    seed: int = 0,
    calibration: str | CalibrationSet | None = None,
    calib_samples: int | None = None,
    image_options: ImageOptions | None = None,
) -> CompressResult:
    """Load, run the pipeline (verifying each transform), optionally write the result.

    With `check`, every pass that declares a numeric reference is compared against
    it in onnxruntime on seeded random inputs; a mismatch raises
    NumericMismatchError (CLI exit code 1) and nothing is written. `calibration` is
    a `--calib` spec (`random[:N]`, .npy/.npz, image folder) or a CalibrationSet.
    """
    passes: list[Pass] = build_passes(pipeline)
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
    ctx = PassContext(seed=seed, calibration=calib, original=before_proto)
    result = run_pipeline(ir, passes, ctx, verify, numeric_check if check else None)
    proto = result.model.to_proto()
    if output is not None:
        save_onnx(proto, output)
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
    return CompressResult(model=proto, report=report)
