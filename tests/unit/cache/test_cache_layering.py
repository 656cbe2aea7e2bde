"""R1 for the cache box: no network/repository/fs imports (fetcher.py, the one allowed
joint to pycvmfs.network, does not exist yet); the pure planner does no I/O."""

from __future__ import annotations

import ast
from pathlib import Path

CACHE = Path(__file__).resolve().parents[3] / "pycvmfs" / "cache"
FORBIDDEN = ("pycvmfs.network", "pycvmfs.repository", "pycvmfs.fs", "pycvmfs.cli",
             "pycvmfs.publisher")
PURE_FORBIDDEN = ("os", "sqlite3", "threading", "fcntl", "pycvmfs.cache.store")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_cache_imports_no_upper_layer() -> None:
    sources = sorted(CACHE.glob("*.py"))
    assert sources
    offences = [
        f"{src.name} imports {name}"
        for src in sources
        for name in _imports(src)
        if src.name != "fetcher.py" and any(name == f or name.startswith(f + ".")
                                            for f in FORBIDDEN)
    ]
    assert offences == []


def test_eviction_planner_is_pure() -> None:
    names = _imports(CACHE / "eviction.py")
    assert not [n for n in names if n in PURE_FORBIDDEN]
    assert "open(" not in (CACHE / "eviction.py").read_text()
