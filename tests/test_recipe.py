"""Recipes: `--config` YAML/JSON, the published schema, flags over the file, `--print-config`,
one-line schema errors (exit 2), and the API taking `{name: options}` steps."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import onnx
import pytest
import yaml
from cli_helpers import cli
from oracle import tiny_net

from compress_ir.api import CompressOptions, compress
from compress_ir.cli import build_parser
from compress_ir.core.errors import EXIT_OK, EXIT_USAGE, UsageError
from compress_ir.options import flag_of, recipe_fields, recipe_schema
from compress_ir.recipe import SCHEMA_FILE, published_schema, step_specs, validate_recipe

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.onnx"
    onnx.save_model(tiny_net(), str(path))
    return path




def test_published_schema_is_the_one_generated_from_the_options() -> None:
    shipped = json.loads((ROOT / "compress_ir" / SCHEMA_FILE).read_text())
    assert shipped == recipe_schema(), "regenerate: python -m compress_ir.recipe"
    assert published_schema() == shipped  # what the installed package loads


def test_every_recipe_key_is_a_cli_flag() -> None:
    parser = build_parser()
    flags = {s for a in parser._actions for s in a.option_strings}
    for f in recipe_fields():
        flag = flag_of(f)
        assert flag == "MODEL" or flag in flags, f"recipe key {f.name!r}: no flag {flag}"
    # and the other way round: every compress option flag is a recipe key
    keys = {f.name for f in dataclasses.fields(CompressOptions)}
    from compress_ir.cli_options import _DESTS, _NOT_OPTIONS

    for action in parser._actions:
        if action.dest in _NOT_OPTIONS or action.dest == "list_targets":
            continue
        assert _DESTS.get(action.dest, (action.dest,))[0] in keys, action.dest


ISSUE_RECIPE = """
# the minimal form from issue 11
model: {model}
input_shapes: {{x: [1, 3, 8, 8]}}
calib: random:8
passes:
  - channel-prune: {{criterion: thinet, target-macs: 0.5}}
  - reconstruct: {{}}
