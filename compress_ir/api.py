"""Python API: the same job as the CLI, returning the model and the report.

    from compress_ir.api import CompressOptions, compress
    result = compress("model.onnx", "channel-prune{ratio=0.5}", output="small.onnx")
    print(result.report["ratios"]["macs"])
    # the options object the CLI and recipe files build:
    opts = CompressOptions(passes=[{"channel-prune": {"target-macs": 0.5}}],
                           gates=["fidelity >= 0.98"], report=["r.json", "r.html"])
    result = compress("model.onnx", opts)

With `target=` ("x86", "arm:rpi4", "cuda:sm_80", or a TVM target dict) the
compressed model is also compiled with TVM into an artifact directory, verified
against onnxruntime where it can run, and described in `report["target"]`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

import compress_ir.passes  # noqa: F401 - registers the passes
from compress_ir.core import numeric, validate
from compress_ir.core.boundary import library_error
from compress_ir.core.calibration import (
    CalibrationSet,
    ImageOptions,
    check_batches,
    load_calibration,
)
from compress_ir.core.errors import (
    EXIT_NUMERIC,
    CompressIRError,
    ModelRunError,
    OutputError,
    UsageError,
)
from compress_ir.core.feeds import input_kinds
from compress_ir.core.files import write_atomic
from compress_ir.core.model import Model
from compress_ir.core.passes import Pass, PassContext, PassResult
from compress_ir.core.pipeline import format_pipeline, run_pipeline
from compress_ir.core.plan import plan_bytes, plan_document
from compress_ir.core.report import SCHEMA_VERSION, build_report
from compress_ir.core.safety import Commit, Destination, OutputPlan, means_stdout
from compress_ir.core.shapes import ShapePlan, resolve_shapes
from compress_ir.core.verify import output_shapes, verify_model
from compress_ir.frontends.onnx import load_onnx_with_files, model_bytes, save_onnx
from compress_ir.options import DEFAULT_TOLERANCE, CompressOptions, from_legacy
from compress_ir.targets import TargetSpec, resolve_target

if TYPE_CHECKING:
    from compress_ir.backend import Artifact, BuildOptions

log = logging.getLogger("compress_ir.api")
__all__ = ["DEFAULT_TOLERANCE", "CompressOptions", "CompressResult", "compress", "run"]


@dataclass
class CompressResult:
    model: onnx.ModelProto
    report: dict[str, Any]
    artifact: Artifact | None = None
    plan: dict[str, Any] | None = None  # the pruning plan (see core/plan.py)


def _metrics(proto: onnx.ModelProto, shapes: Mapping[str, Sequence[int]]
             ) -> tuple[dict[str, int], list[str]]:
    from compress_ir.core.metrics import measure

    return measure(proto, shapes)


def _check_feeds(
    proto: onnx.ModelProto, plan: ShapePlan, calib: CalibrationSet | None, seed: int
) -> tuple[list[dict[str, np.ndarray]], str]:
    """What the numeric check runs on: a few calibration samples, else realistic random data."""
    if calib is not None:
        feeds = check_batches(calib, proto)
        count = sum(next(iter(f.values())).shape[0] for f in feeds)
        return feeds, f"calibration {calib.source} ({count} sample{'s' * (count != 1)})"
    return [numeric.random_inputs(proto, seed, plan.inputs)], f"random (seed {seed})"


def _shapes_section(proto: onnx.ModelProto, plan: ShapePlan, check_inputs: str,
                    unresolved: list[str]) -> dict[str, Any]:
    return {**plan.to_dict(), "check_inputs": check_inputs,
            "values": {k: v.describe() for k, v in input_kinds(proto).items()},
            "macs_unresolved": unresolved}


def _probe(proto: onnx.ModelProto, feeds: list[dict[str, np.ndarray]], plan: ShapePlan,
           source: str) -> None:
    """Run the input model once on the check inputs: a misfit is the inputs' fault, said so."""
    try:
        numeric.run(proto, feeds[0])
    except ModelRunError as exc:
        hint = ""
        if plan.assumed:
            example = ", ".join(f"--input-shape {k}={','.join(map(str, v))}"
                                for k, v in plan.inputs.items())
            hint = (f"; symbolic dims were assumed ({plan.describe_assumed()}): give the real "
                    f"shapes, e.g. {example}, or --calib data")
        raise UsageError(f"{source}: the numeric check cannot run the input model: {exc}"
                         f"{hint}") from None


