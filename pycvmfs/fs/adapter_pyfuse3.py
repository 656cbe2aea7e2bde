"""pyfuse3 adapter: the low-level inode API (libfuse 3, trio), the default backend.

READDIRPLUS answers attributes with the names, which is what makes a cold `ls -l` or
`find` fast. Every call that may block (catalog loads, object downloads) runs in a
worker thread: a blocking call in an async handler would stall the whole mount.

Lookup counts: the VFS counts every entry LOOKUP and READDIRPLUS hand to the kernel and
`forget` (FORGET, BATCH_FORGET) takes them back, so the inode tables shrink as the kernel
evicts inodes. A listing entry whose inode was dropped since the listing was read is not
sent: the listing is read afresh.

Kernel caches: entries, attributes and negative lookups are cached for
`CVMFS_KCACHE_TIMEOUT`; the page cache is kept across opens (an inode's content never
changes, see vfs.py). When a new revision is swapped in, every name handed to the kernel
(negative ones too) is invalidated, so changes show at once instead of after the timeout.
"""

from __future__ import annotations

import contextlib
import errno
import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import pyfuse3
import trio

from pycvmfs.fs.vfs import DOTS, Attr, FsError, RepositoryVFS
from pycvmfs.repository.catalog_tree import WouldLoadError, no_loading

log = logging.getLogger(__name__)
_T = TypeVar("_T")
WORKER_THREADS = 16  # like libfuse's default pool: slow downloads don't block lookups
RELISTS = 3  # fresh listings tried when entries of the one held were dropped meanwhile
MAX_TRACKED_NEGATIVES = 100_000  # negative entries remembered for invalidation


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
        self._dirs: dict[int, tuple[int, list[tuple[str, Attr]]]] = {}  # fh: inode, listing
        self._next_dir = 1
        self._negatives: dict[tuple[int, bytes], None] = {}  # insertion-ordered, bounded
        vfs.revision_listeners.append(self.invalidate_all)

    def invalidate_all(self) -> None:
        """Drop the kernel's names after a revision change. Runs in the revision watcher's
        thread (never in a request handler: the call waits for related requests)."""
        negatives, self._negatives = list(self._negatives), {}
        known = [(parent, name.encode("utf-8", "surrogateescape"))
                 for parent, name in self.vfs.known_entries()]
        for parent, name in known + negatives:
            with contextlib.suppress(OSError):  # ENOENT: the kernel had forgotten it
                pyfuse3.invalidate_entry(parent, name)

    async def _call(self, func: Callable[..., _T], *args: Any, inline: bool = False) -> _T:
        """The boundary: FsError -> FUSEError, others -> EIO. With `inline`, first try on
        the event loop with catalog loading forbidden (SQLite lookups in attached catalogs
        take microseconds, a thread hop much longer); whatever would download goes to a
        worker thread."""
        try:
            if inline:
                try:
                    with no_loading():
                        return func(*args)
                except WouldLoadError:
                    pass
            result: _T = await trio.to_thread.run_sync(func, *args, limiter=self._limiter)
            return result
        except FsError as exc:
            raise pyfuse3.FUSEError(exc.errno) from None
        except Exception:
            log.exception("unexpected error in %s", getattr(func, "__name__", func))
            raise pyfuse3.FUSEError(errno.EIO) from None

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
            if exc.errno != errno.ENOENT:
                raise
            negative = pyfuse3.EntryAttributes()  # cached by the kernel like a hit
            negative.st_ino = 0
            negative.entry_timeout = self.vfs.entry_timeout(self.entry_timeout)
            self._negatives[(parent_inode, name)] = None
            if len(self._negatives) > MAX_TRACKED_NEGATIVES:
                del self._negatives[next(iter(self._negatives))]
            return negative

    async def getattr(self, inode: int, ctx: Any = None) -> Any:
        return self._entry(await self._call(self.vfs.getattr, inode, inline=True))

    async def readlink(self, inode: int, ctx: Any) -> bytes:
        cached = self.vfs.cached_link(inode)  # answered already: no hop to a worker thread
        return cached if cached is not None else await self._call(self.vfs.readlink, inode,
                                                                  inline=True)

    async def opendir(self, inode: int, ctx: Any) -> int:
        listing = self.vfs.cached_listing(inode)  # answered already: no worker thread
        if listing is None:
            listing = await self._call(self.vfs.readdir_with_dots, inode, inline=True)
        handle, self._next_dir = self._next_dir, self._next_dir + 1
        self._dirs[handle] = (inode, listing)
        return handle

    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        """READDIRPLUS: every entry but `.` and `..` that goes out is counted (`hand_out`)
        before the reply is sent, and taken back if it did not fit."""
        inode, listing = self._dirs.get(fh, (0, []))
        index, relists = start_id, 0
        while index < len(listing):
            name, attr = listing[index]
            counted = name not in DOTS
            if counted and not self.vfs.hand_out(attr.ino):
                if index > start_id:
                    return  # send what is counted; the next call starts here, relisted
                if relists == RELISTS:
                    log.warning("skipping %r: its inode keeps being dropped", name)
                    index += 1
                    continue
                relists += 1
                listing = await self._call(self.vfs.readdir_with_dots, inode, listing,
                                           inline=True)
                self._dirs[fh] = (inode, listing)
                continue
            try:
                added = pyfuse3.readdir_reply(token, name.encode("utf-8", "surrogateescape"),
                                              self._entry(attr), index + 1)
            except BaseException:
                added = False
                raise
            finally:
                if counted and not added:  # did not fit: not handed out
                    self.vfs.forget([(attr.ino, 1)])
            if not added:
                return
            index += 1

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        self.vfs.forget(inode_list)

    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    async def open(self, inode: int, flags: int, ctx: Any) -> Any:
        handle = await self._call(self.vfs.open, inode, flags, inline=True)
        direct = self.vfs.direct_io(handle)
        return pyfuse3.FileInfo(fh=handle, keep_cache=not direct, direct_io=direct)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        cached = self.vfs.read_nowait(fh, off, size)  # in the page cache: no worker thread
        return cached if cached is not None else await self._call(self.vfs.read, fh, off, size)

    async def release(self, fh: int) -> None:
        self.vfs.release(fh)

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


def serve(vfs: RepositoryVFS, mountpoint: str, *, fsname: str, entry_timeout: float) -> None:
    """Mount and run the trio loop until unmounted (blocks)."""
    options = set(pyfuse3.default_options) | {f"fsname={fsname}", "ro", "nodev"}
    options.discard("default_permissions")
    pyfuse3.init(Pyfuse3Operations(vfs, entry_timeout), mountpoint, options)
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=True)
