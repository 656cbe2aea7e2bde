"""The architecture as a test: pure formats import no I/O, the publisher and the reader
share `format/` and nothing else (style guide R1)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "pycvmfs"

FORBIDDEN = {
    "pycvmfs.format": {"socket", "sqlite3", "urllib3", "requests", "threading", "subprocess",
                       "pycvmfs.network", "pycvmfs.cache", "pycvmfs.repository", "pycvmfs.fs",
                       "pycvmfs.publisher", "pycvmfs.cli"},
    "pycvmfs.publisher": {"pycvmfs.network", "pycvmfs.cache", "pycvmfs.repository",
                          "pycvmfs.fs", "pycvmfs.cli", "urllib3"},
    "pycvmfs.repository": {"pycvmfs.publisher", "pycvmfs.fs", "pycvmfs.cli"},
    # cache/fetcher.py is the one joint between cache and network (its verifying sink)
    "pycvmfs.cache": {"pycvmfs.network", "pycvmfs.repository", "pycvmfs.fs", "pycvmfs.cli",
                      "pycvmfs.publisher"},
    "pycvmfs.fs": {"pycvmfs.publisher", "pycvmfs.cli"},
    "pycvmfs.network": {"pycvmfs.cache", "pycvmfs.repository", "pycvmfs.fs", "pycvmfs.cli",
                        "pycvmfs.publisher"},
    # replication joins the reader's trust and downloads to the publisher's storages
    "pycvmfs.replica": {"pycvmfs.fs", "pycvmfs.cli", "pycvmfs.cache", "pycvmfs.images"},
    # container images feed the publisher; they never reach into a mount or the CLI
    "pycvmfs.images": {"pycvmfs.fs", "pycvmfs.cli", "pycvmfs.cache", "pycvmfs.network"},
    # names and paths of images: pure, like format/
    "pycvmfs.images.reference": {"socket", "urllib3", "subprocess", "os", "pathlib"},
    "pycvmfs.images.layout": {"socket", "urllib3", "subprocess", "os", "pathlib"},
}
CONFIG_MODULES = ("pycvmfs.config", "pycvmfs.config_defaults", "pycvmfs.config_shell",
                  "pycvmfs.config_files", "pycvmfs.config_values", "pycvmfs.config_keys",
                  "pycvmfs.config_public_keys")


def imports_of(path: Path) -> set[str]:
    """Absolute module names a source file imports."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


ALLOWED = {("pycvmfs.cache.fetcher", "pycvmfs.network")}  # the one joint, named


def test_forbiddenimports_of() -> None:
    offences = []
    for source in PACKAGE.rglob("*.py"):
        module = ".".join(source.relative_to(PACKAGE.parent).with_suffix("").parts)
        for layer, forbidden in FORBIDDEN.items():
            if module == layer or module.startswith(layer + "."):
                for name in imports_of(source):
                    hit = next((f for f in forbidden
                                if name == f or name.startswith(f + ".")), None)
                    if hit is not None and (module, hit) not in ALLOWED:
                        offences.append(f"{module} imports {name}")
    assert offences == []


def test_format_does_no_file_io() -> None:
    for source in (PACKAGE / "format").rglob("*.py"):
        text = source.read_text()
        assert "open(" not in text.replace("open_object(", ""), source


def test_config_depends_on_errors_only() -> None:
    for module in CONFIG_MODULES:
        source = PACKAGE.parent / (module.replace(".", "/") + ".py")
        ours = {n for n in imports_of(source) if n.startswith("pycvmfs")}
        assert ours <= {"pycvmfs.errors", *CONFIG_MODULES}, module
