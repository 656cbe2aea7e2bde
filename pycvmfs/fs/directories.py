"""Directory handles: a listing read page by page from the revision it was opened on.

OPENDIR takes a lease on the revision being served (`Repository.acquire`) and READDIR pages
through that revision's catalog, so a listing never mixes two revisions, however many swaps
happen while it is read (the reference snapshots a directory at opendir the same way).
Offsets are stable keys: `.` ends at 1, `..` at 2, each child at its catalog range base +
rowid (the number a plain READDIR reports as its d_ino, see `inodes.py`), so a READDIR at
any offset handed out — seekdir to a telldir position — resumes right after that entry; an
offset between entries resumes at the next one. A handle holds one page of rows
(`PAGE_ROWS`) whatever the directory's size, and RELEASEDIR ends the lease (a revision
replaced meanwhile is closed then).

A READDIR at offset 0 (the first one, or a rewinddir) moves a handle of a replaced revision
to the current one, as POSIX asks of rewinddir: a listing read from its start is never an
old one, so the kernel's listing cache is only ever filled from offset 0 with the revision
being served.

Thread-safety: every method may be called from any thread; a handle's page is guarded by
its own lock.
"""

from __future__ import annotations

import errno
import itertools
import threading
from collections.abc import Generator, Iterator
from dataclasses import dataclass

from pycvmfs.errors import CatalogError
from pycvmfs.format.catalog import DirEntry
from pycvmfs.fs.errors import EXPECTED, FsError, fs_error
from pycvmfs.fs.inodes import InodeTable
from pycvmfs.repository.catalog import Catalog
from pycvmfs.repository.repository import Repository

PAGE_ROWS = 512  # catalog rows read per query
DOT_END, DOTDOT_END = 1, 2  # offsets after `.` and after `..`


@dataclass(frozen=True, slots=True)
class Listed:
    """One entry of a listing: `ino` is its number (nothing recorded yet), `offset` where
    the next READDIR resumes; `catalog` is where its row lives (None for `.` and `..`)."""

    name: str
    ino: int
    entry: DirEntry
    path: str
    offset: int
    catalog: Catalog | None
    repository: Repository | None = None  # the revision listed (None for `.` and `..`)


Listing = Generator["Listed", None, None]  # close() it when done taking


class _Handle:
    def __init__(self, ino: int, path: str, repository: Repository,
                 dots: list[Listed] | None) -> None:
        self.ino, self.path, self.repository, self.dots = ino, path, repository, dots
        self.lock = threading.Lock()
        self.page: list[DirEntry] = []
        self.page_after = -1  # the rowid the buffered page starts after (-1: none)
        self.page_last = 0
        self.more = True
        self.listing: tuple[Catalog, int] | None = None  # catalog of the children, its base


