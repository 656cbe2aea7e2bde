"""The VFS façade over the bundled demo repository, without a mount: what each request
answers, the errno of every failure (one policy: `fs.errors`), revision swaps and
revocation told to subscribers, and open files that keep reading what they opened."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from pycvmfs.errors import CacheFullError, FetchError, HashMismatchError
from pycvmfs.format.certificates import load_public_key
from pycvmfs.fs.attributes import MountOptions
from pycvmfs.fs.errors import errno_of
from pycvmfs.fs.vfs import ROOT_INODE, FsError, RepositoryVFS
from pycvmfs.repository.open import RevisionSelector, open_repository
from pycvmfs.repository.repository import Repository
from pycvmfs.repository.source import LocalSource

ROOT = Path(__file__).resolve().parents[3]
DEMO = ROOT / "testdata" / "repo"
FQRN = "demo.pycvmfs.org"
KEY = load_public_key((ROOT / "testdata" / "keys" / f"{FQRN}.pub").read_bytes())


def _open(tmp_path: Path, tag: str | None = None) -> Repository:
    return open_repository(LocalSource(DEMO), FQRN, [KEY], RevisionSelector.of(tag=tag),
                           workdir=tmp_path)


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Repository]:
    with _open(tmp_path) as opened:
        yield opened


@pytest.fixture
def vfs(repo: Repository) -> Iterator[RepositoryVFS]:
    made = RepositoryVFS(repo, MountOptions(environment={"DEMO_ARCH": "aarch64"}))
    made.track_lookups()
    yield made
    made.close()


def _ino(vfs: RepositoryVFS, path: str) -> int:
    ino = ROOT_INODE
    for name in path.strip("/").split("/"):
        ino = vfs.lookup(ino, name).ino
    return ino


def _errno(call: object, *args: object) -> int:
    with pytest.raises(Exception) as info:
        call(*args)  # type: ignore[operator]
    return errno_of(info.value)


def test_metadata_as_the_reference_reports_it(vfs: RepositoryVFS) -> None:
    root = vfs.getattr(ROOT_INODE)
    assert stat.S_ISDIR(root.mode) and root.ino == ROOT_INODE
    readme = vfs.lookup(ROOT_INODE, "README.txt")
    assert stat.S_ISREG(readme.mode) and readme.size == 44 and readme.uid == os.getuid()
    assert vfs.readlink(_ino(vfs, "links/arch-lib")) == b"aarch64/lib"  # $(VAR) expanded
    assert vfs.lookup(_ino(vfs, "links"), "arch-lib").size == len(b"aarch64/lib")
    guide, hard = _ino(vfs, "docs/guide.txt"), _ino(vfs, "docs/guide-hardlink.txt")
    assert guide == hard and vfs.getattr(guide).nlink == 2
    names = [name for name, _ in vfs.listdir(_ino(vfs, "docs"))]
    assert names == [".", "..", "empty.txt", "guide-hardlink.txt", "guide.txt", "notes.txt"]
    assert vfs.getxattr(_ino(vfs, "docs/notes.txt"), "user.author") == b"pycvmfs"
    assert vfs.getxattr(ROOT_INODE, "user.fqrn") == FQRN.encode()
    assert "user.fqrn" in vfs.listxattr(ROOT_INODE)
    assert vfs.statfs().files > 20


def test_every_failure_has_its_errno(vfs: RepositoryVFS) -> None:
    assert _errno(vfs.lookup, ROOT_INODE, "missing") == errno.ENOENT
    assert _errno(vfs.lookup, ROOT_INODE, "..") == errno.ENOENT
    readme = _ino(vfs, "README.txt")
    assert _errno(vfs.open, readme, os.O_WRONLY) == errno.EROFS
    assert _errno(vfs.open, _ino(vfs, "docs"), 0) == errno.EISDIR
    assert _errno(vfs.open, _ino(vfs, "special/fifo"), 0) == errno.EINVAL
    assert _errno(vfs.readlink, readme) == errno.EINVAL
    assert _errno(vfs.getxattr, readme, "user.nothing") == errno.ENODATA
    assert _errno(vfs.getattr, 10**12) == errno.ESTALE
    assert _errno(vfs.read, 12345, 0, 10) == errno.EBADF


@pytest.mark.parametrize(("error", "code"), [
    (CacheFullError("cache full"), errno.ENOSPC),  # a full cache reaches the caller
    (FetchError("every source failed"), errno.EIO),
    (HashMismatchError("bad bytes"), errno.EIO),
    (OSError(errno.EMFILE, "Too many open files"), errno.EMFILE),
])
def test_a_failed_read_answers_the_errno_of_its_cause(
        vfs: RepositoryVFS, repo: Repository, monkeypatch: pytest.MonkeyPatch,
        error: Exception, code: int) -> None:
    handle = vfs.open(_ino(vfs, "data/random.bin"), 0)

    def failing(*args: object, **kwargs: object) -> object:
        raise error

    monkeypatch.setattr(repo.loader, "open", failing)
    with pytest.raises(FsError) as info:
        vfs.read(handle, 0, 4096)
    assert info.value.errno == code
    expected_io_errors = 1 if code == errno.EIO else 0
    assert vfs.stats.nioerr == expected_io_errors
    vfs.release(handle)


def test_reads_match_the_reader_across_chunks(vfs: RepositoryVFS, repo: Repository) -> None:
    whole = repo.read("/data/random.bin")
    handle = vfs.open(_ino(vfs, "data/random.bin"), 0)
    try:
        for offset, size in [(0, 4096), (len(whole) - 100, 4096), (700_000, 131072)]:
            assert vfs.read(handle, offset, size) == whole[offset:offset + size]
    finally:
        vfs.release(handle)


class Recorder:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


def test_a_swap_and_a_revocation_reach_subscribers(tmp_path: Path) -> None:
    old = _open(tmp_path, tag="v1")
    vfs = RepositoryVFS(old)
    vfs.track_lookups()
    dropped = Recorder()
    vfs.subscribe(dropped)
    readme = _ino(vfs, "README.txt")
    unchanged = _ino(vfs, "docs/guide.txt")
    handle = vfs.open(readme, 0)
    before = vfs.read(handle, 0, 100)
    new = _open(tmp_path, tag="v2")
    vfs.set_repository(new)
    assert dropped.calls == 1 and vfs.draining()
    assert vfs.read(handle, 0, 100) == before  # an open file reads what it opened
    assert _ino(vfs, "docs/guide.txt") == unchanged  # unchanged: same inode, pages kept
    assert _ino(vfs, "README.txt") != readme  # changed: a fresh inode
    vfs.revoke("revision 2 is blacklisted")
    assert dropped.calls == 2
    assert _errno(vfs.lookup, ROOT_INODE, "README.txt") == errno.EIO
    assert _errno(vfs.read, handle, 0, 10) == errno.EIO
    vfs.revoke(None)
    assert vfs.lookup(ROOT_INODE, "README.txt").size > 0
    vfs.unsubscribe(dropped)
    vfs.release(handle)
    vfs.close()
    old.close()
    new.close()
