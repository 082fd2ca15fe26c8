"""pyproject.toml installs every package, with torch as a range. (Which package may import which:
tests/test_architecture.py.)"""
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