_LEGACY_DEFAULTS: dict[str, Any] = {
    "output": None, "check": True, "tolerance": DEFAULT_TOLERANCE, "seed": 0,
    "calibration": None, "calib_samples": None, "image_options": None, "target": None,
    "artifact": None, "build_options": None, "benchmark": False, "benchmark_repeat": 20,
    "sizes": None, "sparse_storage": False, "input_shapes": None, "plan": None,
}


def compress(
    model: str | os.PathLike | onnx.ModelProto | Model | None,
    pipeline: str | list[Any] | CompressOptions | None = None,
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
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    plan: str | os.PathLike | None = None,
    *,
    options: CompressOptions | None = None,
) -> CompressResult:
    """Load, run the pipeline (verifying each transform), optionally write the result.

    Preferred form: `compress(model, CompressOptions(...))` (or `options=`), the same
    object the CLI and recipe files build; `model=None` takes `options.model`. The
    keyword form below is kept as a thin wrapper. `pipeline` is text, a list of texts,
    or a list of `{pass-name: {option: value}}` steps.

    With `check`, every pass that declares a numeric reference is compared against
    it in onnxruntime on the first few calibration samples when `calibration` is
    given, else on seeded realistic random inputs (`feeds.py`); a mismatch raises
    NumericMismatchError (CLI exit code 1) and the model is not written (the reports
    in `options.report` are, with `status: check-failed`). `calibration` is
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

    `input_shapes` (input name -> dims, `--input-shape`) fixes symbolic dims for the
    check, the MACs, random calibration data and the TVM build. Without it, the
    calibration data's shapes are used, and any other symbolic dim is assumed (batch
    1, sequence 128, spatial 224); `report["shapes"]` says which and where from.

    `plan` writes the pruning plan (groups, module paths, kept/removed indices,
    scores; see `compress_ir.core.plan`) there, atomically, after the output; the
    plan is also returned as `result.plan` whenever a channel-prune removed channels.

    Gates (`options.gates`, `require_verified`) that fail raise GateFailedError (exit 4)
    after the model and the reports are written; it carries `.result`.
    """
    legacy = {"output": output, "check": check, "tolerance": tolerance, "seed": seed,
              "calibration": calibration, "calib_samples": calib_samples,
              "image_options": image_options, "target": target, "artifact": artifact,
              "build_options": build_options, "benchmark": benchmark,
              "benchmark_repeat": benchmark_repeat, "sizes": sizes,
              "sparse_storage": sparse_storage, "input_shapes": input_shapes, "plan": plan}
    if pipeline is not None and not isinstance(pipeline, str | list | tuple | CompressOptions):
        raise UsageError(f"pipeline must be text, a list of steps or a CompressOptions, got "
                         f"{type(pipeline).__name__}")
    if isinstance(pipeline, CompressOptions):
        if options is not None:
            raise UsageError("compress(): give the options once")
        options, pipeline = pipeline, None
    if options is not None:
        mixed = [k for k, v in legacy.items() if v is not _LEGACY_DEFAULTS[k]
                 and v != _LEGACY_DEFAULTS[k]]
        if pipeline is not None or mixed:
            raise UsageError("compress(): pass either a CompressOptions or keyword options, "
                             f"not both (got {', '.join(mixed or ['pipeline'])})")
    else:
        try:
            options = from_legacy(pipeline, **legacy)
        except CompressIRError:
            raise
        except Exception as exc:  # noqa: BLE001 - the API raises only library errors
            raise _as_library_error(exc) from exc
    return run(model, options)


