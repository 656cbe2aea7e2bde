"""What the kernel asked about last, by inode: the entry a LOOKUP just resolved, kept for
the requests that follow it (OPEN, GETATTR, GETXATTR of the same inode), so a file that is
looked up, opened and read costs one catalog query, not three.

An answer is kept together with the revision (`Repository`) it came from and used only
while that revision is still the one served: a revision change makes every kept answer
stale at once, without a sweep. Bounded (`RECENT_ENTRIES`, least recently used out); holds
entries only (their catalogs are not needed by the requests it serves).

Thread-safety: every method may be called from any thread (one lock).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from pycvmfs.format.catalog import DirEntry
from pycvmfs.repository.repository import Repository

RECENT_ENTRIES = 2048  # the working set of a container start, or of `ls -l` in one directory


class RecentEntries:
    """inode -> (revision, path, entry) of the latest answers; see the module docstring."""

    def __init__(self, capacity: int = RECENT_ENTRIES) -> None:
        self._capacity = capacity
        self._lock = threading.Lock()
        self._items: OrderedDict[int, tuple[Repository, str, DirEntry]] = OrderedDict()

    def remember(self, ino: int, repository: Repository, path: str, entry: DirEntry) -> None:
        with self._lock:
            self._items[ino] = (repository, path, entry)
            self._items.move_to_end(ino)
            if len(self._items) > self._capacity:
                self._items.popitem(last=False)

    def get(self, ino: int, repository: Repository) -> tuple[str, DirEntry] | None:
        """The path and entry of `ino` if they were resolved in `repository`."""
        with self._lock:
            held = self._items.get(ino)
        if held is None or held[0] is not repository:
            return None
        return held[1], held[2]

    def forget(self, inodes: list[int]) -> None:
        with self._lock:
            for ino in inodes:
                self._items.pop(ino, None)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
