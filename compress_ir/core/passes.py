"""Pass infrastructure: a pass is a small registered class with declared options.

Options are a frozen dataclass per pass; the pipeline parser, the CLI help and the
report all read that one declaration (MLIR's `Passes.td` idea, in Python).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import onnx

from compress_ir.core.calibration import CalibrationSet
from compress_ir.core.errors import UsageError
from compress_ir.core.model import Model
from compress_ir.core.registry import Registry

if TYPE_CHECKING:
    from compress_ir.targets import TargetSpec

PASSES: Registry[type[Pass]] = Registry("pass")


def register_pass(name: str):  # noqa: ANN201 - decorator
    """Register a Pass subclass under its pipeline name.

    A pass must say whether it edits its input (`in_place`): the pipeline's checks
    and the caller's copies depend on it, so an undeclared pass is refused here.
    """
    record = PASSES.register(name)

    def deco(cls: type[Pass]) -> type[Pass]:
        if not isinstance(getattr(cls, "in_place", None), bool):
            raise TypeError(f"pass {name!r} ({cls.__name__}) must declare in_place = True "
                            "(edits the model it is given) or False (leaves it untouched)")
        return record(cls)

    return deco


def option(default: Any, help: str) -> Any:  # noqa: A002 - mirrors argparse
    """Declare a pass option: a default plus the help line shown by the CLI."""
    if isinstance(default, list | tuple):
        return field(default_factory=lambda: tuple(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class NoOptions:
    """Options of a pass that takes none."""


T = TypeVar("T")


class Analyses:
    """Analyses of the model a pipeline works on, computed once and kept until a transform
    changes that model (MLIR's analysis manager and preserved analyses).

    Why: several passes read the same analysis (the channel analysis costs most of a
    channel-prune run on ResNet-50); recomputing it per pass is waste, and keeping it
    across an edit would be wrong. An entry belongs to one `Model` object (identity): any
    other model computes afresh. `run_checked` calls `invalidate` after a pass that
    reports a change; the pass's `preserves` names what stays valid for its result.
    A consumer that edits a cached value (channel-prune slices the channel analysis's
    working copy) `forget`s it first, so that even a direct `Pass.run` never hands
    the edited value to the next reader.
    """

    def __init__(self) -> None:
        self._cache: dict[str, tuple[Model, Any]] = {}
        self.computed: Counter[str] = Counter()  # per analysis name: times computed

    def get(self, name: str, model: Model, compute: Callable[[Model], T]) -> T:
        """The analysis `name` of `model`, computed by `compute(model)` if not cached."""
        hit = self._cache.get(name)
        if hit is not None and hit[0] is model:
            return hit[1]
        value = compute(model)
        self._cache[name] = (model, value)
        self.computed[name] += 1
        return value

    def forget(self, name: str) -> None:
        """Drop one analysis now: its owner is about to edit what it holds."""
        self._cache.pop(name, None)

    def cached(self, name: str, model: Model) -> bool:
        hit = self._cache.get(name)
        return hit is not None and hit[0] is model

    def invalidate(self, model: Model, preserved: Iterable[str] = ()) -> None:
        """A transform produced `model`: drop every analysis it did not preserve; the
        preserved ones now describe `model`."""
        keep = set(preserved)
        self._cache = {name: (model, value) for name, (_, value) in self._cache.items()
                       if name in keep}


@dataclass
class PassContext:
    """What passes may read besides the model: calibration data, target, seed, and the
    analyses cached for the current model."""

    seed: int = 0
    calibration: CalibrationSet | None = None
    original: onnx.ModelProto | None = None  # the pipeline's input, for reconstruction
    target: TargetSpec | None = None  # the build target; passes read e.g. its round_to
    # concrete shape per graph input (given or assumed, see shapes.py): cost models read it
    input_shapes: dict[str, tuple[int, ...]] | None = None
    analyses: Analyses = field(default_factory=Analyses)

    def refit_original(self, pass_name: str) -> onnx.ModelProto:
        """A shape-inferred copy of the original model, for a pass that refits the current
        model to it on calibration data; UsageError when either is missing."""
        from compress_ir.core.model import infer_proto_shapes

        if self.original is None:
            raise UsageError(f"{pass_name} needs the original model (run it in a pipeline)")
        if self.calibration is None:
            raise UsageError(f"{pass_name} needs calibration data (--calib)")
        proto = onnx.ModelProto()
        proto.CopyFrom(self.original)
        return infer_proto_shapes(proto)


@dataclass
class PassResult:
    """What a pass returns: the model, whether it changed, statistics, details.

    `reference` is the model whose outputs the new model must reproduce (the input
    itself for exact rewrites, the channel-masked input for pruning); the pipeline
    compares both in onnxruntime when numeric checks are on.
    """

    model: Model
    modified: bool
    stats: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    reference: onnx.ModelProto | None = None
    # channel-prune: what was removed, per group and parameter (see prune_plan.py)
    plan: dict[str, Any] | None = None


class Pass:
    """Base class. Subclasses set `summary`, `Options` and implement `run`."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    transforms: ClassVar[bool] = True  # False: an analysis (reads, reports, changes nothing)
    # analyses (`Analyses` names) a transform leaves valid for the model it returns;
    # every other cached analysis is dropped when it reports a change
    preserves: ClassVar[frozenset[str]] = frozenset()
    # Whether `run` edits the Model it is given (onnx-ir's `in_place`). In place: edits
    # and returns that same object. Functional (False): leaves it untouched (weights,
    # graph, attributes) and returns a new Model when it changes anything. Every
    # registered pass declares it; `run_pipeline` enforces it.
    in_place: ClassVar[bool | None] = None
    # True when the pass's gain is in storage (zeros, shared values), not in shapes: the
    # report then adds the per-format size table.
    changes_storage: ClassVar[bool] = False

    def __init__(self, options: Any | None = None) -> None:
        self.options = options if options is not None else self.Options()

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        raise NotImplementedError

    @classmethod
    def format_details(cls, details: dict[str, Any], max_rows: int = 25) -> list[str]:
        """Lines for the terminal report from this pass's `details` (the pass owns their
        format; the core report knows none). None by default: the stats line says it."""
        return []

    def spec(self) -> str:
        """This pass as pipeline text, e.g. `channel-prune{ratio=0.5}` (defaults omitted)."""
        items = []
        for f in dataclasses.fields(self.options):
            value = getattr(self.options, f.name)
            default = (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            )
            if value != default:
                items.append(f"{f.name.replace('_', '-')}={format_value(value)}")
        return self.name + ("{" + ",".join(items) + "}" if items else "")


def format_value(value: Any) -> str:
    if isinstance(value, tuple | list):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


_BOOL = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _convert(raw: Any, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    if origin is tuple or annotation is tuple:
        items = raw if isinstance(raw, list) else [raw]
        return tuple(str(i) for i in items)
    if isinstance(raw, list):
        raise UsageError(f"{where}: expected a single value, got a list")
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if raw.lower() in ("none", ""):
            return None
        return _convert(raw, args[0], where)
    try:
        if annotation is bool:
            return _BOOL[raw.lower()]
        if annotation is int:
            return int(raw)
        if annotation is float:
            value = float(raw)
            if not math.isfinite(value):  # nan compares false with every bound check
                raise ValueError(raw)
            return value
    except (ValueError, KeyError):
        name = getattr(annotation, "__name__", str(annotation))
        raise UsageError(f"{where}: {raw!r} is not a valid {name}") from None
    return raw


def make_options(pass_cls: type[Pass], raw: dict[str, Any]) -> Any:
    """Build a pass's Options dataclass from textual values, with clear errors."""
    hints = typing.get_type_hints(pass_cls.Options)
    fields = {f.name: f for f in dataclasses.fields(pass_cls.Options)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        attr = key.replace("-", "_")
        if attr not in fields:
            known = ", ".join(f.replace("_", "-") for f in fields) or "(none)"
            raise UsageError(f"pass {pass_cls.name!r} has no option {key!r}; options: {known}")
        values[attr] = _convert(value, hints[attr], f"{pass_cls.name}{{{key}}}")
    try:
        return pass_cls.Options(**values)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"pass {pass_cls.name!r}: {exc}") from None


def describe_options(pass_cls: type[Pass]) -> list[tuple[str, str, str]]:
    """(name, default, help) per option, for --help and --list-passes."""
    rows = []
    for f in dataclasses.fields(pass_cls.Options):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        rows.append((f.name.replace("_", "-"), format_value(default), f.metadata.get("help", "")))
    return rows
