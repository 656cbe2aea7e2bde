"""The open regular files of one mount: by handle, and by inode for reads that come
without an OPEN.

What a file reads is a `repository.reader.OpenFile` (its chunk list fixed at open, cache
files read with `pread`, read-ahead through the mount's one `Prefetcher`); this table hands
out handle numbers, finds the file a replaced inode still reads, and closes everything at
unmount.

Inode files (FUSE no-open: the kernel opens files without asking, and a READ names only
the inode): the file of an inode is opened at its first read and kept among the
`INODE_FILES` most recently read (older ones are closed; a later read opens it again),
until the kernel forgets the inode. An inode whose path got other content in a newer
revision keeps the file of its old content (`retain`) until the kernel forgets it: a
process that opened it before the change reads what it opened.

Thread-safety: every method may be called from any thread (one lock for the tables). A
file closed while another thread still reads it stays correct (`OpenFile.close`).
"""

from __future__ import annotations

import errno
import itertools
import threading
from collections import OrderedDict
from collections.abc import Iterable

from pycvmfs.fs.errors import FsError
from pycvmfs.repository.reader import OpenFile, Prefetcher

INODE_FILES = 64  # inode files kept open (the readers of a busy mount, with room to spare)


class OpenFiles:
    """Open regular files by handle and by inode (see the module docstring)."""

    def __init__(self, inode_files: int = INODE_FILES) -> None:
        self._lock = threading.Lock()
        self._handles: dict[int, tuple[int, OpenFile]] = {}  # handle: (inode, file)
        self._next = itertools.count(1)
        self._inode_files = inode_files
        self._by_inode: OrderedDict[int, OpenFile] = OrderedDict()  # least recent first
        self._retained: dict[int, OpenFile] = {}  # replaced inodes: their old content
        self.prefetcher = Prefetcher()

    def __len__(self) -> int:
        """Files open now (handles and inode files)."""
        with self._lock:
            return len(self._handles) + len(self._by_inode) + len(self._retained)

    # --- handles -----------------------------------------------------------------------
    def add(self, ino: int, opened: OpenFile) -> int:
        with self._lock:
            handle = next(self._next)
            self._handles[handle] = (ino, opened)
        return handle

    def get(self, handle: int) -> OpenFile:
        opened = self.find(handle)
        if opened is None:
            raise FsError(errno.EBADF, f"file handle {handle} is not open")
        return opened

    def find(self, handle: int) -> OpenFile | None:
        with self._lock:
            held = self._handles.get(handle)
        return held[1] if held is not None else None

    def release(self, handle: int) -> None:
        with self._lock:
            held = self._handles.pop(handle, None)
        if held is not None:
            held[1].close()

    # --- inodes ------------------------------------------------------------------------
    def holding(self, ino: int) -> OpenFile | None:
        """An open file of inode `ino` (what a replaced inode still reads), if any."""
        with self._lock:
            found = self._retained.get(ino) or self._by_inode.get(ino)
            return found or next((f for i, f in self._handles.values() if i == ino), None)

    def of_inode(self, ino: int) -> OpenFile | None:
        """The inode file of `ino` if it is open (now the most recently read)."""
        with self._lock:
            retained = self._retained.get(ino)
            if retained is not None:
                return retained
            opened = self._by_inode.get(ino)
            if opened is not None:
                self._by_inode.move_to_end(ino)
            return opened

    def adopt(self, ino: int, opened: OpenFile) -> OpenFile:
        """Keep `opened` as the inode file of `ino`; if another thread was first, close
        `opened` and return that one. The least recently read beyond `INODE_FILES` close."""
        evicted: list[OpenFile] = []
        with self._lock:
            kept = self._retained.get(ino)
            if kept is None:
                kept = self._by_inode.setdefault(ino, opened)
                self._by_inode.move_to_end(ino)
            while len(self._by_inode) > self._inode_files:
                evicted.append(self._by_inode.popitem(last=False)[1])
        if kept is not opened:
            evicted.append(opened)
        for file in evicted:
            file.close()
        return kept

    def retain(self, ino: int, opened: OpenFile) -> None:
        """Keep the content `ino` was handed out with, `opened`, as its file until the
        kernel forgets it (its path now has other content). An inode file already open
        reads that same content: it stays, and `opened` is closed."""
        with self._lock:
            kept = self._retained.get(ino) or self._by_inode.pop(ino, None) or opened
            self._retained[ino] = kept
        if kept is not opened:
            opened.close()

    def forget(self, inodes: Iterable[int]) -> None:
        """The kernel forgot these inodes: their inode files close."""
        closing = []
        with self._lock:
            for ino in inodes:
                for table in (self._by_inode, self._retained):
                    opened = table.pop(ino, None)
                    if opened is not None:
                        closing.append(opened)
        for opened in closing:
            opened.close()

    def close(self) -> None:
        """Stop read-ahead and close every file (at unmount)."""
        self.prefetcher.close()
        with self._lock:
            files = [f for _, f in self._handles.values()]
            files += [*self._by_inode.values(), *self._retained.values()]
            self._handles, self._by_inode, self._retained = {}, OrderedDict(), {}
        for opened in files:
            opened.close()
