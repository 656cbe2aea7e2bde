"""Cross-process coordination for a cache directory shared by several mounts.

Two primitives, kept apart from the LRU policy (style guide R8):

* `CacheLock` — an exclusive `flock(2)` on `<cache>/lock_cachedb` (the reference's lock
  file name), opened relative to the checked cache directory (`safe_dir`). Every writer
  of the index and every cleanup holds it, so index transactions and evictions of
  different processes never interleave. `flock` locks belong to an open
  file description: two `CacheLock`s on the same file exclude each other even inside one
  process, and the kernel drops the lock when the holder dies (kill -9 included), so a
  crashed mount can never wedge the cache. Within one object the lock is re-entrant per
  thread (an RLock is taken first, then the file lock on the outermost entry).
* Owner tokens — `"<pid>:<start time>"`. Persisted next to pins and sessions so that a
  pin left behind by a dead process (kill -9, OOM) is recognised and ignored. The start
  time (field 22 of `/proc/<pid>/stat`, clock ticks since boot) defends against pid
  reuse; without `/proc` the token degrades to the pid alone.

Thread-safety: `CacheLock` may be shared between threads. Process-safety: the whole point.
Caveats: `flock` on NFS is emulated with POSIX locks by Linux (works with lockd, not
with every server); a shared *managed* cache belongs on a local filesystem, the alien
cache (no index, no lock) is the one meant for shared filesystems.
"""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path
from types import TracebackType

from pycvmfs.cache.safe_dir import SafeDir, open_directory

LOCK_FILE_NAME = "lock_cachedb"


class CacheLock:
    """Exclusive, per-thread re-entrant lock over `<cache>/lock_cachedb`, opened through
    the checked directory (`safe_dir`): never a planted link, never another user's file."""

    def __init__(self, directory: Path | SafeDir, mode: int = 0o600) -> None:
        if isinstance(directory, SafeDir):
            self._fd = directory.open_file(LOCK_FILE_NAME, os.O_RDWR | os.O_CREAT, mode,
                                           replace_bad=True)
        else:
            with open_directory(directory, create=False) as checked:
                self._fd = checked.open_file(LOCK_FILE_NAME, os.O_RDWR | os.O_CREAT, mode,
                                             replace_bad=True)
        self._thread_lock = threading.RLock()
        self._depth = 0

    def __enter__(self) -> CacheLock:
        self._thread_lock.acquire()
        try:
            if self._depth == 0:
                fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._thread_lock.release()
            raise
        self._depth += 1
        return self

    def acquire_nowait(self) -> bool:
        """Take the lock only if that needs no waiting; `release()` if True."""
        if not self._thread_lock.acquire(blocking=False):
            return False
        if self._depth == 0:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._thread_lock.release()
                return False
        self._depth += 1
        return True

    def release(self) -> None:
        self._depth -= 1
        try:
            if self._depth == 0:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def close(self) -> None:
        with self._thread_lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def _stat_fields(pid: int) -> list[bytes] | None:
    """Fields 3.. of /proc/PID/stat (state first), or None if it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    return stat[stat.rfind(b")") + 2 :].split()


def _start_time(pid: int) -> str | None:
    fields = _stat_fields(pid)
    return fields[19].decode() if fields is not None and len(fields) > 19 else None


def owner_token(pid: int | None = None) -> str:
    """Token naming a running process (this one by default)."""
    pid = os.getpid() if pid is None else pid
    start = _start_time(pid)
    return f"{pid}:{start}" if start is not None else str(pid)


def owner_alive(token: str) -> bool:
    """Whether the process named by `token` still runs (same pid, same start time)."""
    pid_text, _, start = token.partition(":")
    try:
        pid = int(pid_text)
    except ValueError:
        return False
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    fields = _stat_fields(pid)
    if fields and fields[0] in (b"Z", b"X"):  # a zombie (dead, unreaped): it holds nothing
        return False
    if not start:
        return True
    current = fields[19].decode() if fields is not None and len(fields) > 19 else None
    return current is None or current == start
