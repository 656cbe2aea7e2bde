"""What the kernel may cache from a mount, and how a revision change drops it (both
inode-based adapters use this; each brings its own notification calls).

Remembered: negative entries handed out (bounded, oldest forgotten first) and directories
whose listing the kernel may cache. At a revision change, in the revision watcher's thread:
  1. every such directory (and every parent of a name handed out) gets an inode
     invalidation: its cached listing and attributes go (cheap: no directory lock);
  2. files whose inode is kept but whose other attributes changed get an attributes-only
     invalidation (their page cache stays);
  3. the names handed out that answer differently now (another inode, or gone), and the
     negative names that now exist, get an entry invalidation. Each of those waits for the
     directory's lock, which every reader of that directory holds while it lists it, so
     unchanged names are left alone (their files keep their page cache), and the pass
     stops once the kernel's entry timeout has passed since the change: by then the
     kernel has expired every name handed out before it on its own.

Thread-safety: `negative`, `listed` and `forgotten` may be called from request handlers
in any thread while `invalidate` runs.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Protocol

log = logging.getLogger(__name__)
MAX_TRACKED_NEGATIVES = 100_000  # negative entries remembered for invalidation


class Names(Protocol):
    """What the filesystem core answers about names (RepositoryVFS)."""

    def known_entries(self) -> Iterable[tuple[int, str]]: ...
    def revision_changes(self) -> tuple[list[tuple[int, str]], list[int]]: ...
    def appeared(self, parent: int, name: str) -> bool: ...


class KernelCache:
    """See the module docstring."""

    def __init__(self, names: Names, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._names = names
        self._clock = clock
        self._lock = threading.Lock()
        self._negatives: dict[tuple[int, bytes], None] = {}  # insertion-ordered
        self._listed: set[int] = set()

    def negative(self, parent: int, name: bytes) -> None:
        """The kernel caches that `name` does not exist in `parent`."""
        with self._lock:
            self._negatives[(parent, name)] = None
            if len(self._negatives) > MAX_TRACKED_NEGATIVES:
                del self._negatives[next(iter(self._negatives))]

    def listed(self, ino: int) -> None:
        """The kernel may cache the listing of directory `ino`."""
        with self._lock:
            self._listed.add(ino)

    def forgotten(self, inodes: Iterable[int]) -> None:
        """The kernel dropped these inodes (and any listing cached on them)."""
        with self._lock:
            self._listed.difference_update(inodes)

    def invalidate(self, inval_inode: Callable[[int, bool], None],
                   inval_entry: Callable[[int, bytes], None], entry_timeout: float) -> int:
        """Drop what the kernel caches from the old revision (module docstring);
        `inval_inode(ino, attributes_only)`. Returns how many names were left to expire on
        their own."""
        deadline = self._clock() + entry_timeout
        with self._lock:
            negatives, self._negatives = list(self._negatives), {}
            directories = set(self._listed)
        directories.update(parent for parent, _ in self._names.known_entries())
        for ino in directories:
            with contextlib.suppress(OSError):  # ENOENT: the kernel had forgotten it
                inval_inode(ino, False)
        stale, changed = self._names.revision_changes()
        for ino in changed:
            with contextlib.suppress(OSError):
                inval_inode(ino, True)
        names = [(parent, name.encode("utf-8", "surrogateescape")) for parent, name in stale]
        names += [(parent, name) for parent, name in negatives
                  if self._names.appeared(parent, name.decode("utf-8", "surrogateescape"))]
        for done, (parent, name) in enumerate(names):
            if self._clock() > deadline:
                log.info("%d names left to expire on their own after the revision change",
                         len(names) - done)
                return len(names) - done
            with contextlib.suppress(OSError):
                inval_entry(parent, name)
        return 0
