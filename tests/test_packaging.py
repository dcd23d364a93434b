"""Every package folder is listed in pyproject.toml, so a non-editable install has it."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_is_listed() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = set()
    for name, folder in config["package-dir"].items():
        base = ROOT / folder
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base)
            found.add(".".join([name, *rel.parts]) if rel.parts else name)
    assert found <= listed, sorted(found - listed)


def test_base_install_has_tvm_and_pillow() -> None:
    """`compress-ir model.onnx --pass channel-prune --target arm` needs no extra (issue 10)."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {d.split("==")[0].lower() for d in deps}
    assert {"apache-tvm", "apache-tvm-ffi", "pillow"} <= names, names
    pinned = [d for d in deps if d.split("==")[0].lower() in {"apache-tvm", "apache-tvm-ffi"}]
    assert all("==" in d for d in pinned), pinned