def run(model: str | os.PathLike | onnx.ModelProto | Model | None, options: CompressOptions
        ) -> CompressResult:
    """Run `options` on `model`; the reports in `options.report` are written in any case.

    On failure the exception carries `.report` (its `status` says check-failed or
    error, `error` the message) after the report files are written.

    Output paths (`output`, `report`, `plan`, `artifact`, a pass's `plot`/`dump`) are checked
    before any work: none may be an input, its external data, another output or inside
    the artifact folder (UsageError/OutputError; then no report is written either).
    The model, artifact, plan, plots and reports are committed together at the end.

    Raises only compress-ir errors: UsageError (bad value, unsafe or unwritable path),
    ModelLoadError / UnsupportedModelError (invalid or unsupported model, a resource
    limit), NumericMismatchError (a check failed; names the pass), PassError,
    GateFailedError, InternalError (a bug; the original exception is `__cause__`).
    KeyboardInterrupt passes through after cleanup.
    """
    from compress_ir.gates import GateFailedError
    from compress_ir.report_html import render_report

    model = options.model if model is None else model
    if model is None:
        raise UsageError("no model: give one (or options.model / 'model:' in the recipe)")
    validate.compress_options(options, model)
    # outputs are checked before any work; reports that would hit an input are never written
    plan = OutputPlan()
    if isinstance(model, str | os.PathLike):
        plan.add_input("input model", model)
    reports = [plan.add("--report", path) for path in options.report]
    report = start_report(model, options)
    commit = Commit()  # model, artifact, plan, plots and reports appear together
    try:
        try:
            result, art_path = _execute(model, options, report, plan, commit)
        except GateFailedError:
            commit.commit()  # the run completed: its outputs stand, the gate says no
            raise
        report["status"] = "ok"
        for dest in reports:
            commit.stage_file(dest, render_report(report, dest.path))
        commit.commit()
        if art_path is not None:
            from compress_ir.backend import load_artifact

            result.artifact = load_artifact(art_path)
        return result
    except BaseException as exc:
        commit.rollback()
        if isinstance(exc, SystemExit | GeneratorExit):
            raise
        if not isinstance(exc, CompressIRError | KeyboardInterrupt):
            exc = _as_library_error(exc)
        if isinstance(exc, GateFailedError):
            report["status"] = "gate-failed"
        elif isinstance(exc, CompressIRError) and exc.exit_code == EXIT_NUMERIC:
            report["status"] = "check-failed"
        else:
            report["status"] = "error"
        if isinstance(exc, CompressIRError):
            report["error"] = str(exc)
        elif isinstance(exc, KeyboardInterrupt):
            report["error"] = "interrupted"
        else:
            report["error"] = f"internal error {type(exc).__name__}: {exc}"
        with contextlib.suppress(AttributeError):
            exc.report = report  # type: ignore[attr-defined]
        if not isinstance(exc, OutputError):  # an unsafe output path: write nothing at all
            _write_reports(report, reports, failing=True)
        raise exc from exc.__cause__


def _as_library_error(exc: BaseException) -> CompressIRError:
    """The API raises only compress-ir errors; the original stays chained as __cause__."""
    err = library_error(exc)
    err.__cause__ = exc
    return err


def start_report(model: Any, options: CompressOptions) -> dict[str, Any]:
    """The report's head, known before anything runs (so a failure still has it)."""
    from compress_ir.recipe import resolved_recipe
    from compress_ir.runinfo import sha256_bytes, sha256_file, versions

    if isinstance(model, str | os.PathLike):
        source, digest = str(model), sha256_file(model)
    elif isinstance(model, onnx.ModelProto):
        source, digest = "<model>", sha256_bytes(model.SerializeToString())
    else:
        source, digest = getattr(model, "source", None) or "<model>", None
    recipe = resolved_recipe(options)
    if isinstance(model, str | os.PathLike):
        recipe = {"model": str(model), **{k: v for k, v in recipe.items() if k != "model"}}
    return {
        "schema": SCHEMA_VERSION, "status": "error", "error": None,
        "input": source, "output": None if options.output is None else str(options.output),
        "sha256": {"input": digest, "output": None},
        "versions": versions(), "recipe": recipe,
    }


