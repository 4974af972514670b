"""Packaging: every code folder is installed under `medacq`, nothing bare, schema ships."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from medacq.protocols.stream import header_json_schema

ROOT = Path(__file__).resolve().parent.parent
CODE_DIRS = ("protocols", "drivers", "simulators", "daemon")


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _folder_of(package: str, package_dir: dict[str, str]) -> Path:
    # longest mapped prefix wins, as in setuptools
    parts = package.split(".")
    for i in range(len(parts), 0, -1):
        prefix = ".".join(parts[:i])
        if prefix in package_dir:
            return ROOT / package_dir[prefix] / Path(*parts[i:])
    raise AssertionError(f"{package} is not under any package-dir mapping")


def test_every_package_folder_is_listed():
    tool = _pyproject()["tool"]["setuptools"]
    listed = set(tool["packages"])
    package_dir = tool["package-dir"]
    folders = {_folder_of(p, package_dir).resolve() for p in listed}
    for top in CODE_DIRS:
        for init in (ROOT / top).rglob("__init__.py"):
            folder = init.parent.resolve()
            if "__pycache__" in folder.parts:
                continue
            assert folder in folders, f"{folder.relative_to(ROOT)} has an __init__.py but is not in [tool.setuptools] packages"


def test_no_bare_top_level_packages():
    tool = _pyproject()["tool"]["setuptools"]
    for p in tool["packages"]:
        assert p == "medacq" or p.startswith("medacq."), f"{p} would install as a bare top-level package"
    for top in CODE_DIRS:
        assert f"medacq.{top}" in tool["package-dir"], f"{top}/ is not mapped into the medacq namespace"


def test_listed_packages_import():
    import importlib

    for p in _pyproject()["tool"]["setuptools"]["packages"]:
        importlib.import_module(p)


def test_console_script_and_extras():
    proj = _pyproject()["project"]
    assert proj["scripts"]["medacq"] == "medacq.daemon.cli:main"
    assert {"test", "all"} <= set(proj["optional-dependencies"])
    assert proj["requires-python"].startswith(">=3.11")


def test_shipped_schema_is_the_exported_one():
    shipped = json.loads((ROOT / "protocols" / "schema" / "header.schema.json").read_text())
    assert shipped == json.loads(json.dumps(header_json_schema())), (
        "protocols/schema/header.schema.json is stale: regenerate it from header_json_schema()"
    )
    from importlib.resources import files

    assert json.loads(files("medacq.protocols").joinpath("schema/header.schema.json").read_text()) == shipped
