"""Import rules of design.md, enforced by walking every module's AST."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STDLIB = set(sys.stdlib_module_names)

# (folder, allowed third-party/top modules, allowed medacq subpackages)
RULES = {
    "protocols": ({"numpy", "pydantic", "scipy", "msgpack", "fastcrc", "orjson"}, {"protocols"}),
    "drivers": ({"numpy", "pydantic", "serial", "pyvisa", "pyvisa_py", "scipy"}, {"protocols", "drivers"}),
    "simulators": ({"numpy", "pydantic", "scipy", "skimage", "msgpack"}, {"protocols", "simulators"}),
}
# modules that do I/O are banned from the sans-I/O layer
SANS_IO_BANNED = {"socket", "select", "selectors", "threading", "asyncio", "time", "serial", "zmq", "subprocess", "os"}


def _imports(path: Path, root: Path = ROOT) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    # the module's package inside the medacq namespace, e.g. ["medacq", "daemon", "recon"]
    package = ["medacq", *path.relative_to(root).parts[:-1]]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # resolve the relative import to an absolute name
                base = package[: len(package) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
                out.append((name, node.lineno))
            else:
                out.append((node.module or "", node.lineno))
    return out


def _violations(folder: str, root: Path = ROOT) -> list[str]:
    allowed_ext, allowed_medacq = RULES[folder]
    bad = []
    for path in (root / folder).rglob("*.py"):
        for name, line in _imports(path, root):
            top = name.split(".")[0]
            where = f"{path.relative_to(root)}:{line} imports {name}"
            if top == "medacq":
                sub = name.split(".")[1] if "." in name else ""
                if sub not in allowed_medacq:
                    bad.append(where)
            elif top in STDLIB:
                if folder == "protocols" and top in SANS_IO_BANNED:
                    bad.append(where + " (protocols/ is sans-I/O)")
            elif top not in allowed_ext:
                bad.append(where)
    return bad


def test_protocols_are_sans_io():
    assert _violations("protocols") == []


def test_drivers_never_import_simulators():
    assert _violations("drivers") == []


def test_simulators_never_import_drivers():
    assert _violations("simulators") == []


def test_daemon_imports_simulators_only_for_up_and_sim():
    allowed = {"rig.py", "cli.py", "bench.py", "faults.py"}
    bad = []
    for path in (ROOT / "daemon").rglob("*.py"):
        if path.name.startswith("bench") or path.name in allowed:
            continue
        for name, line in _imports(path):
            if name.startswith("medacq.simulators"):
                bad.append(f"{path.relative_to(ROOT)}:{line}")
    assert bad == []


def test_rule_checker_catches_a_violation(tmp_path):
    # the checker itself must be able to fail
    (tmp_path / "protocols").mkdir()
    (tmp_path / "protocols" / "probe.py").write_text("import socket\nfrom medacq.drivers import x\nfrom ..simulators import y\n")
    v = _violations("protocols", tmp_path)
    assert any("socket" in s for s in v) and any("medacq.drivers" in s for s in v)
    assert any("medacq.simulators" in s for s in v)
