"""The backend-neutral, inode-based read-only filesystem over one `Repository`.

Adapters (pyfuse3, mfusepy) only translate calls into these methods and errors into
errno; no repository semantics live in them. Inodes are handed out on first lookup
and stay stable for the life of the mount; the members of a hardlink group (same
catalog, same group id) share one inode, as in the reference client. The root is
inode 1 (FUSE_ROOT_ID).

Thread-safety: every method may be called from several threads at once; the inode
tables and open handles are guarded by one lock, repository calls run outside it.

Caveats: inodes are never reused (a long-lived mount of a huge tree keeps its
path table); the reference bounds this with per-catalog inode ranges.
"""

from __future__ import annotations

import errno
import itertools
import os
import stat
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pycvmfs.errors import NotFoundError, PycvmfsError
from pycvmfs.format.catalog import DirEntry
from pycvmfs.format.symlinks import expand_symlink
from pycvmfs.fs import magic_xattrs
from pycvmfs.fs.magic_xattrs import ClientStats, NetworkInfo, XattrContext
from pycvmfs.repository.repository import Piece, Repository, read_pieces

ROOT_INODE = 1
BLOCK_SIZE = 4096


class FsError(Exception):
    """An errno for the adapter to return (ENOENT, ENOTDIR, EIO, ...)."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message or os.strerror(code))
        self.errno = code


@dataclass(frozen=True, slots=True)
class Attr:
    """stat values as the reference client reports them (fact sheet 13.3)."""

    ino: int
    mode: int
    nlink: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    rdev: int = 0

    @property
    def blocks(self) -> int:
        return 1 + self.size // 512


@dataclass(frozen=True, slots=True)
class MountOptions:
    """How entries are presented; fixed for one mount."""

    uid: int = os.getuid()
    gid: int = os.getgid()
    claim_ownership: bool = True  # CVMFS_CLAIM_OWNERSHIP: show the mounting user as owner
    world_readable: bool = False  # CVMFS_WORLD_READABLE
    environment: Mapping[str, str] | None = None  # for $(VAR) symlinks; None: os.environ
    magic_xattrs_visibility: str = "rootonly"  # CVMFS_MAGIC_XATTRS_VISIBILITY


@dataclass(frozen=True, slots=True)
class StatFs:
    block_size: int
    blocks: int
    blocks_free: int
    files: int
    files_free: int
    name_max: int = 255


class _OpenFile:
    """An open regular file: its chunk list and the object read last, so sequential
    reads of a chunk fetch and inflate it once (one buffer per handle)."""

    def __init__(self, path: str, entry: DirEntry, pieces: list[Piece]) -> None:
        self.path, self.entry, self.pieces = path, entry, pieces
        self._lock = threading.Lock()
        self._index = -1
        self._data = b""

    def piece_data(self, index: int, repository: Repository) -> bytes:
        with self._lock:
            if index != self._index:
                self._data = repository.load_piece(self.path, self.entry, self.pieces[index])
                self._index = index
            return self._data


class RepositoryVFS:
    """Inode view of a repository. See the module docstring for the contract."""

    def __init__(self, repository: Repository, options: MountOptions | None = None,
                 capacity: Callable[[], tuple[int, int]] = lambda: (0, 0),
                 stats: ClientStats | None = None,
                 network: NetworkInfo | None = None,
                 expires: Callable[[], str] = lambda: "never (fixed root catalog)") -> None:
        self.repository = repository
        self.options = options or MountOptions()
        self.stats = stats or ClientStats()
        self.network = network or NetworkInfo()
        self._expires = expires
        self._capacity = capacity  # (bytes total, bytes used) of the cache, for statfs
        self._lock = threading.Lock()
        self._paths: dict[int, str] = {ROOT_INODE: ""}
        self._inodes: dict[str, int] = {"": ROOT_INODE}
        self._groups: dict[tuple[str, int], int] = {}
        self._next_inode = itertools.count(ROOT_INODE + 1)
        self._handles: dict[int, _OpenFile] = {}
        self._next_handle = itertools.count(1)

    # --- names and inodes ------------------------------------------------------------
    def path_of(self, ino: int) -> str:
        with self._lock:
            path = self._paths.get(ino)
        if path is None:
            raise FsError(errno.ESTALE, f"inode {ino} is not known")
        return path

    def _inode_for(self, path: str, resolved_catalog: str, entry: DirEntry) -> int:
        with self._lock:
            ino = self._inodes.get(path)
            if ino is not None:
                return ino
            group_key = (resolved_catalog, entry.hardlink_group)
            if entry.hardlink_group and not entry.is_dir:
                ino = self._groups.get(group_key)
            if ino is None:
                ino = next(self._next_inode)
                if entry.hardlink_group and not entry.is_dir:
                    self._groups[group_key] = ino
            self._inodes[path] = ino
            self._paths.setdefault(ino, path)
            return ino

    def _resolve(self, path: str) -> tuple[int, DirEntry]:
        try:
            entry, catalog = self.repository.resolve(path)
        except NotFoundError:
            raise FsError(errno.ENOENT, f"{path or '/'}: no such entry") from None
        except PycvmfsError as exc:
            raise FsError(errno.EIO, str(exc)) from exc
        if path == "":
            return ROOT_INODE, entry
        return self._inode_for(path, catalog.root_prefix, entry), entry

    # --- metadata --------------------------------------------------------------------
    def attr(self, ino: int, entry: DirEntry, path: str) -> Attr:
        mode = entry.mode
        if self.options.world_readable:
            mode |= 0o555 if entry.is_dir else 0o444
        uid, gid = ((self.options.uid, self.options.gid) if self.options.claim_ownership
                    else (entry.uid, entry.gid))
        size = len(self.readlink_entry(entry)) if entry.is_symlink else entry.size
        rdev = entry.rdev
        return Attr(ino, mode, entry.linkcount, uid, gid, size,
                    entry.mtime * 10**9 + entry.mtimens, rdev)

    def lookup(self, parent: int, name: str) -> Attr:
        parent_path = self.path_of(parent)
        if name in (".", ".."):
            raise FsError(errno.ENOENT, "'.' and '..' are answered by the kernel")
        path = f"{parent_path}/{name}"
        ino, entry = self._resolve(path)
        return self.attr(ino, entry, path)

    def lookup_path(self, path: str) -> Attr:
        """For path-based adapters: `/a/b` (or `/`) straight to its attributes."""
        canonical = "" if path in ("", "/") else path.rstrip("/")
        ino, entry = self._resolve(canonical)
        return self.attr(ino, entry, canonical)

    def getattr(self, ino: int) -> Attr:
        path = self.path_of(ino)
        _, entry = self._resolve(path)
        return self.attr(ino, entry, path)

    def readdir(self, ino: int) -> list[tuple[str, Attr]]:
        """Children (without `.` and `..`), in a stable order."""
        path = self.path_of(ino)
        _, entry = self._resolve(path)
        if not entry.is_dir:
            raise FsError(errno.ENOTDIR, f"{path}: not a directory")
        with self.stats.lock:
            self.stats.ndiropen += 1
        try:
            children = self.repository.listdir(path)
            # every child lives in the catalog that lists them (a mountpoint's entry too):
            # one catalog for all hardlink keys instead of one more lookup per child
            tree = self.repository.tree
            prefix = tree.listing_catalog(path, tree.lookup(path)).root_prefix
        except PycvmfsError as exc:
            raise FsError(errno.EIO, str(exc)) from exc
        out = []
        for name, child in children:
            child_path = f"{path}/{name}"
            child_ino = self._inode_for(child_path, prefix, child)
            out.append((name, self.attr(child_ino, child, child_path)))
        return out

    def readdir_with_dots(self, ino: int) -> list[tuple[str, Attr]]:
        """`.` and `..` (none for the repository root's parent) first, as the reference
        client lists them, then the children."""
        path = self.path_of(ino)
        dots = [(".", self.getattr(ino))]
        if path:
            parent = path.rsplit("/", 1)[0]
            dots.append(("..", self.lookup_path(parent or "/")))
        return dots + self.readdir(ino)

    def readlink_entry(self, entry: DirEntry) -> bytes:
        environment = self.options.environment
        target = expand_symlink(entry.symlink,
                                environment if environment is not None else os.environ)
        return target.encode("utf-8", "surrogateescape")

    def readlink(self, ino: int) -> bytes:
        _, entry = self._resolve(self.path_of(ino))
        if not entry.is_symlink:
            raise FsError(errno.EINVAL, "not a symbolic link")
        return self.readlink_entry(entry)

    # --- contents --------------------------------------------------------------------
    def open(self, ino: int, flags: int) -> int:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_TRUNC | os.O_CREAT):
            raise FsError(errno.EROFS, "read-only file system")
        path = self.path_of(ino)
        _, entry = self._resolve(path)
        if entry.is_dir:
            raise FsError(errno.EISDIR)
        if not stat.S_ISREG(entry.mode):
            raise FsError(errno.EINVAL)
        try:
            _, pieces = self.repository.pieces(path)
        except PycvmfsError as exc:
            raise FsError(errno.EIO, str(exc)) from exc
        with self._lock:
            handle = next(self._next_handle)
            self._handles[handle] = _OpenFile(path, entry, pieces)
        with self.stats.lock:
            self.stats.nopen += 1
        return handle

    def read(self, handle: int, offset: int, size: int) -> bytes:
        with self._lock:
            opened = self._handles.get(handle)
        if opened is None:
            raise FsError(errno.EBADF)
        try:
            return read_pieces(opened.pieces, offset, min(offset + size, opened.entry.size),
                               lambda index: opened.piece_data(index, self.repository))
        except PycvmfsError as exc:  # hash mismatch, fetch failure: never wrong bytes
            self.stats.io_error()
            raise FsError(errno.EIO, str(exc)) from exc

    def release(self, handle: int) -> None:
        with self._lock:
            self._handles.pop(handle, None)

    # --- extended attributes and statfs ----------------------------------------------
    def listxattr(self, ino: int) -> list[str]:
        """Stored xattrs, plus the magic names on the root (by default) or everywhere."""
        _, entry = self._resolve(self.path_of(ino))
        names = [name for name, _ in entry.xattrs]
        visibility = self.options.magic_xattrs_visibility
        if visibility == "always" or (visibility == "rootonly" and ino == ROOT_INODE):
            names += [n for n in magic_xattrs.names() if n not in names]
        return names

    def getxattr(self, ino: int, name: str) -> bytes:
        """Magic attributes shadow stored ones and are gettable on every entry."""
        path = self.path_of(ino)
        _, entry = self._resolve(path)
        if magic_xattrs.is_magic(name):
            context = XattrContext(self.repository, self.stats, self.network, path, entry,
                                   self._expires, self.inode_max)
            try:
                value = magic_xattrs.get(name, context)
            except PycvmfsError as exc:
                raise FsError(errno.EIO, str(exc)) from exc
            if value is None:
                raise FsError(errno.ENODATA)
            return value
        for key, value in entry.xattrs:
            if key == name:
                return value
        raise FsError(errno.ENODATA)

    def inode_max(self) -> int:
        with self._lock:
            return max(self._paths)

    def statfs(self) -> StatFs:
        total, used = self._capacity()
        counters = self.repository.statistics()
        files = sum(counters.get(k, 0) for k in ("regular", "symlink", "special", "dir"))
        return StatFs(512, total // 512, max(total - used, 0) // 512, files, 0)
