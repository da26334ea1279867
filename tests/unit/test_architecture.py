"""The layers of the README's architecture, checked: the core is pure, the client stays light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import hakuriver

SRC = Path(hakuriver.__file__).parent
CORE_ALLOWED = {"__future__", "collections", "collections.abc", "dataclasses", "enum", "typing", "heapq", "bisect"}


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_core_imports_only_the_standard_librarys_data_structures():
    for path in (SRC / "core").glob("*.py"):
        outside = {m for m in imports(path) if not m.startswith("hakuriver.core") and m not in CORE_ALLOWED}
        assert not outside, f"{path.name} imports {outside}"


def test_layers_do_not_reach_sideways():
    rules = {"client": {"hakuriver.host", "hakuriver.runner"}, "runner": {"hakuriver.host", "hakuriver.client"},
             "host": {"hakuriver.runner", "hakuriver.client"}}
    for layer, forbidden in rules.items():
        for path in (SRC / layer).glob("*.py"):
            bad = {m for m in imports(path) if any(m.startswith(f) for f in forbidden)}
            assert not bad, f"{layer}/{path.name} imports {bad}"


def test_only_the_store_touches_sqlite():
    users = [p for p in SRC.rglob("*.py") if "sqlite3" in imports(p)]
    assert [p.relative_to(SRC).as_posix() for p in users] == ["host/store.py"]


def test_client_does_not_load_the_server_stack():
    heavy = ("starlette", "uvicorn", "psutil", "sqlite3", "asyncio", "msgspec", "http.client", "dataclasses")
    code = f"import sys, hakuriver.client.cli; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
