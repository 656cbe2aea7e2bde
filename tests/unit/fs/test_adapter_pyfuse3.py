"""The pyfuse3 adapter's handlers against a fake VFS, called with trio directly (no mount):
entries and negative entries, errnos from `errno_of` for any exception (a bug logged, an
expected error not), READDIRPLUS handing out what fits and taking back the rest, what
needs a download run in a worker thread, open/read/release and forget."""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

pyfuse3 = pytest.importorskip("pyfuse3")
trio = pytest.importorskip("trio")

from pycvmfs.errors import HashMismatchError, NotFoundError  # noqa: E402
from pycvmfs.fs import adapter_pyfuse3  # noqa: E402
from pycvmfs.fs.adapter_pyfuse3 import Pyfuse3Operations  # noqa: E402
from pycvmfs.fs.vfs import FsError  # noqa: E402
from tests.fake_vfs import FakeVFS  # noqa: E402

_T = TypeVar("_T")
TIMEOUT = 60.0
TREE = {"a/x.txt": b"x" * 10, "a/y.txt": b"yy", "b.txt": b"bee"}


def run(func: Callable[..., Awaitable[_T]], *args: Any) -> _T:
    return trio.run(func, *args)  # type: ignore[no-any-return]


@pytest.fixture
def invalidated(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    calls: list[tuple[str, Any]] = []
    monkeypatch.setattr(pyfuse3, "invalidate_inode",
                        lambda ino, attr_only=False: calls.append(("inode", (ino, attr_only))))
    monkeypatch.setattr(pyfuse3, "invalidate_entry",
                        lambda parent, name: calls.append(("entry", (parent, name))))
    return calls


@pytest.fixture
def vfs() -> FakeVFS:
    return FakeVFS(TREE, {"link": "b.txt"})


@pytest.fixture
def ops(vfs: FakeVFS, invalidated: list[tuple[str, Any]]) -> Pyfuse3Operations:
    return Pyfuse3Operations(vfs, TIMEOUT)  # type: ignore[arg-type]


def test_lookup_answers_an_entry_and_counts_it(ops: Pyfuse3Operations, vfs: FakeVFS) -> None:
    entry = run(ops.lookup, 1, b"b.txt")
    assert (entry.st_ino, entry.st_size, entry.entry_timeout) == (vfs.inodes["b.txt"], 3,
                                                                  TIMEOUT)
    assert vfs.tracking and vfs.held == {vfs.inodes["b.txt"]: 1}


@pytest.mark.parametrize("missing", [FsError(errno.ENOENT), NotFoundError("gone")])
def test_a_missing_name_is_a_negative_entry_dropped_when_it_appears(
        ops: Pyfuse3Operations, vfs: FakeVFS, invalidated: list[tuple[str, Any]],
        missing: Exception) -> None:
    vfs.failures[1] = missing
    entry = run(ops.lookup, 1, b"new")
    assert (entry.st_ino, entry.entry_timeout) == (0, TIMEOUT)
    del vfs.failures[1]
    vfs.inodes["new"] = 99
    for listener in vfs.listeners:
        listener()
    assert invalidated == [("entry", (1, b"new"))]


@pytest.mark.parametrize(("raised", "code", "logged"), [
    (FsError(errno.EACCES), errno.EACCES, False),
    (HashMismatchError("bad"), errno.EIO, False),
    (OSError(errno.ENFILE, "table full"), errno.ENFILE, False),
    (RuntimeError("a bug"), errno.EIO, True),
])
def test_any_error_is_answered_with_errno_of(ops: Pyfuse3Operations, vfs: FakeVFS,
                                             caplog: pytest.LogCaptureFixture,
                                             raised: Exception, code: int,
                                             logged: bool) -> None:
    vfs.failures[1] = raised
    with caplog.at_level(logging.ERROR):
        for handler, args in ((ops.lookup, (1, b"b.txt")), (ops.getattr, (1,)),
                              (ops.opendir, (1, None)), (ops.listxattr, (1, None))):
            with pytest.raises(pyfuse3.FUSEError) as caught:
                run(handler, *args)
            assert caught.value.errno == code
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == (4 if logged else 0)
    assert all(r.exc_info for r in errors)


def test_what_needs_a_download_runs_in_a_worker_thread(ops: Pyfuse3Operations,
                                                       vfs: FakeVFS) -> None:
    vfs.remote.add("b.txt")  # inline() refuses it: the lookup moves to a thread
    assert run(ops.lookup, 1, b"b.txt").st_ino == vfs.inodes["b.txt"]


class Token:
    """What pyfuse3.readdir_reply fills: room for `room` entries."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.entries: list[tuple[bytes, int, int]] = []

    def reply(self, token: Token, name: bytes, entry: Any, offset: int) -> bool:
        if len(self.entries) == self.room:
            return False
        self.entries.append((name, entry.st_ino, offset))
        return True


def _readdir(ops: Pyfuse3Operations, monkeypatch: pytest.MonkeyPatch, room: int,
             start: int = 0) -> Token:
    token = Token(room)
    monkeypatch.setattr(pyfuse3, "readdir_reply", token.reply)
    handle = run(ops.opendir, 1, None)
    try:
        run(ops.readdir, handle, start, token)
    finally:
        run(ops.releasedir, handle)
    return token


def test_readdirplus_hands_out_what_fits(ops: Pyfuse3Operations, vfs: FakeVFS,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    token = _readdir(ops, monkeypatch, room=3)
    assert [(n, off) for n, _, off in token.entries] == [(b".", 1), (b"..", 2), (b"a", 3)]
    assert vfs.held == {vfs.inodes["a"]: 1}
    token = _readdir(ops, monkeypatch, room=10, start=3)
    assert [n for n, _, _ in token.entries] == [b"b.txt", b"link"]
    assert vfs.held == {vfs.inodes[n]: 1 for n in ("a", "b.txt", "link")}
    assert vfs.open_dirs == {}


def test_a_listing_that_fails_hands_out_nothing(ops: Pyfuse3Operations, vfs: FakeVFS,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}

    def failing(token: Any, name: bytes, entry: Any, offset: int) -> bool:
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("a bug in the reply")
        return True

    monkeypatch.setattr(pyfuse3, "readdir_reply", failing)
    handle = run(ops.opendir, 1, None)
    with pytest.raises(pyfuse3.FUSEError) as caught:
        run(ops.readdir, handle, 0, None)
    assert caught.value.errno == errno.EIO and vfs.held == {}
    vfs.failures[vfs.inodes["link"]] = HashMismatchError("bad row")
    monkeypatch.setattr(pyfuse3, "readdir_reply", lambda *args: True)
    with pytest.raises(pyfuse3.FUSEError):
        run(ops.readdir, handle, 0, None)
    assert vfs.held == {}


def test_open_read_release_and_direct_io(ops: Pyfuse3Operations, vfs: FakeVFS) -> None:
    info = run(ops.open, vfs.inodes["a/x.txt"], os.O_RDONLY, None)
    assert info.keep_cache and not info.direct_io
    assert run(ops.read, info.fh, 3, 4) == b"xxxx"
    vfs.page_cached = False
    assert run(ops.read, info.fh, 8, 100) == b"xx"  # from a worker thread
    run(ops.release, info.fh)
    vfs.direct.add("b.txt")
    info = run(ops.open, vfs.inodes["b.txt"], os.O_RDONLY, None)
    assert info.direct_io and not info.keep_cache
    with pytest.raises(pyfuse3.FUSEError) as caught:
        run(ops.open, vfs.inodes["a"], os.O_RDONLY, None)
    assert caught.value.errno == errno.EISDIR


def test_forget_gives_the_lookups_back(ops: Pyfuse3Operations, vfs: FakeVFS) -> None:
    for _ in range(2):
        run(ops.lookup, 1, b"b.txt")
    run(ops.lookup, 1, b"a")
    run(ops.forget, [(vfs.inodes["b.txt"], 2), (vfs.inodes["a"], 1)])
    assert vfs.held == {}


def test_xattrs_readlink_statfs(ops: Pyfuse3Operations, vfs: FakeVFS) -> None:
    assert run(ops.getxattr, 1, b"user.pycvmfs.test", None) == b"value"
    assert run(ops.listxattr, 1, None) == [b"user.pycvmfs.test", b"user.other"]
    assert run(ops.readlink, vfs.inodes["link"], None) == b"b.txt"
    assert run(ops.statfs, None).f_namemax == 255


def test_the_adapter_uses_the_vfs_facade_only() -> None:
    source = Path(adapter_pyfuse3.__file__).read_text()
    assert "catalog_tree" not in source and "no_loading" not in source