def _execute(model: Any, options: CompressOptions, report: dict[str, Any],
             plan_out: OutputPlan, commit: Commit) -> tuple[CompressResult, str | None]:
    """Run and stage every output in `commit` (the caller commits); also the artifact path."""
    from compress_ir.gates import parse_gate
    from compress_ir.recipe import build_steps

    for gate in options.gates:  # syntax errors before minutes of work
        parse_gate(gate)
    passes: list[Pass] = build_steps(options.passes) if options.passes else []
    target = options.target
    if not passes and target is None:
        raise UsageError("give a pipeline (--pass) or a target (--target)")
    spec = resolve_target(target) if target is not None else None
    if options.benchmark and spec is None:
        raise UsageError("--benchmark needs --target")
    if options.plan is not None and not any(p.name == "channel-prune" for p in passes):
        raise UsageError("--plan needs a channel-prune pass in the pipeline")
    report["pipeline"] = format_pipeline(passes)
    # a Model the caller passed stays theirs: in-place passes edit a copy
    if isinstance(model, Model):
        ir, files = model.copy(), []
    else:
        ir, files = load_onnx_with_files(model)
    source = ir.source or "<model>"
    for path in files[1:]:
        plan_out.add_input("model's external data", path)
    if isinstance(options.calib, str) and not options.calib.startswith("random"):
        plan_out.add_input("calibration data", options.calib)
    dests = _plan_outputs(plan_out, options, passes, spec, ir)
    restore = [(p, p.options) for p, _, _ in dests["plots"]]
    for p, name, dest in dests["plots"]:  # the pass draws into a temp file, committed later
        p.options = dataclasses.replace(p.options, **{name: str(commit.reserve(dest))})
    try:
        result = _execute_staged(ir, source, options, report, passes, spec, dests, commit,
                                 restore)
    finally:
        for p, opts in restore:  # the report shows the user's plot path
            p.options = opts
    return result, (dests["artifact"].path if dests["artifact"] is not None else None)


# pass options that name a file the pass writes (sensitivity plot, channel-groups dump):
# planned with the other outputs, drawn into a temp file, committed with them
PASS_FILE_OPTIONS = ("plot", "dump")


def _plan_outputs(plan_out: OutputPlan, options: CompressOptions, passes: list[Pass],
                  spec: TargetSpec | None, ir: Model) -> dict[str, Any]:
    """Check every output path against the inputs and each other before any work."""
    dests: dict[str, Any] = {"plots": []}
    for p in passes:
        for name in PASS_FILE_OPTIONS:
            path = getattr(p.options, name, "")
            if isinstance(path, str) and path:
                dests["plots"].append((p, name, plan_out.add(f"{p.name}{{{name}}}", path)))
    output = options.output
    dests["output"] = plan_out.add("-o", output) if output is not None else None
    dests["plan"] = plan_out.add("--plan", options.plan) if options.plan is not None else None
    if options.repro is not None and means_stdout(options.repro):
        raise UsageError("--repro -: the reproducer is an ONNX file; give a path")
    dests["repro"] = plan_out.add("--repro", options.repro) if options.repro else None
    dests["artifact"] = None
    if spec is not None:
        from compress_ir.backend import default_artifact_dir
        from compress_ir.backend.build import check_destination

        base = output if output is not None and not means_stdout(output) else ir.source
        if base and str(base).startswith("<"):  # an in-memory model ("<ModelProto>") has no path
            base = None
        if options.artifact is None and not base:
            raise UsageError("give an artifact directory (--artifact) for a model without a path")
        path = Path(options.artifact) if options.artifact is not None else \
            default_artifact_dir(base, spec)
        dests["artifact"] = plan_out.add("--artifact", path, kind="dir")
        check_destination(path)
    return dests


