"""The backend-neutral, inode-based read-only filesystem over one repository: the façade
the FUSE adapters call; they translate requests and reply `errors.errno_of(exc)`, no
repository semantics live in them. Rooms: `inodes.InodeTable` (numbers from catalog rows,
what the kernel holds), `directories.DirectoryHandles` (listings paged from one revision),
`open_files.OpenFiles` (handles of `repository.reader.OpenFile`), `recent.RecentEntries`
(the entry a LOOKUP resolved, for the OPEN and GETATTR that follow), `attributes`,
`magic_xattrs`. The root is inode 1 (FUSE_ROOT_ID).

Revisions: a mount's `RevisionWatcher` calls `set_repository` with a newer revision, or
`revoke` when the blacklist refuses the served one. A path keeps its inode while what it
is stays the same (type, content hash, size, symlink target), so the page cache of
unchanged files survives; anything changed gets a fresh inode, so no stale page is ever
served for new content. Open files keep the chunk list they opened with, directory
handles their revision; so do inodes read without a handle (`read_unopened`, FUSE
no-open), whatever the kernel still holds. After a swap, entries go out with timeout 0
for `DRAIN_S`, and the adapters (`subscribe`) drop the kernel's names and listings.

Errors: every failure leaves as an `FsError` with the errno `fs.errors.fs_error` decides
from `pycvmfs.errors.errno_for` (ENOENT; EIO for anything untrusted; ENOSPC for a full
cache; EMFILE/ENFILE passed through), never as wrong or short bytes.

Thread-safety: any method from several threads at once; repository calls run outside the
locks of the rooms.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager

from pycvmfs.format.catalog import DirEntry
from pycvmfs.fs import attributes, magic_xattrs
from pycvmfs.fs.attributes import Attr, MountOptions, StatFs
from pycvmfs.fs.directories import DirectoryHandles, Listed, Listing
from pycvmfs.fs.errors import EXPECTED, FsError, fs_error
from pycvmfs.fs.inodes import ROOT_INODE, InodeTable
from pycvmfs.fs.magic_xattrs import CacheInfo, ClientStats, NetworkInfo, XattrContext
from pycvmfs.fs.open_files import OpenFiles
from pycvmfs.fs.recent import RecentEntries
from pycvmfs.repository.catalog_tree import Resolved, no_loading
from pycvmfs.repository.catalog_tree import WouldLoadError as WouldBlock
from pycvmfs.repository.reader import OpenFile, WouldBlockError
from pycvmfs.repository.repository import Repository
from pycvmfs.repository.revisions import RevisionWatcher

log = logging.getLogger(__name__)
DRAIN_S = 2.0  # after a swap, entries go to the kernel with timeout 0 for this long
DIRECT_IO_FLAG = 0x10000  # catalog flag: serve this file with direct I/O
DOTS = (".", "..")

__all__ = ["ROOT_INODE", "Attr", "FsError", "Listed", "MountOptions", "RepositoryVFS",
           "StatFs", "DOTS", "WouldBlock"]


class RepositoryVFS:
    """Inode view of a repository. See the module docstring for the contract."""

    def __init__(self, repository: Repository, options: MountOptions | None = None,
                 capacity: Callable[[], tuple[int, int]] = lambda: (0, 0),
                 stats: ClientStats | None = None,
                 network: NetworkInfo | None = None,
                 expires: Callable[[], str] = lambda: "never (fixed root catalog)",
                 cache: CacheInfo | None = None,
                 revisions: RevisionWatcher | None = None,
                 bundle_trigger: Callable[[str], None] | None = None) -> None:
        self.repository = repository
        self._announced = repository  # what magic xattrs report: swapped after invalidation
        self.options = options or MountOptions()
        self.stats = stats or ClientStats()
        self.network = network or NetworkInfo()
        self.cache = cache or CacheInfo()
        self._expires = expires
        self._capacity = capacity  # (bytes total, bytes used) of the cache, for statfs
        self.inodes = InodeTable()
        self._directories = DirectoryHandles(self.inodes)
        self._files = OpenFiles()
        self._recent = RecentEntries()
        self._drain_until = 0.0
        self._listeners: list[Callable[[], None]] = []  # adapters drop kernel caches
        self._revoked: str | None = None  # why the served revision is refused (`revoke`)
        self._inode_reads = False  # reads may name an inode without a handle (`read_unopened`)
        self._previous: Repository | None = None  # the revision being replaced, during a swap
        self._bundle_trigger = bundle_trigger  # a file bundle trigger was opened (never waits)
        if revisions is not None:  # follow a mount's revisions (otherwise fixed)
            self._expires = revisions.expires
            revisions.subscribe(self)

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call `listener` (an adapter dropping kernel caches) after each revision change."""
        self._listeners.append(listener)

    def unsubscribe(self, listener: Callable[[], None]) -> None:
        self._listeners.remove(listener)

    # --- revisions -------------------------------------------------------------------
    def set_repository(self, repository: Repository) -> None:
        """Serve a newer revision from now on (see the module docstring). The drain lasts
        while the kernel's caches are dropped and `DRAIN_S` after."""
        self._drain_until = float("inf")
        self._previous, self.repository = self.repository, repository
        self._recent.clear()  # stale already (another revision); only frees the memory
        self._revoked = None
        try:
            self._drop_caches()  # replaced inode files are retained meanwhile (`_replaced`)
        finally:
            self._previous = None
            self._drain_until = time.monotonic() + DRAIN_S
        # only now say so (`user.revision`): whoever polls it then sees no stale kernel entry
        self._announced = repository

    def revoke(self, reason: str | None) -> None:
        """Refuse (EIO, `reason`) every name, listing and read of the revision served: it
        can no longer be trusted (a blacklist names it). None serves it again; a newer
        revision (`set_repository`) ends it too. Kernel entries go."""
        was, self._revoked = self._revoked, reason
        if reason is not None and was is None:
            self._drop_caches()

    def _check_revoked(self) -> None:
        if self._revoked is not None:
            raise FsError(errno.EIO, self._revoked)

    def _drop_caches(self) -> None:
        for listener in list(self._listeners):
            try:
                listener()
            except Exception:
                log.exception("dropping kernel caches after the revision change failed")

    def draining(self) -> bool:
        """Right after a revision change: answers may come from the old one, so the kernel
        must not keep them (entry timeout 0, no cached listings)."""
        return time.monotonic() < self._drain_until

    def entry_timeout(self, normal: float) -> float:
        """The kernel cache timeout to send now: 0 while draining."""
        return 0.0 if self.draining() else normal

    def known_entries(self) -> Iterator[tuple[int, str]]:
        """(parent inode, name) of every name handed to the kernel, for invalidation."""
        return self.inodes.known_entries()

    def revision_changes(self) -> tuple[list[tuple[int, str]], list[int]]:
        """What a revision change must make the kernel drop: (parent inode, name) of the
        names handed out that answer differently now (another inode, or gone), and the kept
        inodes whose other attributes changed (only those go: their pages stay). Unchanged
        names are left alone, and with them the page cache of their files. With
        `read_unopened`, each replaced file keeps its old content for the kernel's
        inode (`_replaced`): any process may hold it open."""
        names, inodes = [], []
        for parent, name in self.inodes.known_entries():
            path = self.inodes.path_of(parent)
            if path is None:
                continue
            child = f"{path}/{name}"
            held = self.inodes.held_number(child)
            try:
                current, entry = self._current(child)
            except FsError:
                current = None
            if held is None or current != held:
                names.append((parent, name))
                if held is not None and self._inode_reads and self._previous is not None:
                    with contextlib.suppress(FsError):  # not a regular file
                        self._replaced(held, child)
            elif self.inodes.refresh_attributes(child, entry):
                inodes.append(held)
        return names, inodes

    def appeared(self, parent: int, name: str) -> bool:
        """Whether `name` in directory `parent` exists in the revision served now (a
        negative entry the kernel caches must then go)."""
        path = self.inodes.path_of(parent)
        if path is None:
            return True
        try:
            self._current(f"{path}/{name}")
        except FsError as exc:
            return exc.errno != errno.ENOENT
        return True

    # --- lookup counts ---------------------------------------------------------------
    def read_unopened(self) -> None:
        """Reads may come without an OPEN (FUSE no-open: handle 0 and the inode): each
        inode then gets a file of its own (`open_files`), and a revision change keeps the
        content of the inodes it replaces. Adapters call it once, before serving."""
        self._inode_reads = True

    def track_lookups(self) -> None:
        """Count what the kernel holds and drop what it forgets. Inode-based adapters call
        it once, before serving."""
        self.inodes.tracking = True

    def forget(self, items: Iterable[tuple[int, int]]) -> list[int]:
        """FORGET/BATCH_FORGET: the inodes the kernel no longer holds at all."""
        forgotten = self.inodes.forget(items)
        if forgotten:
            self._recent.forget(forgotten)
            self._files.forget(forgotten)
        return forgotten

    def lookup_count(self, ino: int) -> int:
        return self.inodes.lookup_count(ino)

    def inode_count(self) -> int:
        """Inodes handed out and still held, the root included."""
        return self.inodes.count()

    def inode_max(self) -> int:
        """The highest inode number so far."""
        return self.inodes.highest()

    # --- names and inodes ------------------------------------------------------------
    def path_of(self, ino: int) -> str:
        path = self.inodes.path_of(ino)
        if path is None:
            raise FsError(errno.ESTALE, f"inode {ino} is not known")
        return path

    def _resolve(self, path: str, repository: Repository | None = None) -> Resolved:
        """Entry and catalog of `path` in the revision served (or `repository`)."""
        self._check_revoked()
        try:
            return (repository or self.repository).resolve(path)
        except EXPECTED as exc:
            raise fs_error(exc) from exc

    def _current(self, path: str) -> tuple[int, DirEntry]:
        """`path`'s inode now (nothing recorded) and its entry."""
        entry, catalog = self._resolve(path)
        return self.inodes.number(path, entry, catalog), entry

    def _entry_of(self, ino: int) -> tuple[str, DirEntry, bool]:
        """Path and current entry of inode `ino`, and whether `ino` is still its number:
        from the answer a LOOKUP just gave when it is of the revision served (no query),
        else resolved again."""
        self._check_revoked()
        recent = self._recent.get(ino, self.repository)
        if recent is not None:
            return recent[0], recent[1], True
        path = self.path_of(ino)
        current, entry = self._current(path)
        return path, entry, current == ino

    # --- metadata --------------------------------------------------------------------
    def attr(self, ino: int, entry: DirEntry) -> Attr:
        return attributes.attributes(ino, entry, self.options)

    def lookup(self, parent: int, name: str) -> Attr:
        """LOOKUP: the reply hands the inode out (counted before it is sent)."""
        if name in DOTS:
            raise FsError(errno.ENOENT, "'.' and '..' are answered by the kernel")
        path = f"{self.path_of(parent)}/{name}"
        repository = self.repository
        entry, catalog = self._resolve(path, repository)
        ino = self.inodes.hand_out(path, entry, catalog)
        self._recent.remember(ino, repository, path, entry)
        try:
            return self.attr(ino, entry)
        except BaseException:
            self.forget([(ino, 1)])
            raise

    def lookup_path(self, path: str) -> Attr:
        """For path-based adapters: `/a/b` (or `/`) straight to its attributes. Counts
        nothing: not for adapters that `track_lookups`."""
        canonical = "" if path in ("", "/") else path.rstrip("/")
        ino, entry = self._current(canonical)
        return self.attr(ino, entry)

    def getattr(self, ino: int) -> Attr:
        path, entry, same = self._entry_of(ino)
        if not same:  # the path changed in a newer revision; `ino` is the old one
            opened = self._files.holding(ino)
            if opened is None:  # the kernel re-looks the name up and gets the new inode
                raise FsError(errno.ESTALE, f"{path}: replaced in a newer revision")
            entry = opened.entry  # an open file: what it still reads
        return self.attr(ino, entry)

    # --- directories -----------------------------------------------------------------
    def opendir(self, ino: int) -> int:
        """A directory handle on the revision served now (see directories.py)."""
        return self.opendir_path(self.path_of(ino), ino)

    def opendir_path(self, path: str, ino: int | None = None) -> int:
        if ino is None:
            ino, _ = self._current(path)
        self._check_revoked()
        with self.stats.lock:
            self.stats.ndiropen += 1
        return self._directories.open(ino, path, self.repository)

    def readdir(self, handle: int, offset: int = 0) -> Listing:
        """The entries after `offset` (`.` and `..` first; none of `..` for the root); a
        generator that reads the catalog one page at a time."""
        self._check_revoked()
        return self._directories.entries(handle, offset, self.repository)

    def listed_attr(self, item: Listed, *, hand_out: bool) -> Attr:
        """Attributes of a listing entry; `hand_out` (READDIRPLUS) counts its inode as held
        by the kernel (give it back with `forget` if the entry did not fit the reply)."""
        ino = item.ino
        if hand_out and item.catalog is not None:
            ino = self.inodes.hand_out(item.path, item.entry, item.catalog)
            if item.repository is not None:  # `ls -l` asks for its xattrs next
                self._recent.remember(ino, item.repository, item.path, item.entry)
        return self.attr(ino, item.entry)

    def releasedir(self, handle: int) -> None:
        self._directories.release(handle)

    def listdir(self, ino: int) -> list[tuple[str, Attr]]:
        """The whole listing with `.` and `..` (tests): memory grows with the directory,
        unlike `readdir`."""
        return self.listdir_path(self.path_of(ino))

    def listdir_path(self, path: str) -> list[tuple[str, Attr]]:
        handle = self.opendir_path(path)
        try:
            return [(item.name, self.listed_attr(item, hand_out=False))
                    for item in self.readdir(handle)]
        finally:
            self.releasedir(handle)

    def readlink(self, ino: int) -> bytes:
        return self.readlink_path(self.path_of(ino))

    def readlink_path(self, path: str) -> bytes:
        _, entry = self._current(path)
        if not entry.is_symlink:
            raise FsError(errno.EINVAL, "not a symbolic link")
        return attributes.symlink_target(entry, self.options)

    # --- contents --------------------------------------------------------------------
    def open(self, ino: int, flags: int) -> int:
        self._check_flags(flags)
        path, entry, resolved = self._to_open(ino)
        self._check_open(flags, entry)
        return self._open(ino, path, entry, resolved)

    def _to_open(self, ino: int) -> tuple[str, DirEntry, Resolved | None]:
        """Path and current entry of inode `ino`, to open it: the answer the LOOKUP just
        gave (a file of one object needs no catalog: no `Resolved`), else resolved now
        (a chunked file's chunk list is read from its catalog)."""
        recent = self._recent.get(ino, self.repository)
        if recent is not None and not recent[1].is_chunked:
            return recent[0], recent[1], None
        path = self.path_of(ino)
        resolved = self._resolve(path)
        return path, resolved.entry, resolved

    @staticmethod
    def _check_flags(flags: int) -> None:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_TRUNC | os.O_CREAT):
            raise FsError(errno.EROFS, "read-only file system")

    def _check_open(self, flags: int, entry: DirEntry) -> None:
        self._check_flags(flags)
        if entry.is_dir:
            raise FsError(errno.EISDIR)
        if not stat.S_ISREG(entry.mode):
            raise FsError(errno.EINVAL)

    def open_path(self, path: str, flags: int, ino: int | None = None) -> int:
        self._check_flags(flags)
        resolved = self._resolve(path)
        entry = resolved.entry
        ino = self.inodes.number(path, entry, resolved.catalog) if ino is None else ino
        self._check_open(flags, entry)
        return self._open(ino, path, entry, resolved)

    def _open(self, ino: int, path: str, entry: DirEntry, resolved: Resolved | None) -> int:
        return self._files.add(ino, self._open_file(path, entry, resolved))

    def _open_file(self, path: str, entry: DirEntry, resolved: Resolved | None, *,
                   by_inode: bool = False) -> OpenFile:
        """`path` opened for reading (counted; a bundle trigger starts its prefetch). A
        file `by_inode` is never released nor seen opened again (`reader`'s `lasting`)."""
        self._check_revoked()
        prefetcher = self._files.prefetcher
        try:
            if resolved is None:  # from `recent`: a file of one object needs no catalog
                opened = self.repository.open_entry(path, entry, prefetcher, lasting=by_inode)
            else:
                opened = self.repository.open_file(path, prefetcher, resolved=resolved,
                                                   lasting=by_inode)
        except EXPECTED as exc:
            raise fs_error(exc) from exc
        with self.stats.lock:
            self.stats.nopen += 1
        if entry.is_bundle_trigger and self._bundle_trigger is not None:
            self._bundle_trigger(path)
        return opened

    def _inode_file(self, ino: int) -> OpenFile:
        """The file a read without a handle reads (`read_unopened`): the inode's own,
        opened at its first read."""
        opened = self._files.of_inode(ino)
        if opened is not None:
            return opened
        try:
            path, entry, resolved = self._to_open(ino)
        except FsError as exc:
            if exc.errno != errno.ENOENT:
                raise
            return self._replaced(ino, self.path_of(ino))  # gone in the revision served now
        if resolved is not None and self.inodes.number(path, entry, resolved.catalog) != ino:
            return self._replaced(ino, path)
        self._check_open(os.O_RDONLY, entry)
        return self._files.adopt(ino, self._open_file(path, entry, resolved, by_inode=True))

    def _replaced(self, ino: int, path: str) -> OpenFile:
        """The file of inode `ino`, whose `path` has other content (or none) now: the
        content it was handed out with, kept until the kernel forgets it. Only known
        during a revision change (from the revision being replaced); ESTALE after. Not an
        open: nothing counted, no bundle prefetched."""
        held = self._files.holding(ino)
        previous = self._previous
        if held is None and previous is not None:
            try:
                resolved = self._resolve(path, previous)
                entry, catalog = resolved
                if stat.S_ISREG(entry.mode) and self.inodes.number(path, entry, catalog) == ino:
                    held = previous.open_file(path, self._files.prefetcher, resolved=resolved,
                                              lasting=True)
            except FsError:
                held = None
            except EXPECTED as exc:
                raise fs_error(exc) from exc
        if held is None:
            raise FsError(errno.ESTALE, f"{path}: replaced in a newer revision")
        self._files.retain(ino, held)
        return held

    def direct_io(self, handle: int) -> bool:
        """Whether the catalog asks for this file to bypass the page cache."""
        return bool(self._files.get(handle).entry.flags & DIRECT_IO_FLAG)

    def _reading(self, handle: int, ino: int) -> OpenFile | None:
        """The file a read names: its handle's, or with handle 0 its inode's (FUSE
        no-open, `read_unopened`; opened now if need be, errors raised)."""
        if handle or not self._inode_reads:
            return self._files.find(handle)
        return self._inode_file(ino)

    def read_nowait(self, handle: int, offset: int, size: int, ino: int = 0) -> bytes | None:
        """`read` if it can be answered without waiting for the network (every object it
        needs is in the cache), else None. Adapters call it on the thread the request
        arrived on, to skip the hop to a thread that may wait, which costs more than
        reading a cached file. Handle 0 reads inode `ino` (`read_unopened`)."""
        if self._revoked is not None:
            return None  # `read` answers
        opened = self._reading(handle, ino)
        if opened is None:
            return None
        try:
            return opened.read_nowait(offset, size)
        except WouldBlockError:
            return None
        except EXPECTED:
            return None  # `read` tries again and answers the error

    def send_cached(self, handle: int, offset: int, size: int,
                    send: Callable[[int, int, int], None], ino: int = 0) -> bool | None:
        """Hand the bytes of a read to `send(descriptor, position, length)` straight from
        their cache file, if they lie in one object already in the cache (the adapter
        splices them into its reply): True. False: `read_nowait` or `read` answers. None:
        the object must be downloaded, so only `read` can (no second look at the cache)."""
        if self._revoked is not None:
            return False
        opened = self._reading(handle, ino)
        if opened is None:
            return False
        try:
            return opened.send_local(offset, size, send)
        except WouldBlockError:
            return None

    def read(self, handle: int, offset: int, size: int, ino: int = 0) -> bytes:
        self._check_revoked()
        opened = self._reading(handle, ino)
        if opened is None:
            raise FsError(errno.EBADF, f"file handle {handle} is not open")
        try:
            return opened.read(offset, size)
        except EXPECTED as exc:  # hash mismatch, fetch failure: never wrong bytes
            error = fs_error(exc)
            if error.errno == errno.EIO:
                self.stats.io_error()
            raise error from exc

    def release(self, handle: int) -> None:
        self._files.release(handle)

    @staticmethod
    def inline() -> AbstractContextManager[None]:
        """In this thread, answer only what needs no download (else `WouldBlock`: the
        adapter hands the request to a thread where blocking is fine)."""
        return no_loading()

    def close(self) -> None:
        """Stop read-ahead, close every file and directory handle (at unmount)."""
        self._files.close()
        self._directories.close()

    # --- extended attributes and statfs ----------------------------------------------
    def listxattr(self, ino: int) -> list[str]:
        path, entry, _ = self._entry_of(ino)
        return self._listxattr(path, entry)

    def listxattr_path(self, path: str) -> list[str]:
        return self._listxattr(path, self._current(path)[1])

    def _listxattr(self, path: str, entry: DirEntry) -> list[str]:
        """Stored xattrs, plus the magic names that answer for this entry where the
        visibility lists them (`magic_xattrs.listed`)."""
        names = [name for name, _ in entry.xattrs]
        magic = magic_xattrs.listed(entry, root=path == "",
                                    visibility=self.options.magic_xattrs_visibility)
        return names + [n for n in magic if n not in names]

    def getxattr(self, ino: int, name: str) -> bytes:
        value = self.find_xattr(ino, name)
        if value is None:
            raise FsError(errno.ENODATA)
        return value

    def find_xattr(self, ino: int, name: str) -> bytes | None:
        """`getxattr`, with None for "no such attribute": `ls -l` asks every entry for
        security.selinux and system.posix_acl_access, and an exception per answer is
        measurable there. A name that is not magic, of an inode known to have no stored
        xattrs, needs no catalog query."""
        if not magic_xattrs.is_magic(name) and self._recent.has_no_xattrs(ino, self.repository):
            self._check_revoked()
            return None
        path, entry, _ = self._entry_of(ino)
        return self._getxattr(path, entry, name)

    def getxattr_path(self, path: str, name: str) -> bytes:
        value = self._getxattr(path, self._current(path)[1], name)
        if value is None:
            raise FsError(errno.ENODATA)
        return value

    def _getxattr(self, path: str, entry: DirEntry, name: str) -> bytes | None:
        """Magic attributes shadow stored ones and are gettable on every entry."""
        if magic_xattrs.is_magic(name):
            context = XattrContext(self._announced, self.stats, self.network, self.cache,
                                   path, entry, self._expires, self.inode_max, self._gauges)
            try:
                return magic_xattrs.get(name, context)
            except EXPECTED as exc:
                raise fs_error(exc) from exc
        for key, value in entry.xattrs:
            if key == name:
                return value
        return None

    def _gauges(self) -> dict[str, int]:
        """What the core holds now, for the stats document (`pycvmfs status`)."""
        return {"open_files": len(self._files), "open_dirs": len(self._directories),
                "inodes": self.inode_count()}

    def statfs(self) -> StatFs:
        return attributes.statfs(self._capacity(), self.repository.statistics())
