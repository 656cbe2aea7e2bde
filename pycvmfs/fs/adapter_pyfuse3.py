"""pyfuse3 adapter: the low-level inode API (libfuse 3, trio), the second inode-based
backend (the ctypes `lowlevel` adapter is the default).

READDIRPLUS answers attributes with the names, which is what makes a cold `ls -l` or
`find` fast. Every call that may block (catalog loads, object downloads) runs in a
worker thread: a blocking call in an async handler would stall the whole mount.

Lookup counts: the VFS counts every entry LOOKUP and READDIRPLUS hand to the kernel and
`forget` (FORGET, BATCH_FORGET) takes them back, so the inode tables shrink as the kernel
evicts inodes. Directory handles are the VFS's: one revision from opendir to releasedir,
read page by page.

Kernel caches (`kernel_cache.KernelCache`, shared with the lowlevel adapter): entries,
attributes and negative lookups are cached for `CVMFS_KCACHE_TIMEOUT`; the page cache is
kept across opens (an inode's content never changes, see vfs.py). When a new revision is
swapped in, the names handed to the kernel (negative ones too) that changed are
invalidated, so changes show at once instead of after the timeout.

Errors: a handler answers `errno_of(exc)` for whatever a VFS call raised; only exceptions
that are not FsError, PycvmfsError or OSError (bugs) are logged with their traceback.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import pyfuse3
import trio

from pycvmfs.errors import PycvmfsError
from pycvmfs.fs.errors import errno_of
from pycvmfs.fs.kernel_cache import HandOut, KernelCache
from pycvmfs.fs.vfs import Attr, FsError, Listed, RepositoryVFS, WouldBlock

log = logging.getLogger(__name__)
_T = TypeVar("_T")
WORKER_THREADS = 16  # like libfuse's default pool: slow downloads don't block lookups
READDIR_BATCH = 128  # listing entries read per READDIRPLUS (one catalog page holds more)
EXPECTED = (FsError, PycvmfsError, OSError)  # anything else a VFS call raises is a bug


class Pyfuse3Operations(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, vfs: RepositoryVFS, entry_timeout: float) -> None:
        super().__init__()
        self.vfs = vfs
        vfs.track_lookups()  # forget is implemented: the VFS may drop what the kernel lets go
        self.entry_timeout = entry_timeout
        self._limiter = trio.CapacityLimiter(WORKER_THREADS)
        # what a revision change must make the kernel drop (pyfuse3 caches no listings)
        self.kernel = KernelCache(vfs, pyfuse3.invalidate_inode, pyfuse3.invalidate_entry,
                                  entry_timeout)
        vfs.subscribe(self.kernel.invalidate_all)

    async def _call(self, func: Callable[..., _T], *args: Any, inline: bool = False) -> _T:
        """The boundary: any exception -> FUSEError(errno_of). With `inline`, first try
        on the event loop with downloads forbidden (SQLite lookups in attached catalogs
        take microseconds, a thread hop much longer); whatever would download goes to a
        worker thread."""
        try:
            if inline:
                try:
                    with self.vfs.inline():
                        return func(*args)
                except WouldBlock:
                    pass
            result: _T = await trio.to_thread.run_sync(func, *args, limiter=self._limiter)
            return result
        except Exception as exc:
            raise _fuse_error(func, exc) from None

    @staticmethod
    def _now(func: Callable[..., _T], *args: Any) -> _T:
        """`func(*args)` on the event loop, for calls that never wait; the same boundary."""
        try:
            return func(*args)
        except Exception as exc:
            raise _fuse_error(func, exc) from None

    def _entry(self, attr: Attr) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino, e.st_mode, e.st_nlink = attr.ino, attr.mode, attr.nlink
        e.st_uid, e.st_gid, e.st_size, e.st_rdev = attr.uid, attr.gid, attr.size, attr.rdev
        e.st_atime_ns = e.st_mtime_ns = e.st_ctime_ns = attr.mtime_ns
        e.st_blksize, e.st_blocks = 4096, attr.blocks
        e.entry_timeout = e.attr_timeout = self.vfs.entry_timeout(self.entry_timeout)
        return e

    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> Any:
        text = name.decode("utf-8", "surrogateescape")
        try:
            return self._entry(await self._call(self.vfs.lookup, parent_inode, text, inline=True))
        except pyfuse3.FUSEError as exc:
            if not self.kernel.missing(parent_inode, name, exc.errno):
                raise
            negative = pyfuse3.EntryAttributes()  # cached by the kernel like a hit
            negative.st_ino = 0
            negative.entry_timeout = self.vfs.entry_timeout(self.entry_timeout)
            return negative

    async def getattr(self, inode: int, ctx: Any = None) -> Any:
        return self._entry(await self._call(self.vfs.getattr, inode, inline=True))

    async def readlink(self, inode: int, ctx: Any) -> bytes:
        return await self._call(self.vfs.readlink, inode, inline=True)

    async def opendir(self, inode: int, ctx: Any) -> int:
        return await self._call(self.vfs.opendir, inode, inline=True)

    def _batch(self, fh: int, start_id: int) -> list[Listed]:
        entries = self.vfs.readdir(fh, start_id)
        try:
            return list(itertools.islice(entries, READDIR_BATCH))
        finally:
            entries.close()

    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        """READDIRPLUS: the entries that go out are handed out (`HandOut`)."""
        handed = HandOut(self.vfs)
        for item in await self._call(self._batch, fh, start_id, inline=True):
            try:
                added = pyfuse3.readdir_reply(token, item.name.encode("utf-8",
                                                                      "surrogateescape"),
                                              self._entry(handed.attr(item)), item.offset)
            except Exception as exc:  # an error is answered: nothing of this reply is sent
                handed.take_back()
                raise _fuse_error(self.vfs.listed_attr, exc) from None
            if not added:  # did not fit: not handed out
                handed.take_back_last()
                return

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        try:
            self.kernel.forgotten(self.vfs.forget(inode_list))
        except Exception:  # FORGET has no answer
            log.exception("unexpected error in forget")

    async def releasedir(self, fh: int) -> None:
        self._now(self.vfs.releasedir, fh)

    async def open(self, inode: int, flags: int, ctx: Any) -> Any:
        handle = await self._call(self.vfs.open, inode, flags, inline=True)
        try:
            direct = self._now(self.vfs.direct_io, handle)
        except BaseException:
            self.vfs.release(handle)
            raise
        return pyfuse3.FileInfo(fh=handle, keep_cache=not direct, direct_io=direct)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        try:  # in the page cache: no worker thread
            cached = self.vfs.read_nowait(fh, off, size)
        except Exception as exc:
            raise _fuse_error(self.vfs.read_nowait, exc) from None
        return cached if cached is not None else await self._call(self.vfs.read, fh, off, size)

    async def release(self, fh: int) -> None:
        self._now(self.vfs.release, fh)

    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        return await self._call(self.vfs.getxattr, inode, name.decode("utf-8", "surrogateescape"))

    async def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
        names = await self._call(self.vfs.listxattr, inode, inline=True)
        return [n.encode("utf-8", "surrogateescape") for n in names]

    async def statfs(self, ctx: Any) -> Any:
        s = await self._call(self.vfs.statfs)
        out = pyfuse3.StatvfsData()
        out.f_bsize = out.f_frsize = s.block_size
        out.f_blocks, out.f_bfree, out.f_bavail = s.blocks, s.blocks_free, s.blocks_free
        out.f_files, out.f_ffree, out.f_favail = s.files, s.files_free, s.files_free
        out.f_namemax = s.name_max
        return out


def _fuse_error(func: Callable[..., Any], exc: BaseException) -> pyfuse3.FUSEError:
    """What a handler raises for `exc` from `func`; a bug is logged with its traceback."""
    if not isinstance(exc, EXPECTED):
        log.error("unexpected error in %s", getattr(func, "__name__", func), exc_info=exc)
    return pyfuse3.FUSEError(errno_of(exc))


def serve(vfs: RepositoryVFS, mountpoint: str, *, fsname: str, entry_timeout: float) -> None:
    """Mount and run the trio loop until unmounted (blocks)."""
    options = set(pyfuse3.default_options) | {f"fsname={fsname}", "ro", "nodev"}
    options.discard("default_permissions")
    pyfuse3.init(Pyfuse3Operations(vfs, entry_timeout), mountpoint, options)
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=True)
