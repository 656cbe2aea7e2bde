"""What the kernel may cache from a mount, and how a revision change drops it: the
bookkeeping both inode-based adapters share (each brings its own notification calls).

Remembered: negative entries handed out (bounded, oldest forgotten first) and directories
whose listing the kernel may cache. At a revision change (`invalidate_all`, the VFS's
revision listener, run in the revision watcher's thread, never in a request handler: a
notification waits for requests on the same inodes):
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
  4. with `redrain_s` (an adapter whose kernel caches listings): a listing answered in
     the drain window right after the change may have been computed before it and reach
     the kernel after step 1, so it is invalidated once more `redrain_s` later.

`HandOut` counts the entries of one READDIRPLUS reply as held by the kernel, and takes
back what did not reach it.

Thread-safety: `negative`, `listed`, `answered_listing` and `forgotten` may be called from
request handlers in any thread while `invalidate` runs.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from pycvmfs.fs.directories import Listed
from pycvmfs.fs.vfs import DOTS, Attr

log = logging.getLogger(__name__)
MAX_TRACKED_NEGATIVES = 100_000  # negative entries remembered for invalidation


class Names(Protocol):
    """What the filesystem core answers about names (RepositoryVFS)."""

    def known_entries(self) -> Iterable[tuple[int, str]]: ...
    def revision_changes(self) -> tuple[list[tuple[int, str]], list[int]]: ...
    def appeared(self, parent: int, name: str) -> bool: ...
    def draining(self) -> bool: ...


class KernelCache:
    """See the module docstring. `inval_inode(ino, attributes_only)` and
    `inval_entry(parent, name)` are the adapter's notifications (OSError: nothing to
    drop)."""

    def __init__(self, names: Names, inval_inode: Callable[[int, bool], None],
                 inval_entry: Callable[[int, bytes], None], entry_timeout: float, *,
                 redrain_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._names = names
        self._inval_inode = inval_inode
        self._inval_entry = inval_entry
        self._entry_timeout = entry_timeout
        self._redrain_s = redrain_s
        self._clock = clock
        self._lock = threading.Lock()
        self._negatives: dict[tuple[int, bytes], None] = {}  # insertion-ordered
        self._listed: set[int] = set()
        self._listed_draining: set[int] = set()  # answered in the drain window
        self._redrain: threading.Timer | None = None

    def negative(self, parent: int, name: bytes) -> None:
        """The kernel caches that `name` does not exist in `parent`."""
        with self._lock:
            self._negatives[(parent, name)] = None
            if len(self._negatives) > MAX_TRACKED_NEGATIVES:
                del self._negatives[next(iter(self._negatives))]

    def missing(self, parent: int, name: bytes, code: int) -> bool:
        """Whether a LOOKUP that failed with errno `code` answers a negative entry
        (ENOENT), which the kernel will cache: then it is remembered."""
        if code != errno.ENOENT:
            return False
        self.negative(parent, name)
        return True

    def listed(self, ino: int) -> None:
        """The kernel may cache the listing of directory `ino`."""
        with self._lock:
            self._listed.add(ino)

    def answered_listing(self, ino: int) -> None:
        """The first page of a listing of `ino` reached the kernel: if it may come from
        the revision before a change, it is dropped once more after the drain window."""
        if self._redrain_s is not None and self._names.draining():
            with self._lock:
                self._listed_draining.add(ino)

    def forgotten(self, inodes: Iterable[int]) -> None:
        """The kernel dropped these inodes (and any listing cached on them)."""
        with self._lock:
            for ino in inodes:
                self._listed.discard(ino)
                self._listed_draining.discard(ino)

    def invalidate_all(self) -> None:
        """Drop what the kernel caches from the old revision (module docstring)."""
        with self._lock:
            self._listed_draining.clear()
        self.invalidate()
        if self._redrain_s is None:
            return
        redrain = threading.Timer(self._redrain_s, self._invalidate_drained)
        redrain.daemon = True
        with self._lock:
            if self._redrain is not None:
                self._redrain.cancel()
            self._redrain = redrain
        redrain.start()

    def _invalidate_drained(self) -> None:
        with self._lock:
            drained, self._listed_draining = self._listed_draining, set()
        for ino in drained:
            with contextlib.suppress(OSError):
                self._inval_inode(ino, False)

    def stop(self) -> None:
        """No timer left behind (at unmount)."""
        with self._lock:
            if self._redrain is not None:
                self._redrain.cancel()

    def invalidate(self) -> int:
        """Steps 1-3 of the module docstring. Returns how many names were left to expire
        on their own."""
        deadline = self._clock() + self._entry_timeout
        with self._lock:
            negatives, self._negatives = list(self._negatives), {}
            directories = set(self._listed)
        directories.update(parent for parent, _ in self._names.known_entries())
        for ino in directories:
            with contextlib.suppress(OSError):  # ENOENT: the kernel had forgotten it
                self._inval_inode(ino, False)
        stale, changed = self._names.revision_changes()
        for ino in changed:
            with contextlib.suppress(OSError):
                self._inval_inode(ino, True)
        names = [(parent, name.encode("utf-8", "surrogateescape")) for parent, name in stale]
        names += [(parent, name) for parent, name in negatives
                  if self._names.appeared(parent, name.decode("utf-8", "surrogateescape"))]
        for done, (parent, name) in enumerate(names):
            if self._clock() > deadline:
                log.info("%d names left to expire on their own after the revision change",
                         len(names) - done)
                return len(names) - done
            with contextlib.suppress(OSError):
                self._inval_entry(parent, name)
        return 0


class Inodes(Protocol):
    """The lookup counts of the filesystem core (RepositoryVFS)."""

    def listed_attr(self, item: Listed, *, hand_out: bool) -> Attr: ...
    def forget(self, items: Iterable[tuple[int, int]]) -> list[int]: ...


class HandOut:
    """The entries of one READDIRPLUS reply: every one but `.` and `..` is counted as held
    by the kernel before the reply is sent (`attr`); what did not fit (`take_back_last`)
    or never reached the kernel (`take_back`) is given back."""

    __slots__ = ("_inodes", "_counted", "_last")

    def __init__(self, inodes: Inodes) -> None:
        self._inodes = inodes
        self._counted: list[tuple[int, int]] = []
        self._last = False  # whether the last `attr` counted its inode

    def attr(self, item: Listed) -> Attr:
        handed = item.name not in DOTS
        attr = self._inodes.listed_attr(item, hand_out=handed)
        if handed:
            self._counted.append((attr.ino, 1))
        self._last = handed
        return attr

    def take_back_last(self) -> None:
        """The last entry did not fit the reply."""
        if self._last:
            self._last = False
            self._inodes.forget([self._counted.pop()])

    def take_back(self) -> None:
        """The reply did not reach the kernel: nothing of it is held."""
        counted, self._counted, self._last = self._counted, [], False
        if counted:
            self._inodes.forget(counted)
