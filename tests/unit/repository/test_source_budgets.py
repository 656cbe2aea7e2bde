"""Local sources and the no-cache object loader keep the same byte budgets as the network:
a file larger than its budget is refused unread, objects stream through the VerifyingSink,
and file objects come back as files, not bytes."""

from __future__ import annotations

from pathlib import Path

import pytest

from pycvmfs.errors import (
    BudgetExceededError,
    DecompressionError,
    HashMismatchError,
    NotFoundError,
)
from pycvmfs.format.compression import Compression, make_object
from pycvmfs.format.hashes import Algorithm, ContentHash, Suffix
from pycvmfs.network.sink import MemoryDestination, VerifyingSink
from pycvmfs.repository.objects import ObjectLoader, temporary_loader
from pycvmfs.repository.source import LocalSource
from tests.zlib_bomb import zlib_bomb

FQRN = "budget.example.org"


def store(storage: Path, digest: ContentHash, stored: bytes, suffix: Suffix = Suffix.NONE
          ) -> str:
    path = digest.object_path(suffix)
    (storage / path).parent.mkdir(parents=True, exist_ok=True)
    (storage / path).write_bytes(stored)
    return path


class Recording(VerifyingSink):
    """Counts the blocks a source wrote (a refused file must write none)."""

    written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)
        super().write(data)


def test_fetch_refuses_a_file_over_its_budget(tmp_path: Path) -> None:
    (tmp_path / ".cvmfspublished").write_bytes(b"x" * 100)
    source = LocalSource(tmp_path)
    assert source.fetch(".cvmfspublished", max_bytes=100) == b"x" * 100
    with pytest.raises(BudgetExceededError, match="more than 99 bytes"):
        source.fetch(".cvmfspublished", max_bytes=99)
    with pytest.raises(NotFoundError):
        source.fetch(".cvmfswhitelist")


def test_fetch_into_refuses_a_file_over_the_sink_budget_unread(tmp_path: Path) -> None:
    data = b"186 bytes " * 18 + b"......"
    digest, stored = make_object(data, compression=Compression.NONE)
    path = store(tmp_path, digest, stored + b"and more")  # longer than the catalog says
    out = MemoryDestination()
    sink = Recording(digest, Compression.NONE, out, expected_size=len(data))
    with pytest.raises(BudgetExceededError, match=f"over the download budget of {len(data)}"):
        LocalSource(tmp_path).fetch_into(path, sink)
    assert sink.written == 0 and len(out) == 0


def test_fetch_into_verifies(tmp_path: Path) -> None:
    data = b"hello " * 1000
    digest, stored = make_object(data)
    good = store(tmp_path, digest, stored)
    out = MemoryDestination()
    with VerifyingSink(digest, Compression.ZLIB, out, expected_size=len(data)) as sink:
        LocalSource(tmp_path).fetch_into(good, sink)
    assert out.getvalue() == data
    other = ContentHash.of(Algorithm.SHA1, b"another object")
    wrong = store(tmp_path, other, stored)
    with pytest.raises(HashMismatchError), \
            VerifyingSink(other, Compression.ZLIB, MemoryDestination(),
                          expected_size=len(data)) as sink:
        LocalSource(tmp_path).fetch_into(wrong, sink)


BOOKKEEPING = {".pycvmfs-owner", ".cvmfscache", "lock_cachedb"}


def stored_files(loader: ObjectLoader) -> list[Path]:
    """Every file in the loader's store but its own bookkeeping (no partial downloads)."""
    directory = loader.fetcher.host.config.directory
    return [p for p in directory.rglob("*") if p.is_file() and p.name not in BOOKKEEPING]


def test_objects_open_gives_a_verified_file(tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    data = bytes(range(256)) * 40_000  # 10 MB
    digest, stored = make_object(data)
    store(storage, digest, stored)
    loader = temporary_loader(LocalSource(storage), FQRN, parent=tmp_path / "work")
    with loader.open(digest, Suffix.NONE, what="file /x", compression=Compression.ZLIB,
                     expected_size=len(data)) as fh:
        assert fh is not None
        assert fh.pread(5, 0) == data[:5]
        assert fh.pread(10, len(data) - 3) == data[-3:]
    with loader.open(digest, Suffix.NONE, what="file /x", compression=Compression.ZLIB,
                     expected_size=len(data)) as fh:  # a hit: the stored copy, whole
        assert fh is not None
        assert fh.pread(len(data) + 1, 0) == data
    assert [p.name for p in stored_files(loader)] == [str(digest)[2:]]  # the verified copy
    loader.close()
    assert list((tmp_path / "work").iterdir()) == []  # the temporary store is gone


def test_a_bomb_catalog_under_a_wrong_hash_is_never_inflated(tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    name = ContentHash.of(Algorithm.SHA1, b"the catalog the manifest names")
    store(storage, name, zlib_bomb(1024), Suffix.CATALOG)
    loader = temporary_loader(LocalSource(storage), FQRN, parent=tmp_path / "work")
    with pytest.raises(HashMismatchError, match="root catalog"):
        loader.database(name, Suffix.CATALOG, "root catalog")
    assert stored_files(loader) == []
    loader.close()


def test_a_catalog_over_the_cap_names_the_setting(tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    bomb = zlib_bomb(8)
    digest = ContentHash.of(Algorithm.SHA1, bomb)  # a "valid" catalog of 8 MiB
    store(storage, digest, bomb, Suffix.CATALOG)
    loader = temporary_loader(LocalSource(storage), FQRN, parent=tmp_path / "work",
                              max_catalog_bytes=4 << 20)
    with pytest.raises(DecompressionError, match="PYCVMFS_MAX_CATALOG_MB") as info:
        loader.database(digest, Suffix.CATALOG, "root catalog")
    assert "beyond 4194304 bytes" in str(info.value)
    assert stored_files(loader) == []
    loader.close()
