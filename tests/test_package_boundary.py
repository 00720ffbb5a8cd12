"""The shipped package stands alone: it never imports the repository's tools (not in the wheel),
and the simulator never imports the daemon (the emulation, which runs real daemons, is a tool
that is passed in)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "garage_p2p"


def imported_modules(source: str, package: tuple[str, ...]) -> set[str]:
    """Absolute names a module of ``package`` imports (relative imports resolved), with ``from`` names."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else ()
            module = ".".join([*base, *([node.module] if node.module else [])])
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def offending(root: Path, forbidden: str) -> dict[str, list[str]]:
    """File → the imports of ``forbidden`` (or below it) in the modules under ``root``."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        package = path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1]
        bad = sorted(
            n for n in imported_modules(path.read_text(), package) if n == forbidden or n.startswith(forbidden + ".")
        )
        if bad:
            found[str(path.relative_to(PACKAGE.parent))] = bad
    return found


def test_the_package_never_imports_the_tools():
    assert offending(PACKAGE, "tools") == {}


def test_the_simulator_never_imports_the_daemon():
    assert offending(PACKAGE / "sim", "garage_p2p.daemon") == {}


def test_relative_imports_are_resolved():
    # What sim/emulate.py did before it became tools/emulate.py.
    names = imported_modules("from ..daemon import open_peer\nfrom .metrics import percentile\n", ("garage_p2p", "sim"))
    assert {"garage_p2p.daemon", "garage_p2p.daemon.open_peer", "garage_p2p.sim.metrics"} <= names
    assert "tools.testkit" in imported_modules("from tools.testkit import free_port\n", ("garage_p2p", "cli"))
