"""pyproject.toml installs every package, with torch as a range; minilora depends on nothing of ours."""
import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_pyproject_lists_every_package_and_pins_no_torch_build():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    tops = [p.parent for p in ROOT.glob("*/__init__.py") if p.parent.name != "tests"]
    packages = sorted(".".join(p.parent.relative_to(ROOT).parts) for top in tops for p in top.rglob("__init__.py"))
    assert sorted(project["tool"]["setuptools"]["packages"]) == packages
    torch_req = [d for d in project["project"]["dependencies"] if re.match(r"torch\b", d)]
    assert len(torch_req) == 1 and "==" not in torch_req[0] and ">=" in torch_req[0]
    requirements = [line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    assert torch_req[0] in requirements  # the same range both ways of installing


def imported_modules(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module


def test_minilora_imports_neither_nanogpt_nor_experiments():
    for path in sorted((ROOT / "minilora").glob("*.py")):
        ours = [m for m in imported_modules(path) if m.split(".")[0] in ("nanogpt", "experiments")]
        assert not ours, f"{path.name} imports {ours}: minilora must work on any model"


def test_nanogpt_imports_nothing_from_experiments():
    for path in sorted((ROOT / "nanogpt").glob("*.py")):
        assert not [m for m in imported_modules(path) if m.split(".")[0] == "experiments"], path.name
