"""The lowlevel adapter's handlers against a fake libfuse (it records every `fuse_reply_*`
and notification) and a fake VFS: one reply per request, errnos from `errno_of` (a bug
logged, an expected error not), lookups handed out and taken back exactly, the
cache flags of each libfuse version, what waits for a download answered from the pool,
and the kernel-cache bookkeeping at a revision change. No mount, no libfuse loaded."""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from pycvmfs.errors import ConfigError, HashMismatchError, NotFoundError
from pycvmfs.fs import _libfuse3, adapter_lowlevel
from pycvmfs.fs._libfuse3 import (
    FI_DIRECT_IO,
    FI_KEEP_CACHE,
    FUSE_CAP_CACHE_SYMLINKS,
    FUSE_CAP_NO_OPEN_SUPPORT,
    FUSE_CAP_SPLICE_WRITE,
    ConnInfo,
    ConnInfo317,
    FileInfo,
    ForgetData,
    Libfuse3,
)
from pycvmfs.fs.adapter_lowlevel import LowlevelOperations
from pycvmfs.fs.lowlevel_session import Notifier
from pycvmfs.fs.mount import load_backend
from pycvmfs.fs.vfs import FsError
from tests.fake_vfs import FakeVFS

TIMEOUT = 60.0
REQ = 0x1234
DIRENT = struct.Struct("<QqI4x")  # the fake's dirent: ino, next offset, name length
PLUS_EXTRA = 128  # a fake READDIRPLUS entry is this much longer (the attributes)


