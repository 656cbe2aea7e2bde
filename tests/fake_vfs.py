"""A RepositoryVFS stand-in for adapter unit tests: a small tree in memory, with what the
adapters call (lookups counted as the kernel's, `inline()` refusing what is marked as
needing a download, errors injected per inode)."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager

from pycvmfs.format.catalog import DirEntry
from pycvmfs.fs.directories import Listed, Listing
from pycvmfs.fs.magic_xattrs import ClientStats
from pycvmfs.fs.vfs import DOTS, Attr, FsError, StatFs, WouldBlock

MTIME_NS = 1_700_000_000_000_000_000


class FakeVFS:
    """`files` path -> bytes, `links` path -> target; directories follow from the paths.
    Paths in `remote` (and their contents) need a download: `inline()` refuses them."""

    def __init__(self, files: dict[str, bytes], links: dict[str, str] | None = None, *,
                 remote: Iterable[str] = ()) -> None:
        self.files = dict(files)
        self.links = dict(links or {})
        self.remote = set(remote)
        self.dirs = {""}
        for path in [*self.files, *self.links]:
            parts = path.split("/")
            self.dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
        self.inodes = {"": 1}
        for path in sorted(self.dirs | set(self.files) | set(self.links)):
            self.inodes.setdefault(path, len(self.inodes) + 1)
        self.paths = {ino: path for path, ino in self.inodes.items()}
        self.held: dict[int, int] = {}  # ino -> lookups the kernel holds
        self.tracking = False
        self.listeners: list[Callable[[], None]] = []  # `subscribe`
        self.draining_now = False
        self.failures: dict[int, BaseException] = {}  # ino -> raised by calls on it
        self.open_handles: dict[int, str] = {}
        self.open_dirs: dict[int, str] = {}
        self.direct: set[str] = set()
        self.page_cached = True  # read_nowait answers
        self.unopened = False  # `read_unopened`: handle 0 reads by inode
        self._inline = threading.local()
        self._next_handle = 100
        self.stats = ClientStats()  # the adapters time requests into `stats.operations`

    # --- what the adapters call ------------------------------------------------------
    def track_lookups(self) -> None:
        self.tracking = True

    def read_unopened(self) -> None:
        self.unopened = True

    def _read_path(self, handle: int, ino: int) -> str:
        """What a read names: its handle's path, or with handle 0 its inode's."""
        if handle == 0 and self.unopened:
            path = self._path(ino)
            self._check(path, ino)
            return path
        return self.open_handles[handle]

    def subscribe(self, listener: Callable[[], None]) -> None:
        self.listeners.append(listener)

    def unsubscribe(self, listener: Callable[[], None]) -> None:
        self.listeners.remove(listener)

    def draining(self) -> bool:
        return self.draining_now

    def entry_timeout(self, normal: float) -> float:
        return 0.0 if self.draining_now else normal

    def inline(self) -> AbstractContextManager[None]:
        @contextlib.contextmanager
        def forbidden() -> Iterator[None]:
            previous = getattr(self._inline, "on", False)
            self._inline.on = True
            try:
                yield
            finally:
                self._inline.on = previous

        return forbidden()

    def _check(self, path: str, ino: int | None = None) -> None:
        if ino is not None and ino in self.failures:
            raise self.failures[ino]
        if path in self.remote and getattr(self._inline, "on", False):
            raise WouldBlock(path)

    def _path(self, ino: int) -> str:
        if ino not in self.paths:
            raise FsError(errno.ESTALE)
        return self.paths[ino]

    def attr_of(self, path: str) -> Attr:
        ino = self.inodes[path]
        if path in self.dirs:
            return Attr(ino, stat.S_IFDIR | 0o755, 2, 0, 0, 4096, MTIME_NS)
        if path in self.links:
            return Attr(ino, stat.S_IFLNK | 0o777, 1, 0, 0, len(self.links[path]), MTIME_NS)
        return Attr(ino, stat.S_IFREG | 0o644, 1, 0, 0, len(self.files[path]), MTIME_NS)

    def lookup(self, parent: int, name: str) -> Attr:
        base = self._path(parent)
        child = f"{base}/{name}" if base else name
        self._check(child, parent)
        if child not in self.inodes:
            raise FsError(errno.ENOENT)
        attr = self.attr_of(child)
        self.held[attr.ino] = self.held.get(attr.ino, 0) + 1
        return attr

    def getattr(self, ino: int) -> Attr:
        path = self._path(ino)
        self._check(path, ino)
        return self.attr_of(path)

    def readlink(self, ino: int) -> bytes:
        path = self._path(ino)
        self._check(path, ino)
        if path not in self.links:
            raise FsError(errno.EINVAL)
        return self.links[path].encode()

    def forget(self, items: Iterable[tuple[int, int]]) -> list[int]:
        gone = []
        for ino, count in items:
            left = self.held.get(ino, 0) - count
            assert left >= 0, f"inode {ino} forgotten more often than handed out"
            if left:
                self.held[ino] = left
            else:
                self.held.pop(ino, None)
                gone.append(ino)
        return gone

    def _handle(self) -> int:
        self._next_handle += 1
        return self._next_handle

    def open(self, ino: int, flags: int) -> int:
        path = self._path(ino)
        self._check(path, ino)
        if path not in self.files:
            raise FsError(errno.EISDIR if path in self.dirs else errno.EINVAL)
        handle = self._handle()
        self.open_handles[handle] = path
        return handle

    def direct_io(self, handle: int) -> bool:
        return self.open_handles[handle] in self.direct

    def read_nowait(self, handle: int, offset: int, size: int, ino: int = 0) -> bytes | None:
        if not self.page_cached:
            return None
        return self.files[self._read_path(handle, ino)][offset:offset + size]

    def send_cached(self, handle: int, offset: int, size: int,
                    send: Callable[[int, int, int], None], ino: int = 0) -> bool | None:
        """Like the VFS: the bytes from a descriptor (a memfd here) while it is open;
        None (must be downloaded) when they are not cached."""
        if not self.page_cached:
            return None
        data = self.files[self._read_path(handle, ino)]
        fd = os.memfd_create("fake-cache-file")
        try:
            os.write(fd, data)
            send(fd, offset, max(0, min(size, len(data) - offset)))
        finally:
            os.close(fd)
        return True

    def read(self, handle: int, offset: int, size: int, ino: int = 0) -> bytes:
        path = self._read_path(handle, ino)
        self._check(path, self.inodes[path])
        return self.files[path][offset:offset + size]

    def release(self, handle: int) -> None:
        del self.open_handles[handle]

    def opendir(self, ino: int) -> int:
        path = self._path(ino)
        self._check(path, ino)
        if path not in self.dirs:
            raise FsError(errno.ENOTDIR)
        handle = self._handle()
        self.open_dirs[handle] = path
        return handle

    def readdir(self, handle: int, offset: int = 0) -> Listing:
        path = self.open_dirs[handle]
        names = [*DOTS] + sorted(p.rsplit("/", 1)[-1] for p in self.inodes
                                 if p and (p.rsplit("/", 1)[0] if "/" in p else "") == path)
        for index, name in enumerate(names[offset:], start=offset + 1):
            if name == ".":
                child = path
            elif name == "..":
                child = path.rsplit("/", 1)[0] if "/" in path else ""
            else:
                child = f"{path}/{name}" if path else name
            self._check(child, self.inodes[child])
            entry = DirEntry(name=name, mode=self.attr_of(child).mode, size=0, mtime=0,
                             flags=0)
            yield Listed(name, self.inodes[child], entry, child, index,
                         None if name in DOTS else object())  # type: ignore[arg-type]

    def listed_attr(self, item: Listed, *, hand_out: bool) -> Attr:
        if item.ino in self.failures:
            raise self.failures[item.ino]
        attr = self.attr_of(item.path)
        if hand_out:
            self.held[attr.ino] = self.held.get(attr.ino, 0) + 1
        return attr

    def releasedir(self, handle: int) -> None:
        del self.open_dirs[handle]

    def statfs(self) -> StatFs:
        return StatFs(512, 1000, 10, len(self.inodes), 0)

    def getxattr(self, ino: int, name: str) -> bytes:
        value = self.find_xattr(ino, name)
        if value is None:
            raise FsError(errno.ENODATA)
        return value

    def find_xattr(self, ino: int, name: str) -> bytes | None:
        self._check(self._path(ino), ino)
        return b"value" if name == "user.pycvmfs.test" else None

    def listxattr(self, ino: int) -> list[str]:
        self._check(self._path(ino), ino)
        return ["user.pycvmfs.test", "user.other"]

    # --- what kernel_cache.KernelCache asks ------------------------------------------
    def known_entries(self) -> Iterator[tuple[int, str]]:
        for ino in self.held:
            path = self.paths[ino]
            parent = path.rsplit("/", 1)[0] if "/" in path else ""
            yield self.inodes[parent], path.rsplit("/", 1)[-1]

    def revision_changes(self) -> tuple[list[tuple[int, str]], list[int]]:
        return [], []

    def appeared(self, parent: int, name: str) -> bool:
        base = self.paths.get(parent)
        return base is None or (f"{base}/{name}" if base else name) in self.inodes
