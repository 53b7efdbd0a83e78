"""The security package holds primitives: no web framework, nothing from the server."""

from __future__ import annotations

import ast
from pathlib import Path

import cvdeploy.security

FORBIDDEN = ("fastapi", "starlette", "cvdeploy.serve")


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at module level or inside functions."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_security_imports_no_http_framework_and_nothing_from_serve() -> None:
    root = Path(cvdeploy.security.__file__).parent
    found = [
        f"{path.name}: {name}"
        for path in sorted(root.rglob("*.py"))
        for name in sorted(_imports(path))
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN)
    ]
    assert found == [], "the HTTP side of security belongs in cvdeploy.serve"
