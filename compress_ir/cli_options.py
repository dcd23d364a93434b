"""From the command line to `CompressOptions`: recipe first, then the flags actually given.

Why: "flags override the file" needs to know which flags the user typed, not their
argparse defaults. The compress parser is parsed a second time with every default
suppressed, so the namespace holds only what was on the command line; those values
are mapped to CompressOptions fields (one table) on top of the recipe's.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from compress_ir.core.errors import UsageError
from compress_ir.options import CompressOptions, recipe_fields


def parse_input_shapes(items: list[str]) -> dict[str, tuple[int, ...]]:
    """`NAME=d0,d1,...` items -> {NAME: (d0, d1, ...)} (one-line errors; see shapes.py)."""
    from compress_ir.core.shapes import parse_input_shape

    shapes: dict[str, tuple[int, ...]] = {}
    for item in items:
        name, shape = parse_input_shape(item)
        if min(shape) < 1:
            raise UsageError(f"--input-shape {item!r}: dims must be positive integers, "
                             f"e.g. {name}=1,3,224,224")
        if name in shapes:
            raise UsageError(f"--input-shape {name}: given twice")
        shapes[name] = shape
    return shapes


# CLI dest -> (CompressOptions field, conversion); dests not listed map to the same name
_DESTS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "no_check": ("check", lambda v: not v),
    "gate": ("gates", list),
    "input_shape": ("input_shapes", parse_input_shapes),
}
_NOT_OPTIONS = {"config", "print_config", "list_passes", "list_targets", "quiet", "verbose",
                "debug", "help", "version", "command", "stream"}


def explicit_arguments(parser: argparse.ArgumentParser, argv: list[str]) -> dict[str, Any]:
    """The dests the user actually gave in `argv`, with their parsed values."""
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return vars(parser.parse_args(argv))


def cli_values(given: dict[str, Any]) -> dict[str, Any]:
    """CompressOptions keyword values for the flags in `given`."""
    fields = {f.name for f in recipe_fields()}
    values: dict[str, Any] = {}
    for dest, value in given.items():
        if dest in _NOT_OPTIONS:
            continue
        name, convert = _DESTS.get(dest, (dest, lambda v: v))
        if name not in fields:  # a flag that is not an option (should not happen)
            raise UsageError(f"internal: flag {dest!r} has no CompressOptions field")
        values[name] = convert(value)
    return values


def options_from_cli(parser_factory: Callable[[], argparse.ArgumentParser],
                     args: argparse.Namespace, argv: list[str]) -> CompressOptions:
    """The run's options: `--config` recipe (if any) with the given flags on top.

    `parser_factory` builds a fresh compress parser (its defaults get suppressed).
    """
    from compress_ir.recipe import options_from_recipe, read_recipe

    given = explicit_arguments(parser_factory(), argv)
    data = read_recipe(args.config) if getattr(args, "config", None) else {}
    return options_from_recipe(data, **cli_values(given))
