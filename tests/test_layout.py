"""Imports flow one way: service/ and clients/ never import each other; runtime/ imports neither.

The client package ships without the server and the server needs no client
code (shared DESIGN.md, "Dependency rule"). What both need lives in runtime/;
dev-only tooling (devtools/) may import everything, and nothing imports it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# package (or sub-package) -> top-level packages it must never import
FORBIDDEN: dict[str, set[str]] = {
    "service": {"clients", "devtools", "emulator", "bench", "tests"},
    "clients": {"service", "devtools", "emulator", "bench", "tests"},
    "runtime": {"service", "clients", "devtools", "emulator", "bench", "tests"},
    "emulator": {"service", "clients", "devtools", "bench", "tests"},
}
# The client *library* must not depend on the edge, an application built on it.
LIBRARY_MUST_NOT_IMPORT = "clients.edge"


def imported_modules(source: str) -> set[str]:
    """Every absolute module name a source file imports, at any depth (lazy imports too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def violations(package: str, forbidden: set[str]) -> list[str]:
    """`file: module` for each forbidden import under `package`."""
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for module in sorted(imported_modules(path.read_text())):
            if module.split(".")[0] in forbidden:
                found.append(f"{path.relative_to(ROOT)}: {module}")
    return found


def test_the_scanner_sees_forbidden_imports_at_any_depth() -> None:
    """A lazy import inside a function is found as surely as one at the top."""
    source = "import os\n\ndef f():\n    from service.devstack import X\n    import clients.edge\n"
    assert {"service.devstack", "clients.edge"} <= imported_modules(source)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_what_it_may(package: str) -> None:
    """service/, clients/, runtime/ and emulator/ import none of the packages they must not."""
    assert violations(package, FORBIDDEN[package]) == []


def test_client_library_does_not_import_the_edge() -> None:
    """clients/ outside clients/edge/ never imports the edge application."""
    found = []
    for path in sorted((ROOT / "clients").glob("*.py")):
        for module in imported_modules(path.read_text()):
            if module == LIBRARY_MUST_NOT_IMPORT or module.startswith(
                LIBRARY_MUST_NOT_IMPORT + "."
            ):
                found.append(f"{path.relative_to(ROOT)}: {module}")
    assert found == []


def test_nothing_shipped_imports_dev_tooling() -> None:
    """No module outside devtools/, bench/ and tests/ imports devtools."""
    shipped = ["service", "clients", "runtime", "emulator"]
    assert [v for package in shipped for v in violations(package, {"devtools"})] == []