class FakeFuse:
    """The libfuse functions the handlers call; records them; `failing` replies return
    -ENOENT (the request was interrupted)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.failing: set[str] = set()
        self.context = _libfuse3.FuseCtx(uid=0, gid=0, pid=4242, umask=0o22)

    def fuse_req_ctx(self, req: int) -> int:
        return ctypes.addressof(self.context)

    def _record(self, name: str, *args: Any) -> int:
        self.calls.append((name, args))
        return -errno.ENOENT if name in self.failing else 0

    def fuse_reply_err(self, req: int, err: int) -> int:
        return self._record("err", req, err)

    def fuse_reply_none(self, req: int) -> None:
        self._record("none", req)

    def fuse_reply_entry(self, req: int, packed: bytes) -> int:
        entry = _libfuse3.EntryParam.from_buffer_copy(packed)
        return self._record("entry", req, entry.ino, entry.attr.st_mode, entry.entry_timeout)

    def fuse_reply_attr(self, req: int, packed: bytes, timeout: float) -> int:
        attr = _libfuse3.Stat.from_buffer_copy(packed)
        return self._record("attr", req, attr.st_ino, attr.st_size, timeout)

    def fuse_reply_readlink(self, req: int, target: bytes) -> int:
        return self._record("readlink", req, target)

    def fuse_reply_open(self, req: int, fi: Any) -> int:
        return self._record("open", req, fi.contents.fh, fi.contents.bits)

    def fuse_reply_buf(self, req: int, data: Any, size: int) -> int:
        return self._record("buf", req, ctypes.string_at(data, size) if size else b"")

    def fuse_reply_data(self, req: int, vector: Any, flags: int) -> int:
        buf = vector._obj.buf[0]  # a ctypes.byref of one FuseBufvec
        assert buf.flags == _libfuse3.FUSE_BUF_IS_FD | _libfuse3.FUSE_BUF_FD_SEEK
        return self._record("data", req, os.pread(buf.fd, buf.size, buf.pos))

    def fuse_reply_xattr(self, req: int, size: int) -> int:
        return self._record("xattr", req, size)

    def fuse_reply_statfs(self, req: int, out: Any) -> int:
        s = ctypes.cast(out, ctypes.POINTER(_libfuse3.Statvfs)).contents
        return self._record("statfs", req, s.f_bsize, s.f_blocks, s.f_files)

    def _add(self, plus: bool, buf: int, room: int, name: bytes, packed: bytes,
             off: int) -> int:
        layout = _libfuse3.EntryParam if plus else _libfuse3.Stat
        ino = layout.from_buffer_copy(packed).ino if plus else \
            layout.from_buffer_copy(packed).st_ino
        record = DIRENT.pack(ino, off, len(name)) + name + (b"\0" * PLUS_EXTRA if plus else b"")
        record += b"\0" * (-len(record) % 8)
        if len(record) <= room:
            ctypes.memmove(buf, record, len(record))
        return len(record)

    def fuse_add_direntry(self, req: int, buf: int, room: int, name: bytes, packed: bytes,
                          off: int) -> int:
        return self._add(False, buf, room, name, packed, off)

    def fuse_add_direntry_plus(self, req: int, buf: int, room: int, name: bytes,
                               packed: bytes, off: int) -> int:
        return self._add(True, buf, room, name, packed, off)

    def fuse_lowlevel_notify_inval_inode(self, session: int, ino: int, off: int,
                                         length: int) -> int:
        return self._record("inval_inode", ino, off)

    def fuse_lowlevel_notify_inval_entry(self, session: int, parent: int, name: bytes,
                                         length: int) -> int:
        return self._record("inval_entry", parent, name)

    def replies(self, req: int = REQ) -> list[tuple[str, tuple[Any, ...]]]:
        return [(name, args[1:]) for name, args in self.calls
                if not name.startswith("inval") and args[0] == req]


def parse_dirents(data: bytes, plus: bool) -> list[tuple[str, int, int]]:
    out = []
    while data:
        ino, off, length = DIRENT.unpack_from(data)
        name = data[DIRENT.size:DIRENT.size + length].decode()
        size = DIRENT.size + length + (PLUS_EXTRA if plus else 0)
        size += -size % 8
        out.append((name, ino, off))
        data = data[size:]
    return out


TREE = {"a/x.txt": b"x" * 10, "a/y.txt": b"yy", "b.txt": b"bee"}


@pytest.fixture
def vfs() -> FakeVFS:
    return FakeVFS(TREE, {"link": "b.txt"}, remote={"far"})


@pytest.fixture
def fuse() -> FakeFuse:
    return FakeFuse()


def make_ops(fuse: FakeFuse, vfs: FakeVFS, version: int = 317,
             notifier: Notifier | None = None) -> LowlevelOperations:
    lib = Libfuse3(fuse, version)
    return LowlevelOperations(lib, vfs, TIMEOUT,  # type: ignore[arg-type]
                              notifier or Notifier(lib))


@pytest.fixture
def notifier(fuse: FakeFuse) -> Notifier:
    return Notifier(Libfuse3(fuse, 317))


@pytest.fixture
def ops(fuse: FakeFuse, vfs: FakeVFS, notifier: Notifier) -> Iterator[LowlevelOperations]:
    made = make_ops(fuse, vfs, notifier=notifier)
    yield made
    made.stop()


def call(ops: LowlevelOperations, name: str, *args: Any) -> None:
    """Through the C function pointer, as libfuse calls it."""
    getattr(ops.ops, name)(REQ, *args)


def wait_for_reply(fuse: FakeFuse, count: int = 1) -> None:
    deadline = time.monotonic() + 2.0
    while len(fuse.replies()) < count and time.monotonic() < deadline:
        time.sleep(0.002)


def file_info(**fields: Any) -> Any:
    return ctypes.pointer(FileInfo(**fields))


def test_an_unusable_libfuse_skips_the_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_libfuse3.LIBRARY_ENV, "/nonexistent/libfuse3.so.4")
    with pytest.raises(ConfigError, match="lowlevel: /nonexistent/libfuse3.so.4 not found"):
        load_backend("lowlevel")


def test_lookup_hands_out_one_entry(ops: LowlevelOperations, fuse: FakeFuse,
                                    vfs: FakeVFS) -> None:
    assert vfs.tracking
    call(ops, "lookup", 1, b"b.txt")
    ino = vfs.inodes["b.txt"]
    assert fuse.replies() == [("entry", (ino, vfs.attr_of("b.txt").mode, TIMEOUT))]
    assert vfs.held == {ino: 1}


@pytest.mark.parametrize("missing", [FsError(errno.ENOENT), NotFoundError("gone")])
def test_a_missing_name_is_a_negative_entry_remembered(ops: LowlevelOperations,
                                                        fuse: FakeFuse, vfs: FakeVFS,
                                                        notifier: Notifier,
                                                        missing: Exception) -> None:
    vfs.failures[1] = missing  # the VFS may raise a library error as well as an FsError
    call(ops, "lookup", 1, b"new")
    assert fuse.replies() == [("entry", (0, 0, TIMEOUT))]
    assert vfs.held == {}
    del vfs.failures[1]
    vfs.inodes["new"] = 99  # it appears in the next revision
    notifier.session = 1
    ops.kernel.invalidate_all()
    assert [args for name, args in fuse.calls if name == "inval_entry"] == [(1, b"new")]


@pytest.mark.parametrize(("raised", "code", "logged"), [
    (FsError(errno.EACCES), errno.EACCES, False),
    (HashMismatchError("bad"), errno.EIO, False),
    (OSError(errno.EMFILE, "too many"), errno.EMFILE, False),
    (OSError(errno.EPERM, "other"), errno.EIO, False),
    (RuntimeError("a bug"), errno.EIO, True),
])
def test_any_error_is_answered_with_errno_of(ops: LowlevelOperations, fuse: FakeFuse,
                                             vfs: FakeVFS, caplog: pytest.LogCaptureFixture,
                                             raised: Exception, code: int,
                                             logged: bool) -> None:
    vfs.failures[1] = raised
    with caplog.at_level(logging.ERROR):
        call(ops, "lookup", 1, b"b.txt")
        call(ops, "getattr", 1, None)
    assert fuse.replies() == [("err", (code,)), ("err", (code,))]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert bool(errors) == logged
    assert all(r.exc_info for r in errors)


def test_an_undelivered_lookup_is_taken_back(ops: LowlevelOperations, fuse: FakeFuse,
                                             vfs: FakeVFS) -> None:
    fuse.failing.add("entry")
    call(ops, "lookup", 1, b"b.txt")
    assert len(fuse.replies()) == 1 and vfs.held == {}


def test_what_needs_a_download_is_answered_from_the_pool(ops: LowlevelOperations,
                                                         fuse: FakeFuse,
                                                         vfs: FakeVFS) -> None:
    vfs.files["far"] = b"remote"
    vfs.inodes["far"] = 50
    vfs.paths[50] = "far"
    call(ops, "lookup", 1, b"far")  # WouldBlock inline: retried where blocking is fine
    wait_for_reply(fuse)
    assert fuse.replies() == [("entry", (50, vfs.attr_of("far").mode, TIMEOUT))]
    assert vfs.held == {50: 1}
    call(ops, "open", 50, file_info(flags=os.O_RDONLY))
    wait_for_reply(fuse, 2)
    name, (fh, bits) = fuse.replies()[1]
    assert name == "open" and vfs.open_handles[fh] == "far" and bits & FI_KEEP_CACHE


def test_getattr_readlink_statfs(ops: LowlevelOperations, fuse: FakeFuse,
                                 vfs: FakeVFS) -> None:
    call(ops, "getattr", vfs.inodes["a/x.txt"], None)
    call(ops, "readlink", vfs.inodes["link"])
    call(ops, "readlink", vfs.inodes["b.txt"])
    call(ops, "statfs", 1)
    assert fuse.replies() == [("attr", (vfs.inodes["a/x.txt"], 10, TIMEOUT)),
                              ("readlink", (b"b.txt",)), ("err", (errno.EINVAL,)),
                              ("statfs", (512, 1000, len(vfs.inodes)))]


def test_entry_timeout_is_zero_while_draining(ops: LowlevelOperations, fuse: FakeFuse,
                                              vfs: FakeVFS) -> None:
    vfs.draining_now = True
    call(ops, "getattr", 1, None)
    assert fuse.replies() == [("attr", (1, 4096, 0.0))]


def test_open_read_release(ops: LowlevelOperations, fuse: FakeFuse, vfs: FakeVFS) -> None:
    fi = file_info(flags=os.O_RDONLY)
    call(ops, "open", vfs.inodes["a/x.txt"], fi)
    (name, (fh, bits)), = fuse.replies()
    assert fi.contents.fh == fh and bits & FI_KEEP_CACHE and not bits & FI_DIRECT_IO
    call(ops, "read", vfs.inodes["a/x.txt"], 4, 3, fi)  # in the page cache: inline
    vfs.page_cached = False
    call(ops, "read", vfs.inodes["a/x.txt"], 100, 8, fi)  # from the pool
    wait_for_reply(fuse, 3)
    call(ops, "release", vfs.inodes["a/x.txt"], fi)
    assert fuse.replies()[1:] == [("buf", (b"xxxx",)), ("buf", (b"xx",)), ("err", (0,))]
    assert vfs.open_handles == {}


def test_reads_from_the_cache_are_spliced_when_the_kernel_takes_them(
        ops: LowlevelOperations, fuse: FakeFuse, vfs: FakeVFS) -> None:
    ops.splice = True  # as INIT sets it when the kernel offers FUSE_CAP_SPLICE_WRITE
    fi = file_info(flags=os.O_RDONLY)
    call(ops, "open", vfs.inodes["a/x.txt"], fi)
    call(ops, "read", vfs.inodes["a/x.txt"], 4, 3, fi)  # from the cache file's descriptor
    vfs.page_cached = False
    call(ops, "read", vfs.inodes["a/x.txt"], 100, 8, fi)  # not in the cache: copied
    wait_for_reply(fuse, 3)
    assert fuse.replies()[1:] == [("data", (b"xxxx",)), ("buf", (b"xx",))]


def test_direct_io_and_an_interrupted_open(ops: LowlevelOperations, fuse: FakeFuse,
                                           vfs: FakeVFS) -> None:
    vfs.direct.add("b.txt")
    call(ops, "open", vfs.inodes["b.txt"], file_info())
    (_, (_, bits)), = fuse.replies()
    assert bits & FI_DIRECT_IO and not bits & FI_KEEP_CACHE
    fuse.failing.add("open")
    call(ops, "open", vfs.inodes["b.txt"], file_info())
    assert len(vfs.open_handles) == 1  # the interrupted one was released
    call(ops, "open", vfs.inodes["a"], file_info())
    assert fuse.replies()[-1] == ("err", (errno.EISDIR,))


@pytest.mark.parametrize(("version", "bit"), [(314, 1 << 6), (316, 1 << 7), (317, 1 << 6)])
def test_opendir_asks_the_kernel_to_cache_the_listing(fuse: FakeFuse, vfs: FakeVFS,
                                                      version: int, bit: int) -> None:
    ops = make_ops(fuse, vfs, version)
    call(ops, "opendir", 1, file_info())
    vfs.draining_now = True
    call(ops, "opendir", vfs.inodes["a"], file_info())
    (_, (_, cached)), (_, (_, draining)) = fuse.replies()
    assert cached == bit | FI_KEEP_CACHE and draining == 0
    assert ops.kernel._listed == {1}


def _listing(ops: LowlevelOperations, fuse: FakeFuse, vfs: FakeVFS, size: int,
             plus: bool, off: int = 0) -> list[tuple[str, int, int]]:
    fi = file_info()
    call(ops, "opendir", 1, fi)
    call(ops, "readdirplus" if plus else "readdir", 1, size, off, fi)
    name, (data,) = fuse.replies()[-1]
    assert name == "buf"
    return parse_dirents(data, plus)


def test_readdirplus_hands_out_every_entry_but_the_dots(ops: LowlevelOperations,
                                                        fuse: FakeFuse, vfs: FakeVFS) -> None:
    listed = _listing(ops, fuse, vfs, 4096, plus=True)
    assert [n for n, _, _ in listed] == [".", "..", "a", "b.txt", "link"]
    assert [off for _, _, off in listed] == [1, 2, 3, 4, 5]
    assert vfs.held == {vfs.inodes[n]: 1 for n in ("a", "b.txt", "link")}


def test_a_plain_readdir_hands_out_nothing(ops: LowlevelOperations, fuse: FakeFuse,
                                           vfs: FakeVFS) -> None:
    listed = _listing(ops, fuse, vfs, 4096, plus=False)
    assert [(n, ino) for n, ino, _ in listed][2:] == [(n, vfs.inodes[n])
                                                      for n in ("a", "b.txt", "link")]
    assert vfs.held == {}


def test_what_did_not_fit_is_taken_back(ops: LowlevelOperations, fuse: FakeFuse,
                                        vfs: FakeVFS) -> None:
    listed = _listing(ops, fuse, vfs, 3 * (DIRENT.size + PLUS_EXTRA + 8) + 8, plus=True)
    assert [n for n, _, _ in listed] == [".", "..", "a"]
    assert vfs.held == {vfs.inodes["a"]: 1}
    listed = _listing(ops, fuse, vfs, 4096, plus=True, off=3)  # the next page
    assert [n for n, _, _ in listed] == ["b.txt", "link"]
    assert vfs.held == {vfs.inodes[n]: 1 for n in ("a", "b.txt", "link")}


def test_an_undelivered_or_failed_listing_hands_out_nothing(ops: LowlevelOperations,
                                                            fuse: FakeFuse,
                                                            vfs: FakeVFS) -> None:
    fuse.failing.add("buf")
    _listing(ops, fuse, vfs, 4096, plus=True)
    assert vfs.held == {}
    fuse.failing.clear()
    vfs.failures[vfs.inodes["link"]] = HashMismatchError("bad row")
    fi = file_info()
    call(ops, "opendir", 1, fi)
    call(ops, "readdirplus", 1, 4096, 0, fi)
    assert fuse.replies()[-1] == ("err", (errno.EIO,))
    assert vfs.held == {}


def test_forget_and_batch_forget(ops: LowlevelOperations, fuse: FakeFuse,
                                 vfs: FakeVFS) -> None:
    for _ in range(3):
        call(ops, "lookup", 1, b"b.txt")
    call(ops, "lookup", 1, b"a")
    call(ops, "opendir", vfs.inodes["a"], file_info())
    b, a = vfs.inodes["b.txt"], vfs.inodes["a"]
    call(ops, "forget", b, 2)
    batch = (ForgetData * 2)(ForgetData(b, 1), ForgetData(a, 1))
    ops.ops.forget_multi(REQ, 2, batch)
    assert fuse.replies()[-2:] == [("none", ()), ("none", ())]
    assert vfs.held == {} and ops.kernel._listed == set()


def test_xattrs_follow_the_size_protocol(ops: LowlevelOperations, fuse: FakeFuse) -> None:
    call(ops, "getxattr", 1, b"user.pycvmfs.test", 0)
    call(ops, "getxattr", 1, b"user.pycvmfs.test", 2)
    call(ops, "getxattr", 1, b"user.pycvmfs.test", 64)
    call(ops, "getxattr", 1, b"user.none", 64)
    call(ops, "listxattr", 1, 0)
    call(ops, "listxattr", 1, 64)
    names = b"user.pycvmfs.test\0user.other\0"
    assert fuse.replies() == [("xattr", (5,)), ("err", (errno.ERANGE,)), ("buf", (b"value",)),
                              ("err", (errno.ENODATA,)), ("xattr", (len(names),)),
                              ("buf", (names,))]


@pytest.mark.parametrize(("version", "layout"), [(316, ConnInfo), (317, ConnInfo317)])
def test_init_asks_for_cached_symlinks(fuse: FakeFuse, vfs: FakeVFS, version: int,
                                       layout: Any) -> None:
    ops = make_ops(fuse, vfs, version)
    conn = layout(capable=FUSE_CAP_CACHE_SYMLINKS | 1, want=1)
    if version >= 317:
        conn.capable_ext, conn.want_ext = conn.capable, conn.want
    ops.ops.init(None, ctypes.addressof(conn))
    assert conn.want == FUSE_CAP_CACHE_SYMLINKS | 1
    if version >= 317:
        assert conn.want_ext == conn.want  # both words agree: libfuse converts nothing
    plain = layout(capable=1, want=1)
    ops.ops.init(None, ctypes.addressof(plain))
    assert plain.want == 1


def test_without_open_support_every_open_is_answered(fuse: FakeFuse, vfs: FakeVFS) -> None:
    ops = make_ops(fuse, vfs)
    conn = ConnInfo317(capable=FUSE_CAP_NO_OPEN_SUPPORT, want=0)
    conn.capable_ext = conn.capable
    ops.ops.init(None, ctypes.addressof(conn))
    assert ops.no_open and vfs.unopened and conn.want_ext == FUSE_CAP_NO_OPEN_SUPPORT
    older = make_ops(fuse, FakeVFS(TREE, {}))  # a kernel that cannot: OPEN answered
    plain = ConnInfo317(capable=1, want=0)
    older.ops.init(None, ctypes.addressof(plain))
    assert not older.no_open and plain.want == 0


def test_no_open_reads_by_inode(fuse: FakeFuse, vfs: FakeVFS) -> None:
    """With no-open, the first OPEN answers ENOSYS (the kernel's success: it opens alone
    from then on) and READs of handle 0 name their inode; RELEASE never comes."""
    ops = make_ops(fuse, vfs)
    conn = ConnInfo317(capable=FUSE_CAP_NO_OPEN_SUPPORT | FUSE_CAP_SPLICE_WRITE, want=0)
    conn.capable_ext = conn.capable
    ops.ops.init(None, ctypes.addressof(conn))
    try:
        fi = file_info(flags=os.O_RDONLY)
        call(ops, "open", vfs.inodes["a/x.txt"], fi)
        assert fuse.replies() == [("err", (errno.ENOSYS,))] and vfs.open_handles == {}
        unopened = file_info(flags=os.O_RDONLY)  # fh 0, as the kernel sends it
        call(ops, "read", vfs.inodes["a/x.txt"], 4, 3, unopened)  # spliced, by inode
        vfs.page_cached = False
        call(ops, "read", vfs.inodes["b.txt"], 100, 1, unopened)  # from the pool
        wait_for_reply(fuse, 3)
        assert fuse.replies()[1:] == [("data", (b"xxxx",)), ("buf", (b"ee",))]
        vfs.failures[vfs.inodes["a/y.txt"]] = FsError(errno.ESTALE)
        call(ops, "read", vfs.inodes["a/y.txt"], 4, 0, unopened)
        wait_for_reply(fuse, 4)
        assert fuse.replies()[3] == ("err", (errno.ESTALE,))
    finally:
        ops.stop()


@pytest.mark.parametrize("version", [316, 317])
def test_a_kept_file_info_has_a_zeroed_tail(version: int) -> None:
    dirty = FileInfo(fh=7, backing_id=3, compat_flags=9)
    copy = Libfuse3(None, version).copy_file_info(ctypes.pointer(dirty)).contents
    assert copy.fh == 7
    assert copy.compat_flags == (9 if version >= 317 else 0)  # 3.16's struct ends before


def test_a_revision_change_drops_listings_and_names(ops: LowlevelOperations,
                                                    fuse: FakeFuse, vfs: FakeVFS,
                                                    notifier: Notifier) -> None:
    notifier.session = 1
    call(ops, "opendir", 1, file_info())
    call(ops, "lookup", vfs.inodes["a"], b"x.txt")
    ops.kernel.invalidate_all()
    invalidated = [args for name, args in fuse.calls if name == "inval_inode"]
    assert sorted(invalidated) == [(1, 0), (vfs.inodes["a"], 0)]
    vfs.draining_now = True  # right after the change: a listing answered now is redone
    _listing(ops, fuse, vfs, 4096, plus=False)
    ops.kernel._invalidate_drained()  # what the timer does REDRAIN_S later
    assert [args for name, args in fuse.calls if name == "inval_inode"][2:] == [(1, 0)]
    notifier.closing = True
    before = len(fuse.calls)
    ops.kernel.invalidate_all()
    assert len(fuse.calls) == before  # unmounting: no notification any more


def test_a_worker_keeps_its_thread_state_after_the_first_request(
        monkeypatch: pytest.MonkeyPatch) -> None:
    kept: list[int] = []
    monkeypatch.setattr(adapter_lowlevel, "_keep_gil_state",
                        lambda: kept.append(threading.get_ident()))
    seen: list[tuple[int, ...]] = []
    handler = adapter_lowlevel._keeping_thread_state(lambda *args: seen.append(args))

    both_running = threading.Barrier(2, timeout=10)

    def worker() -> None:
        handler(1, 2)
        both_running.wait()  # distinct threads at once (an ident may be reused after)
        handler(3)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert sorted(seen) == [(1, 2), (1, 2), (3,), (3,)]
    assert len(kept) == 2 and len(set(kept)) == 2  # once per worker thread


def test_only_a_loop_that_keeps_its_workers_gets_kept_thread_states(fuse: FakeFuse) -> None:
    assert not Libfuse3(fuse, 317).workers_persist  # the fake has no 3.12 loop config


class CountingCpus:
    """An `AdaptiveCpus` stand-in: what was counted, and when it was started/stopped."""

    def __init__(self) -> None:
        self.entered = self.resumed = self.left = 0
        self.callers: set[int] = set()
        self.events: list[str] = []

    def enter(self, caller: int) -> None:
        self.entered += 1
        self.callers.add(caller)

    def resume(self) -> None:
        self.resumed += 1

    def leave(self) -> None:
        self.left += 1

    def start(self) -> None:
        self.events.append("start")

    def stop(self) -> None:
        self.events.append("stop")


def test_the_cpu_policy_counts_requests_but_not_reads_past_a_file_s_start(
        fuse: FakeFuse, vfs: FakeVFS) -> None:
    cpus = CountingCpus()
    lib = Libfuse3(fuse, 317)
    ops = LowlevelOperations(lib, vfs, TIMEOUT, Notifier(lib), cpus=cpus)  # type: ignore[arg-type]
    conn = ConnInfo317(capable=FUSE_CAP_NO_OPEN_SUPPORT | FUSE_CAP_SPLICE_WRITE, want=0)
    conn.capable_ext = conn.capable
    ops.ops.init(None, ctypes.addressof(conn))
    try:
        assert cpus.events == ["start"]
        call(ops, "lookup", 1, b"b.txt")
        unopened = file_info(flags=os.O_RDONLY)
        call(ops, "read", vfs.inodes["a/x.txt"], 4, 3, unopened)  # past the start: not counted
        assert (cpus.entered, cpus.left) == (1, 1)
        call(ops, "read", vfs.inodes["a/x.txt"], 4, 0, unopened)  # a file's first READ
        assert (cpus.entered, cpus.left) == (2, 2)
        vfs.page_cached = False
        call(ops, "read", vfs.inodes["b.txt"], 100, 0, unopened)  # downloads: in the pool
        call(ops, "read", vfs.inodes["b.txt"], 100, 1, unopened)  # ... past the start
        wait_for_reply(fuse, 5)
        deadline = time.monotonic() + 2.0
        while cpus.left < 4 and time.monotonic() < deadline:
            time.sleep(0.002)
        # the first arrives on the worker and goes on in the pool: one arrival
        assert (cpus.entered, cpus.resumed, cpus.left) == (3, 1, 4)
    finally:
        ops.stop()
    assert cpus.events == ["start", "stop"] and cpus.callers == {4242}  # the thread that asked
