"""`CompressOptions`: the one description of a compress-ir run.

Why one object: the CLI, recipe files (`--config recipe.yaml`) and the Python API
used to each carry their own copy of 16+ parameters. Now they all build this
dataclass; each field declares its JSON-Schema type, its help line and its CLI flag,
so the published recipe schema, `--print-config` and the flag overrides are derived
from one declaration and cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from compress_ir.core.errors import UsageError
from compress_ir.core.limits import DEFAULT_RPC_TIMEOUT

DEFAULT_TOLERANCE = 1e-4

# A pipeline step in a recipe: `{"channel-prune": {"ratio": 0.5}}` (or a pipeline text).
PassStep = str | dict[str, dict[str, Any] | None]


def opt(default: Any, help: str, schema: dict[str, Any] | None = None,  # noqa: A002
        flag: str | None = None, recipe: bool = True) -> Any:
    """A CompressOptions field: default, help, JSON-Schema fragment and CLI flag.

    `flag` is the CLI flag (default `--<key with dashes>`); `recipe=False` marks
    API-only fields (Python objects) that have no place in a recipe file.
    """
    meta = {"help": help, "schema": schema or {}, "flag": flag, "recipe": recipe}
    if isinstance(default, list | dict | tuple):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


_STR = {"type": "string"}
_OPT_STR = {"type": ["string", "null"]}
_NUMBERS = {"type": "array", "items": {"type": "number"}, "minItems": 1}


@dataclass
class CompressOptions:
    """Everything a run takes besides the model object (see README: Recipes)."""

    model: str | None = opt(None, "input ONNX file (never modified)", _OPT_STR, flag="MODEL")
    passes: list[PassStep] = opt(
        [], "the pipeline: a list of {pass-name: {option: value}} (or pipeline text)",
        {"type": "array", "items": {"anyOf": [
            {"type": "string", "minLength": 1},
            {"type": "object", "minProperties": 1, "maxProperties": 1,
             "additionalProperties": {"type": ["object", "null"]}}]}},
        flag="--pass")
    input_shapes: dict[str, tuple[int, ...]] = opt(
        {}, "concrete shape per input name, e.g. {x: [1, 3, 640, 640]}: fixes symbolic dims "
        "(shared by name across inputs) for the check, MACs, --calib random and --target; "
        "default: the calibration data's shapes, else assumed (batch 1, sequence 128, "
        "spatial 224; the report lists them)",
        {"type": "object", "additionalProperties": {
            "type": "array", "items": {"type": "integer", "minimum": 1}}},
        flag="--input-shape")
    output: str | None = opt(None, "write the compressed model here (atomically)", _OPT_STR)
    report: list[str] = opt(
        [], "report files: .json, .html, .md; '-' prints the JSON to stdout",
        {"anyOf": [{"type": "string"}, {"type": "array", "items": _STR}]})
    plan: str | None = opt(None, "write the pruning plan here (JSON: per channel group the "
                           "producer/consumer nodes, module paths, kept/removed indices, "
                           "scores; see compress_ir/core/plan.py); needs channel-prune",
                           _OPT_STR)
    repro: str | None = opt(None, "when a numeric check fails, write a reproducer here: the "
                            "failing pass's input cut to the outputs that differ (ONNX; the "
                            "pass in its metadata)", _OPT_STR)
    check: bool = opt(True, "compare each pass with its numeric reference in onnxruntime",
                      {"type": "boolean"}, flag="--no-check")
    tolerance: float = opt(DEFAULT_TOLERANCE, "max error of the numeric check: max |got-want|"
                           " / (|want| + max(std(want), 0.01))",
                           {"type": "number", "minimum": 0})
    seed: int = opt(0, "seed for random check inputs", {"type": "integer"})
    sizes: bool | None = opt(None, "report dense/CSR/BSR/Deep-Compression bytes per layer",
                             {"type": ["boolean", "null"]})
    sparse_storage: bool = opt(False, "write sparse weights as ONNX sparse_initializers",
                               {"type": "boolean"})
    calib: Any = opt(None, "calibration data: random[:N] | x.npy | x.npz | image folder",
                     _OPT_STR)
    calib_samples: int | None = opt(None, "use at most this many calibration samples",
                                    {"type": ["integer", "null"], "minimum": 1})
    calib_size: tuple[int, int] | None = opt(
        None, "image folder: [height, width] to resize to",
        {"type": ["array", "null"], "items": {"type": "integer", "minimum": 1},
         "minItems": 2, "maxItems": 2})
    calib_mean: tuple[float, ...] = opt((0.0,), "image mean (after scaling to [0,1])", _NUMBERS)
    calib_std: tuple[float, ...] = opt((1.0,), "image std", _NUMBERS)
    calib_layout: str = opt("NCHW", "image layout", {"enum": ["NCHW", "NHWC"]})
    calib_color: str = opt("RGB", "image channel order", {"enum": ["RGB", "BGR", "L"]})
    target: Any = opt(None, "compile with TVM: arm | arm:rpi4 | x86 | cuda:sm_80 | ...",
                      {"type": ["string", "object", "null"]})
    artifact: str | None = opt(None, "write the compiled artifact here", _OPT_STR)
    batch: int = opt(1, "value of a dynamic batch dim in the compiled model",
                     {"type": "integer", "minimum": 1})
    tune_trials: int = opt(0, "MetaSchedule trials per task (0: no tuning)",
                           {"type": "integer", "minimum": 0})
    tune_budget: float = opt(0.0, "tune for about this many seconds, the ops with the most "
                             "run time first (0: no budget; --tune-trials then caps "
                             "trials per op)", {"type": "number", "minimum": 0})
    tuning_db: str | None = opt(None, "tuning database reused across runs", _OPT_STR)
    sparse_kernels: float | None = opt(None, "sparse TVM kernels for weights this sparse",
                                       {"type": ["number", "null"], "minimum": 0,
                                        "exclusiveMaximum": 1})
    benchmark: bool = opt(False, "time onnxruntime (original, compressed) and the artifact",
                          {"type": "boolean"})
    repeat: int = opt(20, "timed runs per benchmark entry", {"type": "integer", "minimum": 1})
    rpc: str | None = opt(None, "verify/benchmark on a TVM RPC server (HOST:PORT[:KEY])",
                          _OPT_STR)
    rpc_timeout: float = opt(DEFAULT_RPC_TIMEOUT, "seconds allowed for the RPC connection "
                             "and each remote call", {"type": "number", "exclusiveMinimum": 0})
    gates: list[str] = opt([], "CI gates, e.g. 'macs <= 0.6', 'fidelity >= 0.98' (exit 4)",
                           {"type": "array", "items": {"type": "string", "minLength": 1}},
                           flag="--gate")
    require_verified: bool = opt(False, "fail (exit 4) when the build was not run and checked",
                                 {"type": "boolean"})
    eval: str | None = opt(None, "module:function called with the output model path; returns "
                           "a dict of metrics for gates", _OPT_STR)
    log_file: str | None = opt(None, "write a DEBUG log (TVM, onnxruntime included) here",
                               _OPT_STR)
    # API-only: Python objects that override the flat fields above
    image_options: Any = opt(None, "ImageOptions object (API)", recipe=False)
    build_options: Any = opt(None, "BuildOptions object (API)", recipe=False)

    def __post_init__(self) -> None:
        if isinstance(self.report, str | os.PathLike):
            self.report = [os.fspath(self.report)]
        if isinstance(self.passes, str):
            self.passes = [self.passes]
        self.passes = list(self.passes or [])
        self.gates = list(self.gates or [])
        self.input_shapes = {str(k): tuple(int(d) for d in v)
                             for k, v in (self.input_shapes or {}).items()}
        for name in ("calib_mean", "calib_std"):
            setattr(self, name, tuple(float(v) for v in getattr(self, name)))
        if self.calib_size is not None:
            self.calib_size = tuple(int(v) for v in self.calib_size)
        for name in ("model", "output", "plan", "artifact", "tuning_db", "log_file"):
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                setattr(self, name, os.fspath(value))

    # -- views --------------------------------------------------------------------------

    def image(self) -> Any:
        """The ImageOptions for image-folder calibration (object wins over flat fields)."""
        if self.image_options is not None:
            return self.image_options
        from compress_ir.core.calibration import ImageOptions

        return ImageOptions(size=self.calib_size, mean=self.calib_mean, std=self.calib_std,
                            layout=self.calib_layout, channel_order=self.calib_color)

    def build(self) -> Any:
        """The backend BuildOptions (object wins over flat fields)."""
        if self.build_options is not None:
            return self.build_options
        from compress_ir.backend import BuildOptions

        return BuildOptions(batch=self.batch, tune_trials=self.tune_trials,
                            tune_budget=self.tune_budget,
                            tuning_db=self.tuning_db, sparse_kernels=self.sparse_kernels,
                            verify=self.check, tolerance=self.tolerance, seed=self.seed,
                            rpc=self.rpc, rpc_timeout=self.rpc_timeout,
                            input_shapes=dict(self.input_shapes) or None)

    def to_recipe(self, full: bool = False) -> dict[str, Any]:
        """The recipe mapping (JSON/YAML-ready); defaults left out unless `full`."""
        out: dict[str, Any] = {}
        for f in recipe_fields():
            value = getattr(self, f.name)
            if not full and value == _default(f):
                continue
            out[f.name] = _plain(value)
        return out

    def replace(self, **changes: Any) -> CompressOptions:
        return dataclasses.replace(self, **changes)


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _plain(value: Any) -> Any:
    """JSON-ready: tuples become lists, recursively."""
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def recipe_fields() -> list[dataclasses.Field]:
    """The fields a recipe file may set, in declaration order."""
    return [f for f in dataclasses.fields(CompressOptions) if f.metadata.get("recipe", True)]


def flag_of(f: dataclasses.Field) -> str:
    """The CLI flag that sets field `f`."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def recipe_schema() -> dict[str, Any]:
    """The JSON Schema of recipe files, generated from the CompressOptions fields."""
    props = {}
    for f in recipe_fields():
        prop = dict(f.metadata["schema"])
        prop["description"] = f"{f.metadata['help']} (CLI: {flag_of(f)})"
        props[f.name] = prop
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://compress-ir.invalid/schema/recipe.schema.json",
        "title": "compress-ir recipe",
        "description": "A compress-ir run: every key is also a CLI flag; flags override the file.",
        "type": "object",
        "properties": props,
        "additionalProperties": False,
    }


def from_legacy(pipeline: Any = None, **kwargs: Any) -> CompressOptions:
    """Options from the keyword form of `compress()` (old parameter names)."""
    renames = {"calibration": "calib", "benchmark_repeat": "repeat"}
    values = {renames.get(k, k): v for k, v in kwargs.items()}
    unknown = set(values) - {f.name for f in dataclasses.fields(CompressOptions)}
    if unknown:
        raise UsageError(f"compress(): unknown option(s) {sorted(unknown)}")
    if pipeline is not None:
        values["passes"] = pipeline
    return CompressOptions(**values)
