"""The pruning plan file (`--plan plan.json`): the way back from ONNX to training.

One document per run: which `channel-prune` steps ran and, for each, the groups
(producers, consumers, module paths, kept/removed indices, criterion scores),
every parameter slice and every attribute rewrite. `PLAN_SCHEMA` is the published
JSON Schema (draft 2020-12); `validate_plan` checks a document against it with a
small built-in subset validator so reading a plan needs no extra dependency.

`exact` tells a consumer such as `frontends.torch.apply_plan` whether replaying
the slices on the original weights reproduces the output model: it is false when
a pass also changed weight values (reconstruct, sparsify, a compensating
criterion such as `merge`), which the plan does not carry.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from compress_ir.core.errors import UsageError
from compress_ir.core.files import write_atomic

PLAN_FORMAT = "compress-ir-plan"
PLAN_VERSION = 1
# Passes whose rewrite is exact (the output equals the input's): they leave a plan exact.
EXACT_PASSES = frozenset({"fold-bn"})

_NUMBERS = re.compile(r"\[\s*((?:-?[0-9.eE+-]+,?\s*)+)\]")  # number lists on one line
_INTS = {"type": "array", "items": {"type": "integer"}}
_WHERE = {"node": {"type": "string"}, "op": {"type": "string"},
          "module": {"type": ["string", "null"]}}
_SLICE = {
    "type": "object",
    "required": ["node", "op", "module", "input", "param", "shape", "axis", "groups", "role",
                 "kept", "group_ids"],
    "properties": {
        **_WHERE, "input": {"type": "integer"}, "param": {"type": "string"}, "shape": _INTS,
        "axis": {"type": "integer"}, "groups": {"type": "integer"},
        "role": {"enum": ["in", "out"]}, "kept": _INTS, "group_ids": _INTS,
    },
}
_MEMBER = {
    "type": "object",
    "required": ["node", "op", "module", "param", "axis", "kept", "removed"],
    "properties": {**_WHERE, "param": {"type": ["string", "null"]}, "axis": {"type": "integer"},
                   "kept": _INTS, "removed": _INTS, "tensor": {"type": "string"},
                   "tensor_axis": {"type": "integer"}},
}
_GROUP = {
    "type": "object",
    "required": ["group", "status", "size", "kept", "units", "producers", "consumers"],
    "properties": {
        "group": {"type": "integer"},
        "status": {"enum": ["pruned", "blocked", "excluded", "unscored"]},
        "size": {"type": "integer"}, "kept": {"type": "integer"},
        "units": {"type": "object", "required": ["kept", "removed"],
                  "properties": {"kept": _INTS, "removed": _INTS,
                                 "scores": {"type": "array", "items": {"type": "number"}}}},
        "producers": {"type": "array", "items": _MEMBER},
        "consumers": {"type": "array", "items": _MEMBER},
        "blocked_by": {"type": "array", "items": {"type": "string"}},
    },
}
_ATTRIBUTE = {
    "type": "object", "required": ["node", "op", "module", "kind"],
    "properties": {**_WHERE, "kind": {"type": "string"},
                   "value": {"type": ["integer", "array"]}},
}
PLAN_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "compress-ir pruning plan",
    "type": "object",
    "required": ["format", "version", "source", "pipeline", "exact", "weight_changes", "steps"],
    "properties": {
        "format": {"const": PLAN_FORMAT},
        "version": {"const": PLAN_VERSION},
        "source": {"type": "string"},
        "pipeline": {"type": "string"},
        "exact": {"type": "boolean"},
        "weight_changes": {"type": "array", "items": {"type": "string"}},
        "steps": {"type": "array", "items": {
            "type": "object",
            "required": ["pass", "criterion", "compensated", "modules", "groups", "slices",
                         "attributes"],
            "properties": {
                "pass": {"type": "string"}, "criterion": {"type": "string"},
                "compensated": {"type": "boolean"},
                "modules": {"type": "array", "items": {"type": "string"}},
                "groups": {"type": "array", "items": _GROUP},
                "slices": {"type": "array", "items": _SLICE},
                "attributes": {"type": "array", "items": _ATTRIBUTE},
            },
        }},
    },
}

_TYPES: dict[str, Any] = {
    "object": dict, "array": list, "string": str, "boolean": bool, "null": type(None),
    "integer": int, "number": (int, float),
}


def _is(value: Any, name: str) -> bool:
    if name in ("integer", "number") and isinstance(value, bool):
        return False
    return isinstance(value, _TYPES[name])


def _check(value: Any, schema: dict[str, Any], where: str) -> None:
    """The JSON Schema subset PLAN_SCHEMA uses: type, const, enum, required, properties, items."""
    types = schema.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else types
        if not any(_is(value, n) for n in names):
            raise UsageError(f"{where}: expected {' or '.join(names)}, got {type(value).__name__}")
    if "const" in schema and value != schema["const"]:
        raise UsageError(f"{where}: expected {schema['const']!r}, got {value!r}")
    if "enum" in schema and value not in schema["enum"]:
        raise UsageError(f"{where}: {value!r} is not one of {schema['enum']}")
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                raise UsageError(f"{where}: missing key {key!r}")
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                _check(value[key], sub, f"{where}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            _check(item, schema["items"], f"{where}[{i}]")


def validate_plan(doc: Any, where: str = "plan") -> dict[str, Any]:
    """Check a plan document against PLAN_SCHEMA; raise UsageError naming the bad key."""
    _check(doc, PLAN_SCHEMA, where)
    return doc


def plan_document(source: str, pipeline: str, passes: list[tuple[str, bool, dict | None]]
                  ) -> dict[str, Any]:
    """Assemble the plan from (pass name, modified, plan step or None) in pipeline order."""
    steps = [step for _, _, step in passes if step is not None]
    changes = [name for name, modified, step in passes
               if modified and step is None and name not in EXACT_PASSES]
    changes += [step["pass"] for step in steps if step["compensated"]]
    return {"format": PLAN_FORMAT, "version": PLAN_VERSION, "source": source,
            "pipeline": pipeline, "exact": not changes, "weight_changes": changes,
            "steps": steps}


def write_plan(doc: dict[str, Any], path: str | os.PathLike) -> None:
    """Validate and write atomically (a reader never sees half a plan)."""
    write_atomic(path, plan_bytes(doc))


def plan_bytes(doc: dict[str, Any]) -> bytes:
    """The validated plan as the JSON text `write_plan` writes."""
    validate_plan(doc)
    text = _NUMBERS.sub(lambda m: "[" + ", ".join(m.group(1).split()).replace(",,", ",") + "]",
                        json.dumps(doc, indent=1))
    return (text + "\n").encode()


def read_plan(plan: str | os.PathLike | dict[str, Any]) -> dict[str, Any]:
    """A plan from a path or an already loaded dict, validated."""
    if isinstance(plan, dict):
        return validate_plan(plan)
    try:
        with open(plan, encoding="utf-8") as fh:
            doc = json.load(fh)
    except OSError as exc:
        raise UsageError(f"{plan}: cannot read plan ({exc.strerror or exc})") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"{plan}: not a JSON plan (line {exc.lineno}: {exc.msg})") from None
    return validate_plan(doc, str(plan))


if __name__ == "__main__":  # python -m compress_ir.core.plan > plan.schema.json
    print(json.dumps(PLAN_SCHEMA, indent=1))
