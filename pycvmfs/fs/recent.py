"""What the kernel asked about last, by inode: the entry a LOOKUP just resolved, kept for
the requests that follow it (OPEN, GETATTR, GETXATTR of the same inode), so a file that is
looked up, opened and read costs one catalog query, not three.

An answer is kept together with the revision (`Repository`) it came from and used only
while that revision is still the one served: a revision change makes every kept answer
stale at once, without a sweep. Bounded (`RECENT_ENTRIES`, least recently used out); holds
entries only (their catalogs are not needed by the requests it serves).

Beyond that window it also keeps which held inodes have no stored xattrs (one set of
numbers, of one revision, dropped as the kernel forgets them; at most `BARE_INODES`):
`ls -l` asks every entry for security.selinux and system.posix_acl_access, and on a
repeated `ls -lR` of a big tree those questions arrive long after the LOOKUP that
resolved the entry. "No such attribute" then costs no catalog query.

Thread-safety: every method may be called from any thread (one lock).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from pycvmfs.format.catalog import DirEntry
from pycvmfs.repository.repository import Repository

RECENT_ENTRIES = 2048  # the working set of a container start, or of `ls -l` in one directory
BARE_INODES = 1 << 20  # inodes known to have no stored xattrs (~40 MB at most; then cleared)


class RecentEntries:
    """inode -> (revision, path, entry) of the latest answers; see the module docstring."""

    def __init__(self, capacity: int = RECENT_ENTRIES) -> None:
        self._capacity = capacity
        self._lock = threading.Lock()
        self._items: OrderedDict[int, tuple[Repository, str, DirEntry]] = OrderedDict()
        self._bare: set[int] = set()  # inodes of `_bare_revision` without stored xattrs
        self._bare_revision: Repository | None = None

    def remember(self, ino: int, repository: Repository, path: str, entry: DirEntry) -> None:
        with self._lock:
            self._items[ino] = (repository, path, entry)
            self._items.move_to_end(ino)
            if len(self._items) > self._capacity:
                self._items.popitem(last=False)
            if repository is not self._bare_revision or len(self._bare) >= BARE_INODES:
                self._bare.clear()
                self._bare_revision = repository
            if entry.xattrs:
                self._bare.discard(ino)
            else:
                self._bare.add(ino)

    def has_no_xattrs(self, ino: int, repository: Repository) -> bool:
        """True if `ino`, as resolved in `repository`, is known to have no stored xattrs
        (False: not known, ask the catalog)."""
        return repository is self._bare_revision and ino in self._bare

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
                self._bare.discard(ino)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bare.clear()
            self._bare_revision = None

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
