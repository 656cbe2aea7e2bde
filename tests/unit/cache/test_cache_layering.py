"""R1 for the cache box: no network/repository/fs imports (fetcher.py is the one allowed
joint to pycvmfs.network); the pure planner does no I/O."""

from __future__ import annotations

from pathlib import Path

from tests.unit.test_layering import imports_of

CACHE = Path(__file__).resolve().parents[3] / "pycvmfs" / "cache"
FORBIDDEN = ("pycvmfs.network", "pycvmfs.repository", "pycvmfs.fs", "pycvmfs.cli",
             "pycvmfs.publisher")
PURE_FORBIDDEN = ("os", "sqlite3", "threading", "fcntl", "pycvmfs.cache.store")


def test_cache_imports_no_upper_layer() -> None:
    sources = sorted(CACHE.glob("*.py"))
    assert sources
    offences = [
        f"{src.name} imports {name}"
        for src in sources
        for name in imports_of(src)
        if src.name != "fetcher.py" and any(name == f or name.startswith(f + ".")
                                            for f in FORBIDDEN)
    ]
    assert offences == []


def test_eviction_planner_is_pure() -> None:
    names = imports_of(CACHE / "eviction.py")
    assert not [n for n in names if n in PURE_FORBIDDEN]
    assert "open(" not in (CACHE / "eviction.py").read_text()