output: {out}
report: {report}
gates: ["macs <= 0.6", "fidelity >= 0.5"]
"""


def test_issue_recipe_runs_from_yaml_and_json(
    capsys: pytest.CaptureFixture[str], model: Path, tmp_path: Path
) -> None:
    reports = []
    for suffix in ("yaml", "json"):
        out, report = tmp_path / f"out_{suffix}.onnx", tmp_path / f"r_{suffix}.json"
        data = yaml.safe_load(ISSUE_RECIPE.format(model=model, out=out, report=report))
        recipe = tmp_path / f"recipe.{suffix}"
        text = (ISSUE_RECIPE.format(model=model, out=out, report=report) if suffix == "yaml"
                else json.dumps(data))
        recipe.write_text(text)
        code, stdout, stderr = cli(capsys, "--config", recipe, "--quiet")
        assert code == EXIT_OK, stderr
        onnx.checker.check_model(onnx.load(str(out)))
        reports.append(json.loads(report.read_text()))
    for rep in reports:
        assert rep["status"] == "ok"
        assert rep["pipeline"] == "channel-prune{criterion=thinet,target-macs=0.5},reconstruct"
        assert rep["ratios"]["macs"] <= 0.6
        assert [g["ok"] for g in rep["gates"]] == [True, True]
        # the resolved recipe is echoed into the report
        assert rep["recipe"]["passes"] == [
            {"channel-prune": {"criterion": "thinet", "target-macs": 0.5}}, {"reconstruct": {}}]
        assert rep["recipe"]["gates"] == ["macs <= 0.6", "fidelity >= 0.5"]
        assert rep["recipe"]["input_shapes"] == {"x": [1, 3, 8, 8]}
    assert reports[0]["after"] == reports[1]["after"]


def test_flags_override_the_file(capsys: pytest.CaptureFixture[str], model: Path,
                                 tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": str(model), "passes": [{"channel-prune": {"ratio": 0.25}}],
        "report": str(tmp_path / "from_file.json"), "seed": 3}))
    report = tmp_path / "from_flag.json"
    code, _, err = cli(capsys, "--config", recipe, "--pass", "channel-prune{ratio=0.5}",
                       "--report", report, "--quiet")
    assert code == EXIT_OK, err
    data = json.loads(report.read_text())
    assert not (tmp_path / "from_file.json").exists()
    assert data["pipeline"] == "channel-prune"  # ratio=0.5 is the default
    assert data["recipe"]["seed"] == 3  # not overridden: the file's value stays


def test_print_config_round_trip(capsys: pytest.CaptureFixture[str], model: Path,
                                 tmp_path: Path) -> None:
    argv = [str(model), "--pass", "channel-prune{ratio=0.3,scope=global}", "--seed", "5",
            "--tolerance", "0.001", "--gate", "macs <= 0.9", "--input-shape", "x=1,3,8,8",
            "--no-check", "--calib", "random:4", "--calib-mean", "0.5,0.5,0.5"]
    code, text, err = cli(capsys, *argv, "--print-config")
    assert code == EXIT_OK, err
    recipe = yaml.safe_load(text)
    validate_recipe(recipe)
    assert recipe["passes"] == [{"channel-prune": {"ratio": 0.3, "scope": "global"}}]
    assert recipe["check"] is False and recipe["seed"] == 5
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    # the recipe printed back is the same recipe: CLI -> recipe -> CLI is stable
    code, again, err = cli(capsys, "--config", path, "--print-config")
    assert code == EXIT_OK, err
    assert again == text
    # and runs the same as the flags
    ra, rb = tmp_path / "a.json", tmp_path / "b.json"
    assert cli(capsys, *argv, "--report", ra, "--quiet")[0] == EXIT_OK
    assert cli(capsys, "--config", path, "--report", rb, "--quiet")[0] == EXIT_OK
    a, b = json.loads(ra.read_text()), json.loads(rb.read_text())
    for key in ("pipeline", "after", "gates", "fidelity"):
        assert a[key] == b[key], key


@pytest.mark.parametrize(
    ("recipe", "fragments"),
    [
        ({"modle": "x.onnx"}, ["unknown key 'modle'"]),
        ({"passes": "channel-prune"}, ["'passes'", "not of type 'array'"]),
        ({"passes": [{"channel-prune": {"ratio": 0.5}, "fold-bn": {}}]}, ["passes[0]"]),
        ({"tolerance": -1}, ["'tolerance'", "minimum"]),
        ({"input_shapes": {"x": [1, "a"]}}, ["input_shapes.x[1]"]),
        ({"calib_layout": "NCWH"}, ["'calib_layout'", "NCHW"]),
        ({"gates": "macs <= 0.5"}, ["'gates'"]),
    ],
)
def test_schema_errors_are_one_line_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, recipe: dict, fragments: list[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(recipe))
    code, out, err = cli(capsys, "--config", path)
    assert code == EXIT_USAGE
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"compress-ir: error: {path}: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert out == ""


def test_unreadable_recipes_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("passes: [unclosed\n")
    for path, fragment in ((bad, "not valid YAML"), (tmp_path / "none.yaml", "cannot read")):
        code, _, err = cli(capsys, "--config", path)
        assert code == EXIT_USAGE and fragment in err and len(err.strip().splitlines()) == 1


def test_bad_pass_option_in_a_recipe_names_the_pass(
    capsys: pytest.CaptureFixture[str], model: Path, tmp_path: Path
) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"model": str(model),
                                    "passes": [{"channel-prune": {"ratoi": 0.5}}]}))
    code, _, err = cli(capsys, "--config", path)
    assert code == EXIT_USAGE and "channel-prune" in err and "'ratoi'" in err


def test_api_takes_steps_as_dicts_text_and_options(model: Path) -> None:
    text = compress(str(model), "channel-prune{ratio=0.25,criterion=l2}")
    steps = compress(str(model), [{"channel-prune": {"ratio": 0.25, "criterion": "l2"}}])
    opts = compress(str(model), CompressOptions(
        passes=[{"channel-prune": {"ratio": 0.25, "criterion": "l2"}}]))
    recipe_model = compress(None, options=CompressOptions(
        model=str(model), passes=["channel-prune{ratio=0.25,criterion=l2}"]))
    for result in (steps, opts, recipe_model):
        assert result.report["pipeline"] == text.report["pipeline"]
        assert result.report["after"] == text.report["after"]
    with pytest.raises(UsageError, match="not both"):
        compress(str(model), CompressOptions(passes=["fold-bn"]), check=False)


def test_step_forms() -> None:
    assert step_specs([{"channel-prune": {"ratio": 0.5, "exclude": ["a*", "b"],
                                          "round-to": 8}}, {"fold-bn": None}]) == [
        ("channel-prune", {"ratio": "0.5", "exclude": ["a*", "b"], "round-to": "8"}),
        ("fold-bn", {})]
    with pytest.raises(UsageError, match="a step is pipeline text"):
        step_specs([{"a": {}, "b": {}}])
    with pytest.raises(UsageError, match="cannot be a mapping"):
        step_specs([{"channel-prune": {"ratio": {"x": 1}}}])


def test_pipeline_text_with_comments_and_at_file(
    capsys: pytest.CaptureFixture[str], model: Path, tmp_path: Path
) -> None:
    recipe = tmp_path / "pipeline.txt"
    recipe.write_text("# prune a quarter, globally\nchannel-prune{ratio=0.25,  # less\n"
                      "  scope=global}\n\nfold-bn  # nothing to fold here\n")
    report = tmp_path / "r.json"
    code, _, err = cli(capsys, model, "--pass", f"@{recipe}", "--report", report, "--quiet")
    assert code == EXIT_OK, err
    assert json.loads(report.read_text())["pipeline"] == (
        "channel-prune{ratio=0.25,scope=global},fold-bn")
    code, _, err = cli(capsys, model, "--pass", f"@{tmp_path / 'missing.txt'}")
    assert code == EXIT_USAGE and "cannot read pipeline file" in err


def test_readme_recipe_is_valid() -> None:
    text = (ROOT / "README.md").read_text().split("### Recipes, CI gates and reports", 1)[1]
    block = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    recipe = yaml.safe_load(block)
    validate_recipe(recipe, "README")
    assert set(recipe) >= {"model", "input_shapes", "calib", "passes", "target", "output",
                           "report", "gates"}
    assert step_specs(recipe["passes"])[0] == (
        "channel-prune", {"criterion": "thinet", "target-macs": "0.5"})


def test_shipped_recipes_are_valid() -> None:
    recipes = sorted((ROOT / "tools" / "recipes").glob("*.yaml"))
    assert recipes
    for path in recipes:
        from compress_ir.recipe import read_recipe

        data = read_recipe(path)
        assert (ROOT / data["model"]).is_file(), path
        step_specs(data["passes"])
