"""Reads without an OPEN (FUSE no-open, `RepositoryVFS.read_unopened`): handle 0 names
the inode, whose file is opened at its first read, kept among the most recent, closed when
the kernel forgets the inode; a revision change keeps the old content of the inodes it
replaces. And the table underneath (`OpenFiles`)."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from pathlib import Path

import pytest

from pycvmfs.fs.open_files import OpenFiles
from pycvmfs.fs.vfs import ROOT_INODE, RepositoryVFS
from pycvmfs.repository.repository import Repository
from tests.unit.fs.test_vfs import _errno, _ino, _open


@pytest.fixture
def vfs(tmp_path: Path) -> Iterator[RepositoryVFS]:
    repo = _open(tmp_path, tag="v1")
    made = RepositoryVFS(repo)
    made.track_lookups()
    made.read_unopened()
    yield made
    made.close()
    made.repository.close()
    repo.close()


def test_handle_zero_reads_the_inode(vfs: RepositoryVFS) -> None:
    repo = vfs.repository
    whole = repo.read("/data/random.bin")  # chunked
    ino = _ino(vfs, "data/random.bin")
    for offset, size in [(0, 4096), (len(whole) - 100, 4096), (700_000, 131072)]:
        assert vfs.read(0, offset, size, ino) == whole[offset:offset + size]
    readme = _ino(vfs, "README.txt")
    assert vfs.read_nowait(0, 0, 100, readme) is None  # not in the cache yet
    assert vfs.read(0, 0, 100, readme) == repo.read("/README.txt")
    assert vfs.read_nowait(0, 0, 100, readme) == repo.read("/README.txt")
    assert vfs.stats.nopen == 2  # one open per inode, not per read
    assert vfs._gauges()["open_files"] == 2
    vfs.forget([(readme, 1)])  # the kernel let go of it: its file closes
    assert vfs._gauges()["open_files"] == 1
    assert _errno(vfs.read, 0, 0, 10, _ino(vfs, "docs")) == errno.EISDIR
    vfs.revoke("blacklisted")
    assert _errno(vfs.read, 0, 0, 10, ino) == errno.EIO
    assert vfs.read_nowait(0, 0, 10, ino) is None


def test_a_replaced_inode_reads_its_old_content(tmp_path: Path, vfs: RepositoryVFS) -> None:
    """The kernel holds README.txt's inode (some process may have it open, unread), then
    a revision changes the file: the old inode still reads the old bytes, as an open
    handle does, until the kernel forgets it; the new inode reads the new ones."""
    old_bytes = vfs.repository.read("/README.txt")
    readme = _ino(vfs, "README.txt")
    vfs.subscribe(vfs.revision_changes)  # what an adapter's kernel cache runs at a swap
    new = _open(tmp_path / "v2", tag="v2")
    vfs.set_repository(new)
    new_bytes = new.read("/README.txt")
    assert new_bytes != old_bytes
    assert vfs.read(0, 0, 1000, readme) == old_bytes
    assert vfs.getattr(readme).size == len(old_bytes)
    fresh = _ino(vfs, "README.txt")
    assert fresh != readme and vfs.read(0, 0, 1000, fresh) == new_bytes
    vfs.forget([(readme, 1)])
    assert _errno(vfs.read, 0, 0, 10, readme) == errno.ESTALE


def test_without_the_swap_pass_a_replaced_inode_is_stale(tmp_path: Path,
                                                         vfs: RepositoryVFS) -> None:
    """Nobody ran `revision_changes`: the old content is not known, and a read of the old
    inode is refused (ESTALE), never answered with the new bytes."""
    readme = _ino(vfs, "README.txt")
    vfs.set_repository(_open(tmp_path / "v2", tag="v2"))
    assert _errno(vfs.read, 0, 0, 10, readme) == errno.ESTALE


class FakeFile:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_inode_files_are_bounded_and_retained_ones_stay() -> None:
    files = OpenFiles(inode_files=2)
    a, b, c = FakeFile(), FakeFile(), FakeFile()
    assert files.adopt(1, a) is a  # type: ignore[arg-type]
    assert files.adopt(2, b) is b  # type: ignore[arg-type]
    assert files.of_inode(1) is a  # now the most recent: 2 goes first
    late = FakeFile()
    assert files.adopt(1, late) is a and late.closed  # type: ignore[arg-type]
    files.adopt(3, c)  # type: ignore[arg-type]
    assert b.closed and files.of_inode(2) is None and not a.closed
    files.retain(1, FakeFile())  # type: ignore[arg-type]
    assert files.of_inode(1) is a  # the open file already reads the old content
    for ino in (4, 5, 6):
        files.adopt(ino, FakeFile())  # type: ignore[arg-type]
    assert files.of_inode(1) is a and not a.closed  # retained: out of the bound
    files.forget([1])
    assert a.closed and files.holding(1) is None
    files.close()
    assert c.closed and len(files) == 0


def test_a_file_closed_during_a_read_keeps_nothing_open(vfs: RepositoryVFS) -> None:
    repo: Repository = vfs.repository
    opened = repo.open_file("/README.txt")
    opened.close()
    assert opened.read(0, 10) == repo.read("/README.txt")[:10]
    assert opened._slots == {}  # the cache file this read opened is closed again
    assert vfs.lookup(ROOT_INODE, "README.txt").size > 0