def _execute_staged(ir: Model, source: str, options: CompressOptions, report: dict[str, Any],
                    passes: list[Pass], spec: TargetSpec | None, dests: dict[str, Any],
                    commit: Commit, restore: list[tuple[Pass, Any]]) -> CompressResult:
    from compress_ir.gates import GateFailedError, evaluate_gates, failure_message

    output, check, seed = options.output, options.check, options.seed
    before_proto = ir.to_proto()
    expected = output_shapes(before_proto)

    def verify(m: Model) -> None:
        verify_model(m, expected)

    given = options.input_shapes or None
    plan = resolve_shapes(before_proto, given)  # validates the user's shapes early
    calib = options.calib
    if isinstance(calib, str):
        calib = load_calibration(calib, before_proto, options.calib_samples, seed,
                                 options.image(), input_shapes=given)
    if calib is not None and not calib.source.startswith("random"):
        plan = resolve_shapes(before_proto, given, calib.arrays)
    check_feeds, check_inputs = _check_feeds(before_proto, plan, calib, seed)
    if check:
        _probe(before_proto, check_feeds, plan, source)

    def numeric_check(p: Pass, result: PassResult) -> dict[str, Any]:
        errors = numeric.output_errors(result.model.to_proto(), result.reference, check_feeds)
        err = max(errors.values(), default=0.0)
        return {"pass": p.name, "against": "reference", "rel_error": err,
                "tolerance": options.tolerance, "ok": bool(err <= options.tolerance),
                "inputs": check_inputs, "per_output": errors}

    ctx = PassContext(seed=seed, calibration=calib, original=before_proto, target=spec,
                      input_shapes=dict(plan.inputs))
    log.info("running %s on %s", report["pipeline"] or "no passes", source)
    def write_repro(p: Pass, given: Model, failed: dict[str, Any]) -> None:
        from compress_ir.core.repro import reproducer

        dest = dests["repro"]
        proto, info = reproducer(p, given, failed)
        data = proto.SerializeToString()
        try:  # written now, whatever happens to the run's other outputs
            if dest.mode == "atomic":
                write_atomic(dest.final, data)
            else:
                with open(dest.final, "wb") as fh:
                    fh.write(data)
        except OSError as exc:  # the numeric failure stays the error reported
            log.warning("cannot write the reproducer %s: %s", dest.path, exc)
            return
        report["repro"] = {"path": dest.path, **info}

    try:
        result = run_pipeline(ir, passes, ctx, verify, numeric_check if check else None,
                              write_repro if dests.get("repro") is not None else None)
    finally:
        for p, opts in restore:  # the report shows the user's plot path
            p.options = opts
    proto = result.model.to_proto()
    profile = {id(p): entry for (p, _), entry in zip(result.results, result.profile,
                                                       strict=False)}
    before, unresolved = _metrics(before_proto, plan.inputs)
    report.update(build_report(
        source=source,
        output=None if output is None else str(output),
        pipeline=format_pipeline(passes),
        before=before,
        after=_metrics(proto, plan.inputs)[0],
        passes=[{"name": p.name, "spec": p.spec(), "modified": r.modified,
                 "stats": r.stats, "details": r.details,
                 **{k: v for k, v in profile.get(id(p), {}).items() if k != "pass"}}
                for p, r in result.results],
        checks=result.checks,
    ))
    report["shapes"] = _shapes_section(before_proto, plan, check_inputs, unresolved)
    report["layers"] = _layer_rows(before_proto, proto, plan.inputs)
    from compress_ir.runinfo import fidelity

    report["fidelity"] = fidelity(before_proto, proto, calib, seed, dict(plan.inputs))
    if options.sizes or (options.sizes is None and any(p.changes_storage for p in passes)):
        from compress_ir.passes.analysis.size_report import size_report

        report["sizes"] = size_report(proto)
    art = None
    if spec is not None:
        build_options = options.build()
        if given and getattr(build_options, "input_shapes", None) is None:
            build_options = dataclasses.replace(build_options, input_shapes=dict(given))
        from compress_ir.logs import phase

        log.info("building for %s", spec.name)
        tuning = options.tune_trials or options.tune_budget
        with phase(f"TVM build for {spec.name}" + (" (tuning)" if tuning else "")):
            staged = commit.stage_dir(dests["artifact"])
            _art, section = _build_target(before_proto, proto, spec, staged, None,
                                          build_options, options.benchmark, options.repeat,
                                          source)
        section["artifact"] = dests["artifact"].path
        report["target"] = section
    if output is not None:  # after the build: a failed compile check writes nothing
        data = model_bytes(proto, sparse=options.sparse_storage)
        commit.stage_file(dests["output"], data)
        from compress_ir.runinfo import sha256_bytes

        report["sha256"]["output"] = sha256_bytes(data)
    plan_doc = plan_document(source, report["pipeline"],
                             [(p.name, r.modified, r.plan) for p, r in result.results])
    if dests["plan"] is not None:
        commit.stage_file(dests["plan"], plan_bytes(plan_doc))
    out = CompressResult(model=proto, report=report, artifact=art,
                         plan=plan_doc if plan_doc["steps"] else None)
    if options.eval:
        report["eval"] = _evaluate(options.eval, proto, None)  # -o is not committed yet
    if options.gates or options.require_verified:
        report["gates"] = evaluate_gates(options.gates, report, options.require_verified)
        message = failure_message(report["gates"])
        if message:
            exc = GateFailedError(message)
            exc.result = out  # type: ignore[attr-defined]
            raise exc
    return out


