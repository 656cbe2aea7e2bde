"""Fixtures of the repository unit tests: one small publish (nested catalogs two deep, a
hardlink pair, a chunked file, a symlink, a directory of 25 files) shared by the session
and edited only through private copies (`Catalogs`), and an in-memory `ObjectSource`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pycvmfs.errors import BudgetExceededError, NotFoundError
from pycvmfs.network.sink import VerifyingSink, over_budget
from pycvmfs.repository.source import DEFAULT_FETCH_BYTES, check_relative
from tests.catalog_files import Catalogs
from tests.publish_helpers import Keys, pseudo_random, run_publish

CHUNKED_SIZE = 200_000  # above the 64 KiB largest chunk of the test publishes
MANY = 25  # files in /many


@pytest.fixture(scope="session")
def published(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> Path:
    base = tmp_path_factory.mktemp("repository-units")
    source = base / "src"
    for name in ("top.txt", "nested/in.txt", "nested/deeper/leaf/x", "nested/deeper/y"):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_text(name)
    (source / "nested/.cvmfscatalog").write_bytes(b"")
    (source / "nested/deeper/leaf/.cvmfscatalog").write_bytes(b"")
    (source / "hard-a").write_text("linked")
    os.link(source / "hard-a", source / "hard-b")
    (source / "big.bin").write_bytes(pseudo_random(7, CHUNKED_SIZE))
    os.symlink("top.txt", source / "sym")
    (source / "many").mkdir()
    for i in range(MANY):
        (source / "many" / f"f{i:02}").write_text(str(i))
    run_publish(source, base / "storage", keys)
    return base / "storage"


@pytest.fixture
def catalogs(published: Path, tmp_path: Path) -> Catalogs:
    return Catalogs(published, tmp_path / "catalogs")


class MemorySource:
    """An `ObjectSource` over a dict of path -> bytes, with the same budgets as the real
    sources; it records what was fetched (the trust chain's order is checked on it)."""

    def __init__(self, files: dict[str, bytes] | None = None) -> None:
        self.files = dict(files or {})
        self.fetched: list[str] = []
        self.closed = False

    def _get(self, path: str) -> bytes:
        self.fetched.append(check_relative(path))
        if path not in self.files:
            raise NotFoundError(f"memory:{path}: no such file")
        return self.files[path]

    def fetch(self, path: str, *, max_bytes: int = DEFAULT_FETCH_BYTES) -> bytes:
        data = self._get(path)
        if len(data) > max_bytes:
            raise BudgetExceededError(f"memory:{path}: more than {max_bytes} bytes")
        return data

    def fetch_into(self, path: str, sink: VerifyingSink) -> None:
        data = self._get(path)
        sink.reset()
        if len(data) > sink.budget:
            raise BudgetExceededError(f"memory:{path}: " + over_budget(len(data), sink.budget))
        sink.write(data)
        sink.verify()

    def describe(self) -> str:
        return "memory"

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def memory_source() -> MemorySource:
    return MemorySource()
