"""The open regular files of one mount, by handle, and the inode each was opened as.

What a handle reads is a `repository.reader.OpenFile` (its chunk list fixed at open, cache
files read with `pread`, read-ahead through the mount's one `Prefetcher`); this table only
hands out handle numbers, finds the file a replaced inode still reads, and closes
everything at unmount.

Thread-safety: every method may be called from any thread (one lock for the table).
"""

from __future__ import annotations

import errno
import itertools
import threading

from pycvmfs.fs.errors import FsError
from pycvmfs.repository.reader import OpenFile, Prefetcher


class OpenFiles:
    """Open regular files by handle (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._handles: dict[int, tuple[int, OpenFile]] = {}  # handle: (inode, file)
        self._next = itertools.count(1)
        self.prefetcher = Prefetcher()

    def __len__(self) -> int:
        """Handles open now."""
        return len(self._handles)

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

    def holding(self, ino: int) -> OpenFile | None:
        """An open file of inode `ino` (what a replaced inode still reads), if any."""
        with self._lock:
            return next((f for i, f in self._handles.values() if i == ino), None)

    def release(self, handle: int) -> None:
        with self._lock:
            held = self._handles.pop(handle, None)
        if held is not None:
            held[1].close()

    def close(self) -> None:
        """Stop read-ahead and close every handle (at unmount)."""
        self.prefetcher.close()
        with self._lock:
            handles, self._handles = list(self._handles.values()), {}
        for _, opened in handles:
            opened.close()
