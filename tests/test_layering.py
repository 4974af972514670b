"""Import rules of design.md and of the daemon's layout, enforced by walking every module's AST.

The AST walk sees every import statement, at module level or inside a function. Drivers that
are only named by strings (the registry, ``MEDACQ_EXTRA_DRIVERS``) are checked by importing
each in a fresh interpreter.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STDLIB = set(sys.stdlib_module_names)

# (folder, allowed third-party/top modules, allowed medacq subpackages)
RULES = {
    "protocols": ({"numpy", "pydantic", "scipy", "msgpack", "fastcrc", "orjson"}, {"protocols"}),
    "drivers": ({"numpy", "pydantic", "serial", "pyvisa", "pyvisa_py", "scipy"}, {"protocols", "drivers"}),
    "simulators": ({"numpy", "pydantic", "scipy", "skimage", "msgpack", "zmq"}, {"protocols", "simulators"}),
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


def test_rule_checker_catches_a_violation(tmp_path):
    # the checker itself must be able to fail
    (tmp_path / "protocols").mkdir()
    (tmp_path / "protocols" / "probe.py").write_text("import socket\nfrom medacq.drivers import x\nfrom ..simulators import y\n")
    v = _violations("protocols", tmp_path)
    assert any("socket" in s for s in v) and any("medacq.drivers" in s for s in v)
    assert any("medacq.simulators" in s for s in v)


def test_drivers_never_import_device_physics():
    bad = [v for v in _violations("drivers") if "medacq.protocols.models" in v]
    bad += [f"{p.relative_to(ROOT)}:{line} imports {name}" for p in (ROOT / "drivers").rglob("*.py")
            for name, line in _imports(p) if name.startswith("medacq.protocols.models")]
    assert bad == []


# -- inside daemon/: one sub-package per service or tool ----------------------------------------
DAEMON_PACKAGES = {"common", "client", "acquisition", "recon", "recording", "bridges", "cli", "bench", "_top", "interop"}


def _under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _daemon_violations(root: Path = ROOT) -> list[str]:
    """Every breach of the daemon's layering rules, as ``"rule: file:line imports name"``."""
    bad = []
    daemon = root / "daemon"
    for entry in daemon.iterdir():
        if entry.name in ("__init__.py", "__pycache__"):
            continue
        if entry.suffix == ".py" or (entry.is_dir() and entry.name not in DAEMON_PACKAGES):
            bad.append(f"flat: daemon/{entry.name} is not one of the sub-packages {sorted(DAEMON_PACKAGES)}")
    for path in daemon.rglob("*.py"):
        rel = path.relative_to(root)
        pkg = rel.parts[1] if len(rel.parts) > 2 else ""
        for name, line in _imports(path, root):
            where = f"{rel}:{line} imports {name}"
            if not name.startswith("medacq"):
                continue
            if pkg == "client" and not (_under(name, "medacq.protocols") or _under(name, "medacq.daemon.client")):
                bad.append(f"client-only-protocols: {where}")
            if pkg == "interop" and not (name == "medacq" or any(
                    _under(name, f"medacq.{p}") for p in ("protocols", "daemon.client", "daemon.common", "daemon.interop"))):
                bad.append(f"interop-only-protocols-client-common: {where}")
            if _under(name, "medacq.drivers") and pkg != "acquisition":
                bad.append(f"only-acquisition-imports-drivers: {where}")
            if _under(name, "medacq.daemon.cli") and pkg != "cli":
                bad.append(f"nothing-imports-cli: {where}")
            if _under(name, "medacq.daemon.bench") and pkg not in ("bench", "cli"):
                bad.append(f"nothing-imports-bench: {where}")
            if _under(name, "medacq.simulators") and pkg not in ("cli", "bench"):
                bad.append(f"only-cli-and-bench-import-simulators: {where}")
    return bad


def test_daemon_layout_and_layering():
    assert _daemon_violations() == []


def test_each_daemon_rule_can_fail(tmp_path):
    d = tmp_path / "daemon"
    probes = {
        "client/probe.py": "from medacq.daemon.common import config\n",
        "recon/probe.py": "from medacq.drivers.registry import driver_class\n",
        "recording/probe.py": "def f():\n    from medacq.daemon.cli.app import main\n",
        "bridges/probe.py": "from ..bench import runner\n",
        "acquisition/probe.py": "import medacq.simulators.rig\n",
        "loose.py": "",
    }
    for rel, text in probes.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_text(text)
    v = _daemon_violations(tmp_path)
    rules = {s.split(":")[0] for s in v}
    assert rules == {"client-only-protocols", "only-acquisition-imports-drivers", "nothing-imports-cli",
                     "nothing-imports-bench", "only-cli-and-bench-import-simulators", "flat"}, v
    # the relative import resolved to its absolute name
    assert any("medacq.daemon.bench" in s and "bridges/probe.py" in s for s in v)
    # and what is allowed stays allowed
    (d / "cli").mkdir()
    for rel, text in {"cli/ok.py": "from medacq.simulators import rig\nfrom medacq.daemon.bench import runner\n",
                      "acquisition/ok.py": "from medacq.drivers import registry\n",
                      "client/ok.py": "from medacq.protocols import stream\n"}.items():
        (d / rel).write_text(text)
    assert len(_daemon_violations(tmp_path)) == len(v)


_IMPORT_DRIVER = """
import importlib, sys
module, _, cls = sys.argv[1].partition(":")
getattr(importlib.import_module(module), cls)
leaked = sorted(m for m in sys.modules if m.startswith(("medacq.simulators", "medacq.protocols.models", "scipy.sparse.linalg")))
print(",".join(leaked))
"""


def _registered_drivers(extra: str = "") -> dict[str, str]:
    env = {**os.environ, "MEDACQ_EXTRA_DRIVERS": extra}
    out = subprocess.run([sys.executable, "-c", "import json; from medacq.drivers.registry import DRIVERS; "
                          "print(json.dumps(DRIVERS))"], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def _leaks(target: str, extra_path: str = "") -> list[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (extra_path, os.environ.get("PYTHONPATH", "")) if p)}
    out = subprocess.run([sys.executable, "-c", _IMPORT_DRIVER, target], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return [m for m in out.stdout.strip().split(",") if m]


def test_registered_drivers_import_no_simulator_or_physics():
    """Each driver the registry names (by string) imports without simulators or FEM physics."""
    drivers = _registered_drivers(os.environ.get("MEDACQ_EXTRA_DRIVERS", ""))
    assert len(drivers) >= 8
    leaked = {kind: _leaks(target) for kind, target in drivers.items()}
    assert {k: v for k, v in leaked.items() if v} == {}


def test_driver_import_check_can_fail(tmp_path):
    (tmp_path / "leaky_driver.py").write_text("import medacq.simulators.synthetic\nclass LeakyDriver:\n    pass\n")
    drivers = _registered_drivers("leaky=leaky_driver:LeakyDriver")
    assert drivers["leaky"] == "leaky_driver:LeakyDriver"
    assert "medacq.simulators.synthetic" in _leaks(drivers["leaky"], str(tmp_path))