def _evaluate(spec: str, proto: onnx.ModelProto, output: str | os.PathLike | None
              ) -> dict[str, float]:
    """Run the user's --eval hook on the written output (a temporary file without -o)."""
    import tempfile

    from compress_ir.runinfo import run_eval

    if output is not None and not means_stdout(output):
        return run_eval(spec, str(output))
    with tempfile.TemporaryDirectory(prefix="compress-ir-eval-") as tmp:
        path = Path(tmp) / "model.onnx"
        save_onnx(proto, path)
        return run_eval(spec, str(path))


def _layer_rows(before: onnx.ModelProto, after: onnx.ModelProto,
                shapes: Mapping[str, Sequence[int]]) -> list[dict[str, Any]]:
    """Per weighted layer: MACs and params before and after (joined by node name)."""
    from compress_ir.core.metrics import layer_metrics

    old, new = layer_metrics(before, shapes), layer_metrics(after, shapes)
    rows = []
    for name, b in old.items():
        a = new.get(name, {"macs": 0, "params": 0})
        rows.append({"node": name, "op": b["op"], "macs_before": b["macs"],
                     "macs_after": a["macs"], "params_before": b["params"],
                     "params_after": a["params"]})
    rows += [{"node": name, "op": a["op"], "macs_before": 0, "macs_after": a["macs"],
              "params_before": 0, "params_after": a["params"]}
             for name, a in new.items() if name not in old]
    return rows


def _write_reports(report: dict[str, Any], reports: list[Destination], failing: bool = False
                   ) -> None:
    """Write every requested report (checked paths; devices and stdout written through);
    while failing, a report error must not hide the cause."""
    from compress_ir.report_html import render_report

    for dest in reports:
        try:
            with Commit() as commit:
                commit.stage_file(dest, render_report(report, dest.path))
                commit.commit()
        except (OSError, OutputError) as exc:
            if not failing:
                raise
            log.error("cannot write report %s: %s", dest.path, exc)


def _build_target(
    original: onnx.ModelProto, proto: onnx.ModelProto, spec: TargetSpec,
    artifact: str | os.PathLike | None, base: str | os.PathLike | None,
    options: BuildOptions, benchmark: bool, repeat: int, source: str,
) -> tuple[Artifact, dict[str, Any]]:
    """Build, verify and optionally benchmark the compressed model for `spec`."""
    from compress_ir.backend import build, default_artifact_dir
    from compress_ir.backend.benchmark import benchmark as run_benchmark
    from compress_ir.backend.report import target_section
    from compress_ir.backend.runner import local_run_blocker

    out = Path(artifact) if artifact is not None else default_artifact_dir(base, spec)
    art = build(proto, spec, out, options, source=source)
    bench = None
    # where TVM does not run on the CPU onnxruntime times (an RPC device, this host's GPU),
    # a TVM/onnxruntime ratio says nothing about compression: the original is built alike
    # and timed on that device, in the same session
    on_device = options.rpc or (art.device == "cuda" and local_run_blocker(art.meta) is None)
    if benchmark and on_device:
        import tempfile
        import time

        with tempfile.TemporaryDirectory(prefix="cir-original-") as tmp:
            t0 = time.perf_counter()
            original_art = build(original, spec, Path(tmp) / "original", options,
                                 source=f"{source} (original)")
            seconds = round(time.perf_counter() - t0, 3)
            bench = run_benchmark(original, proto, art, repeat=repeat, seed=options.seed,
                                  rpc=options.rpc, rpc_timeout=options.rpc_timeout,
                                  original_art=original_art)
        bench["original_build_s"] = seconds
    elif benchmark:
        bench = run_benchmark(original, proto, art, repeat=repeat, seed=options.seed,
                              rpc=options.rpc, rpc_timeout=options.rpc_timeout)
    return art, target_section(spec, art, bench)