class DirectoryHandles:
    """Open directories of one mount (see the module docstring)."""

    def __init__(self, inodes: InodeTable) -> None:
        self._inodes = inodes
        self._lock = threading.Lock()
        self._handles: dict[int, _Handle] = {}
        self._next = itertools.count(1)

    def __len__(self) -> int:
        """Handles open now."""
        return len(self._handles)

    def open(self, ino: int, path: str, repository: Repository) -> int:
        """A handle listing directory `path` (inode `ino`) of `repository`. Nothing is read
        yet: a listing the kernel has cached is answered without a single READDIR, and
        OPENDIR then costs only this."""
        if not repository.acquire():
            raise FsError(errno.EAGAIN, "the revision was replaced while opening")
        handle = next(self._next)
        with self._lock:
            self._handles[handle] = _Handle(ino, path, repository, None)
        return handle

    def _dots(self, ino: int, path: str, repository: Repository) -> list[Listed]:
        try:
            entry = repository.resolve(path).entry
        except EXPECTED as exc:
            raise fs_error(exc) from exc
        if not entry.is_dir:
            raise FsError(errno.ENOTDIR, f"{path or '/'}: not a directory")
        dots = [Listed(".", ino, entry, path, DOT_END, None)]
        if path:
            parent = path.rsplit("/", 1)[0]
            try:
                parent_entry, catalog = repository.resolve(parent)
            except EXPECTED as exc:
                raise fs_error(exc) from exc
            dots.append(Listed("..", self._inodes.number(parent, parent_entry, catalog),
                               parent_entry, parent, DOTDOT_END, None))
        return dots

    def entries(self, handle: int, offset: int, current: Repository) -> Listing:
        """The entries after `offset`, one page read at a time while the caller takes
        more (a generator: stop taking when the reply is full). At offset 0 (the first
        READDIR, or a rewinddir) a handle of a replaced revision moves to `current`: a
        listing from its start is never an old one."""
        opened = self._get(handle)
        if offset == 0 and opened.repository is not current:
            self._move(opened, current)
        dots = opened.dots
        if dots is None:
            dots = opened.dots = self._dots(opened.ino, opened.path, opened.repository)
        for dot in dots:
            if offset < dot.offset:
                yield dot
        try:
            yield from self._children(opened, offset)
        except FsError:
            raise
        except EXPECTED as exc:
            raise fs_error(exc) from exc

    def _listing_catalog(self, opened: _Handle, fresh: bool = False) -> tuple[Catalog, int]:
        """The catalog holding the children and its range base, found once per handle (or
        again when `fresh`: the one found was detached and closed meanwhile)."""
        with opened.lock:
            found = opened.listing
        if found is None or fresh:
            repository, path = opened.repository, opened.path
            catalog = repository.tree.listing_catalog(path, repository.resolve(path))
            found = catalog, self._inodes.base(catalog)
            with opened.lock:
                opened.listing = found
        return found

    def _children(self, opened: _Handle, offset: int) -> Iterator[Listed]:
        path = opened.path
        catalog, base = self._listing_catalog(opened)
        after = max(offset - base, 0) if offset > DOTDOT_END else 0
        while True:
            try:
                page, more = self._page(opened, catalog, after)
            except CatalogError:  # detached under cache pressure and closed: attach again
                catalog, base = self._listing_catalog(opened, fresh=True)
                page, more = self._page(opened, catalog, after)
            for entry in page:
                if entry.rowid <= after:
                    continue
                child = f"{path}/{entry.name}"
                yield Listed(entry.name, self._inodes.number(child, entry, catalog), entry,
                             child, base + entry.rowid, catalog, opened.repository)
                after = entry.rowid
            if not more:
                return
            after = max(after, opened.page_last)

    def _move(self, opened: _Handle, current: Repository) -> None:
        if not current.acquire():
            return  # replaced again meanwhile: keep listing the one held
        try:
            dots = self._dots(opened.ino, opened.path, current)
        except BaseException:
            current.release()
            raise
        with opened.lock:
            old, opened.repository, opened.dots = opened.repository, current, dots
            opened.page, opened.page_after, opened.page_last, opened.more = [], -1, 0, True
            opened.listing = None
        old.release()

    @staticmethod
    def _page(opened: _Handle, catalog: Catalog, after: int) -> tuple[list[DirEntry], bool]:
        """The buffered page if it covers `after`, else the next one read from `catalog`."""
        with opened.lock:
            if opened.page_after <= after < opened.page_last or \
                    (after == opened.page_last and not opened.more):
                return opened.page, opened.more
        page = catalog.listdir_page(opened.path, after, PAGE_ROWS)
        with opened.lock:
            opened.page, opened.page_after = page.entries, after
            opened.page_last, opened.more = page.last_rowid, page.more
        return page.entries, page.more

    def release(self, handle: int) -> None:
        with self._lock:
            opened = self._handles.pop(handle, None)
        if opened is not None:
            opened.repository.release()

    def _get(self, handle: int) -> _Handle:
        with self._lock:
            opened = self._handles.get(handle)
        if opened is None:
            raise FsError(errno.EBADF, f"directory handle {handle} is not open")
        return opened

    def close(self) -> None:
        """Release every handle (at unmount)."""
        with self._lock:
            handles, self._handles = list(self._handles.values()), {}
        for opened in handles:
            opened.repository.release()
