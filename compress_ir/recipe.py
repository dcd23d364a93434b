"""Recipe files: a compress-ir run as YAML or JSON, validated against a published schema.

Why: a pipeline step in CI is a file under review, not a shell string. A recipe holds
the same keys as `CompressOptions` (each also a CLI flag; flags given on the command
line override the file), is checked against `recipe.schema.json` (shipped in the
package, generated from CompressOptions and kept equal to it by a test) with
`jsonschema`, and `--print-config` writes the recipe of any CLI call.

Pipelines are a list of steps, each `{pass-name: {option: value}}` or pipeline text;
pipeline text may be `@file` and carry `#` comments.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from compress_ir.core.errors import UsageError
from compress_ir.options import CompressOptions, recipe_fields, recipe_schema

SCHEMA_FILE = "recipe.schema.json"


@cache
def published_schema() -> dict[str, Any]:
    """The schema file shipped in the package (what users and editors validate against)."""
    return json.loads(resources.files("compress_ir").joinpath(SCHEMA_FILE).read_text())


def _where(path: Any) -> str:
    """`passes[1].channel-prune` from a jsonschema error path."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def validate_recipe(data: Any, source: str = "recipe") -> None:
    """Raise a one-line UsageError naming the offending key when `data` breaks the schema."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    if not isinstance(data, dict):
        raise UsageError(f"{source}: a recipe is a mapping of keys (model, passes, ...), "
                         f"got {type(data).__name__}")
    error = best_match(Draft202012Validator(published_schema()).iter_errors(data))
    if error is None:
        return
    if error.validator == "additionalProperties" and not error.absolute_path:
        known = {f.name for f in recipe_fields()}
        extra = sorted(set(data) - known)
        raise UsageError(f"{source}: unknown key {extra[0]!r} (keys: {', '.join(sorted(known))})")
    message = error.message.splitlines()[0]
    if len(message) > 160:
        message = message[:157] + "..."
    raise UsageError(f"{source}: key {_where(error.absolute_path)!r}: {message}")


def read_recipe(path: str | Path) -> dict[str, Any]:
    """Load a YAML or JSON recipe file and validate it (one-line errors, exit 2)."""
    import yaml

    p = Path(path)
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--config {path}: cannot read ({exc})") from None
    try:
        data = json.loads(text) if p.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        first = str(exc).replace("\n", " ")
        raise UsageError(f"--config {path}: not valid {'JSON' if p.suffix == '.json' else 'YAML'}"
                         f": {first}") from None
    data = {} if data is None else data
    validate_recipe(data, str(path))
    return data


def options_from_recipe(data: dict[str, Any], **overrides: Any) -> CompressOptions:
    """CompressOptions from a validated recipe mapping, then `overrides` on top."""
    values = {**data, **overrides}
    return CompressOptions(**values)


def resolved_recipe(options: CompressOptions) -> dict[str, Any]:
    """`options` as a recipe mapping, pipelines as typed {name: {options}} steps.

    A pipeline that does not parse is kept as given (the run reports that error).
    """
    data = options.to_recipe()
    if options.passes:
        try:
            data["passes"] = canonical_steps(options.passes)
        except UsageError:
            pass
    return data


def dump_recipe(options: CompressOptions, fmt: str = "yaml") -> str:
    """The recipe text of `options` (see `resolved_recipe`), YAML or JSON."""
    import yaml

    data = resolved_recipe(options)
    if fmt == "json":
        return json.dumps(data, indent=2) + "\n"
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)


# -- pipelines as steps ---------------------------------------------------------------------


def pipeline_text(text: str) -> str:
    """Pipeline text with `@file` read and `#` comments dropped; line breaks separate passes."""
    text = text.strip()
    if text.startswith("@"):
        path = Path(text[1:])
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"--pass {text}: cannot read pipeline file ({exc})") from None
    parts: list[str] = []
    depth = 0
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if parts and depth == 0 and not parts[-1].endswith(",") and not line.startswith(","):
            parts.append(",")
        parts.append(line)
        depth += line.count("{") + line.count("[") - line.count("}") - line.count("]")
    return "".join(parts)


def _raw_value(value: Any, where: str) -> Any:
    """A recipe value as the text the pass option parser takes (lists stay lists)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, list | tuple):
        return [_raw_value(v, where) for v in value]
    if isinstance(value, dict):
        raise UsageError(f"{where}: an option value cannot be a mapping")
    return str(value)


def step_specs(steps: list[Any]) -> list[tuple[str, dict[str, Any]]]:
    """(pass name, raw options) for a list of steps: text or {name: {option: value}}."""
    from compress_ir.core.pipeline import parse_pipeline

    specs: list[tuple[str, dict[str, Any]]] = []
    for i, step in enumerate(steps):
        if isinstance(step, str):
            specs.extend(parse_pipeline(pipeline_text(step)))
        elif isinstance(step, dict) and len(step) == 1:
            name, opts = next(iter(step.items()))
            where = f"passes[{i}] {name}"
            if opts is not None and not isinstance(opts, dict):
                raise UsageError(f"{where}: options must be a mapping, got {opts!r}")
            specs.append((str(name), {str(k): _raw_value(v, f"{where}{{{k}}}")
                                      for k, v in (opts or {}).items()}))
        else:
            raise UsageError(f"passes[{i}]: a step is pipeline text or one {{name: {{options}}}}"
                             f" mapping, got {step!r}")
    return specs


def build_steps(steps: list[Any]) -> list[Any]:
    """Pass instances for a list of steps (what `compress()` runs)."""
    from compress_ir.core.passes import PASSES, make_options

    passes = []
    for name, raw in step_specs(steps):
        cls = PASSES.get(name)
        passes.append(cls(make_options(cls, raw)))
    return passes


def canonical_steps(steps: list[Any]) -> list[dict[str, dict[str, Any]]]:
    """Steps as typed `{name: {option: value}}` (non-default options only)."""
    import dataclasses

    out = []
    for p in build_steps(steps):
        opts = {}
        for f in dataclasses.fields(p.options):
            value = getattr(p.options, f.name)
            default = (f.default_factory() if f.default_factory is not dataclasses.MISSING
                       else f.default)
            if value != default:
                opts[f.name.replace("_", "-")] = list(value) if isinstance(value, tuple) else value
        out.append({p.name: opts})
    return out


def write_schema(path: str | Path | None = None) -> Path:
    """Regenerate the published schema file from CompressOptions (a dev tool)."""
    target = Path(path) if path else Path(__file__).with_name(SCHEMA_FILE)
    target.write_text(json.dumps(recipe_schema(), indent=2) + "\n")
    return target


if __name__ == "__main__":
    print(write_schema())
