"""Cache quota: the `Quota` protocol, `NoopQuota` and the SQLite LRU (fact sheet 9.3, R8).

Reference semantics kept by `SqliteLruQuota`:
* limit in bytes (`CVMFS_QUOTA_LIMIT` MB x 2**20); cleanup threshold = limit / 2; when an
  insert would push the total over the limit, least-recently-used unpinned objects are
  deleted until the total is at most the threshold ("cleanup to 50 %");
* the largest cacheable object is limit - threshold; bigger ones raise `CacheFullError`;
* pinned objects (catalogs in use) are never evicted, and pinning fails with
  `CacheFullError` when pinned bytes would exceed the threshold;
* objects of files open in this process carry an "open" count and are never evicted by
  this process;
* LRU order is the access sequence `acseq`; volatile objects get bit 63 set (stored
  negative) and go first; the index is `<cache>/cachedb` with the reference schema.

Batched bookkeeping: a hit (`touch`) only records the key in an in-memory ordered buffer,
and so does the insert of a small object that fits by this process's count (the
reference's cache manager buffers inserts and touches alike, kCommandBufferSize). The
buffer is written in one SQLite transaction when it holds `TOUCH_BATCH_SIZE` commands,
when `TOUCH_FLUSH_SECONDS` have passed at the next command, and before every cleanup,
unbuffered insert, `flush` and `close`. A cache hit therefore costs no SQLite write
(measured: an SQLite write per get caps at 7-8k gets/s, design.md), and a miss a 32nd of
one (measured: 20 system calls and ~0.1 ms of the GIL per object otherwise). Catalogs
are indexed at once. Buffered inserts are bounded (`BUFFERED_INSERT_BYTES` each, a 16th
of the limit together, the limit with what this process last saw indexed), so the files
of a shared cache exceed the limit by at most what its processes hold buffered; one that
no longer fits when written (a neighbour filled the cache) is evicted at once, with a
warning: its readers keep their open descriptors. A crash loses only buffered rows of
objects already on disk, which the crash reconcile (4. below) indexes, cleaning up to
the threshold if they overflow the limit.

Shared-cache protocol (several mount processes, one directory, `CVMFS_SHARED_CACHE=yes`)
— replaces the reference's cache-manager process and FIFO:
1. Every index *write* (insert, touch flush, pin, unpin, remove, cleanup, rebuild) runs
   as `BEGIN IMMEDIATE ... COMMIT` while holding the `flock` on `<cache>/lock_cachedb`
   (`shared.CacheLock`). Writers are serialised; an eviction decision and its unlinks are
   atomic with respect to other processes' inserts and pins. Reads (size, pinned size)
   use WAL snapshots and take no lock. Every unlink of an object runs under the lock with
   the deletion of its row (a failed insert's too: the host does not unlink). Renames into
   place do not; two processes that fetched one object share its key, so the other's row
   lets a cleanup unlink the file this one renamed before this one indexes it. An insert
   therefore indexes an object only if its file is there when it holds the lock.
2. Sequence numbers are global: a flush assigns `max(acseq) + 1, + 2, ...` read inside
   the locked transaction, so processes never collide on the unique `acseq` index. The
   byte total is a `properties` row updated in the same transactions (`cachedb.py`).
3. Pins are rows `pins(sha1, owner, size)`, `owner` = `"<pid>:<start time>"`. A cleanup
   in any process honours every pin whose owner is alive; pins of dead owners count as
   released (and are deleted). Objects another process merely has *open* may be evicted:
   its file descriptor keeps the unlinked inode readable (POSIX), so its reader never
   sees wrong or missing bytes; it would refetch on its next open.
4. Sessions are rows `sessions(owner)`. A process that finds a dead owner's session
   (at start, or when a long-running mount calls `recover_crashed`) concludes that a
   mount crashed and reconciles the index with the directory tree (a crash between
   rename and index insert leaves an unindexed object). Only then is the dead session
   deleted — pins of dead owners are released by anyone at once, their sessions are not,
   so no crash goes unreconciled. The starter registers itself; `close` deregisters.
   This is the reference's "on start pins reset" made safe for live neighbours.
5. A missing or corrupt `cachedb` is removed (with its WAL) and rebuilt from the tree
   under the lock; rebuilt entries are ordered by file mtime, volatility is lost (as in
   the reference).

Thread-safety: one `SqliteLruQuota` may be shared by all threads of a process (one
mutex guards its connection and pin/open counts; a separate small lock guards the touch
buffer, so hits never wait for an insert or cleanup). Process-safety: see above.
Caveats: corruption detected *after* start surfaces as `sqlite3.DatabaseError`, and
replacing a corrupt index leaves live neighbours on the old (unlinked) file until they
restart; a time-based flush needs a subsequent operation (no background thread); a
crashed neighbour's orphan object stays uncounted until some process reconciles (next
start or `recover_crashed`); `SqliteLruQuota` must not cross a `fork`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import stat
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path

from pycvmfs.cache import cachedb
from pycvmfs.cache.cachedb import CACHEDB_NAME, VOLATILE_BIT
from pycvmfs.cache.errors import CacheFullError
from pycvmfs.cache.eviction import EvictionEntry, plan_eviction
from pycvmfs.cache.quota_protocol import MEGABYTE, Key, ObjectKind
from pycvmfs.cache.safe_dir import SafeDir
from pycvmfs.cache.shared import CacheLock, owner_alive, owner_token
from pycvmfs.cache.store import as_safe_dir, object_relpath

TOUCH_BATCH_SIZE = 32  # reference kCommandBufferSize: one write per 32 hits
TOUCH_FLUSH_SECONDS = 5.0  # bounds how stale the on-disk LRU order can get
BUFFERED_INSERT_BYTES = 1 << 20  # bigger objects are indexed at once (as are all, at need)
MAX_BUFFERED_INSERTS_FACTOR = 4  # batches buffered at most while the index is busy
BUFFERED_LIMIT_DIVISOR = 16  # buffered bytes stay within a 16th of the limit
PIN_PRESSURE_FRACTION = 0.75  # reference kHighPinWatermark: ask clients to release pins

log = logging.getLogger(__name__)


def _unlink_object(directory: SafeDir) -> Callable[[str], None]:
    def unlink(key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(object_relpath(key), dir_fd=directory.fd)

    return unlink


class SqliteLruQuota:
    """LRU quota over `<cache>/cachedb`; see the module docstring for the protocol."""

    def __init__(
        self,
        directory: Path | str | SafeDir,
        limit_bytes: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        touch_batch_size: int = TOUCH_BATCH_SIZE,
        touch_flush_seconds: float = TOUCH_FLUSH_SECONDS,
        remove_object: Callable[[str], None] | None = None,
    ) -> None:
        if limit_bytes <= 0:
            raise ValueError("SqliteLruQuota needs a positive limit (use NoopQuota)")
        self.root, self._owns_root = as_safe_dir(directory)
        self.directory = self.root.path
        self.limit = limit_bytes
        self.threshold = limit_bytes // 2
        self.owner = owner_token()
        self.write_transactions = 0  # observable batching: SQLite write transactions run
        self.rebuilt = False  # whether start-up reconciled the index with the tree
        self._evicted = (0, 0)  # objects and bytes this process evicted (`evictions`)
        self._clock = clock
        self._batch = touch_batch_size
        self._flush_seconds = touch_flush_seconds
        self._remove_object = remove_object or _unlink_object(self.root)
        self._mutex = threading.RLock()
        self._touches: OrderedDict[str, None] = OrderedDict()
        # key -> (size, kind, volatile) of buffered inserts (at most a few batches)
        self._inserts: dict[str, tuple[int, ObjectKind, bool]] = {}
        self._known_total = 0  # the index's byte total after this process's last write
        self._touch_lock = threading.Lock()  # guards only the buffers (hit path)
        self._last_flush = clock()
        self._pins: Counter[str] = Counter()
        self._open: Counter[str] = Counter()  # objects this process holds open
        self._open_lock = threading.Lock()
        self._closed = False
        try:
            self._lock = CacheLock(self.root)
        except BaseException:
            self._close_root()
            raise
        try:
            with self._lock:
                self._open_database()
                self._start_session()
        except BaseException:
            self._lock.close()
            self._close_root()
            raise

    def _close_root(self) -> None:
        if self._owns_root:
            self.root.close()

    @classmethod
    def from_megabytes(cls, directory: Path | str, limit_mb: int) -> SqliteLruQuota:
        return cls(directory, limit_mb * MEGABYTE)

    # -- start-up ------------------------------------------------------------------------

    def _open_database(self) -> None:
        """Open (creating or replacing a corrupt one); caller holds the file lock."""
        self._conn, fresh = cachedb.open_index(self.root)
        if fresh:
            self._reconcile()

    def _start_session(self) -> None:
        with self._transaction():
            self._recover_crashed_locked()
            self._conn.execute("INSERT OR REPLACE INTO sessions VALUES (?)", (self.owner,))
            cachedb.recompute_total(self._conn)

    def recover_crashed(self) -> bool:
        """Reconcile the index if a process sharing the cache died without closing
        (done at start; a long-running mount may also call it now and then). Returns
        whether a crashed session was found."""
        with self._transaction():
            return self._recover_crashed_locked()

    def _recover_crashed_locked(self) -> bool:
        owners = [r[0] for r in self._conn.execute("SELECT owner FROM sessions")]
        dead = [o for o in owners if o != self.owner and not owner_alive(o)]
        if dead:
            self._reconcile_locked()
            self._drop_pins_locked(dead)
            for owner in dead:
                self._conn.execute("DELETE FROM sessions WHERE owner = ?", (owner,))
            if self._total_locked() > self.limit:  # a crash left up to a batch unindexed
                self._cleanup_locked(self.threshold)
        return bool(dead)

    def _drop_pins_locked(self, owners: list[str]) -> None:
        """Release dead owners' pins. Their *sessions* stay until a reconcile: the crash
        may have left an object renamed into place but not indexed."""
        for owner in owners:
            self._conn.execute("DELETE FROM pins WHERE owner = ?", (owner,))

    def _reconcile(self) -> None:
        with self._transaction():
            self._reconcile_locked()

    def _reconcile_locked(self) -> None:
        self.rebuilt = True
        cachedb.reconcile(self._conn, self.root)

    # -- transactions and sequence numbers -------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """Thread mutex, then the cross-process file lock, then BEGIN IMMEDIATE. SQLite's
        "database or disk is full" becomes `CacheFullError` naming the cache."""
        with self._mutex, self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    yield
                    self._known_total = self._total_locked()
                    self._conn.execute("COMMIT")
                except BaseException:
                    if self._conn.in_transaction:  # a failed COMMIT leaves it open
                        self._conn.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode != sqlite3.SQLITE_FULL:
                    raise
                raise CacheFullError(
                    f"cache directory {self.directory} is full: its index {CACHEDB_NAME} "
                    f"cannot grow ({exc}); free space on its file system or lower "
                    "CVMFS_QUOTA_LIMIT") from exc
            self.write_transactions += 1

    def _next_seq_locked(self) -> int:
        return cachedb.next_seq(self._conn)

    def _flush_buffers_locked(self) -> None:
        """Write the buffered inserts, then the buffered touches (in a transaction)."""
        with self._touch_lock:
            keys = list(self._touches)
            self._touches.clear()
            inserts, self._inserts = self._inserts, {}
            self._last_flush = self._clock()
        for key, (size, kind, volatile) in inserts.items():
            if not self._insert_locked(key, size, kind, volatile):
                log.warning("cache object %s (%d bytes) evicted at once: no room left "
                            "(%d bytes pinned of %d)", key, size, self.pinned_size(),
                            self.limit)
                self._forget_locked(key)
        if not keys:
            return
        seq = self._next_seq_locked()
        self._conn.executemany(
            "UPDATE cache_catalog SET acseq = CASE WHEN acseq < 0 THEN ? ELSE ? END"
            " WHERE sha1 = ?",
            [(seq + i - VOLATILE_BIT, seq + i, key) for i, key in enumerate(keys)],
        )

    # -- the Quota protocol ---------------------------------------------------------------

    def max_object_size(self) -> int:
        return self.limit - self.threshold

    def capacity(self) -> int:
        return self.limit

    def insert(
        self, key: Key, size: int, *, kind: ObjectKind = ObjectKind.REGULAR,
        volatile: bool = False,
    ) -> None:
        """Index a committed object, evicting down to the threshold first if it would not
        fit. Raises `CacheFullError` if it is too big or pinned objects leave no room; the
        file (and any row of it) is then already removed, under the lock: an unlink by the
        caller could delete the same object a neighbour has published and indexed since."""
        key = str(key)
        if size > self.max_object_size():
            with self._transaction():
                self._forget_locked(key)
            raise CacheFullError(
                f"object {key} ({size} bytes) exceeds the maximum {self.max_object_size()}"
            )
        if self._buffer_insert(key, size, kind, volatile):
            return
        with self._transaction():
            self._flush_buffers_locked()
            fits = self._insert_locked(key, size, kind, volatile)
            if not fits:
                self._forget_locked(key)
        if not fits:
            raise CacheFullError(
                f"cannot make room for {key} ({size} bytes): "
                f"{self.pinned_size()} bytes pinned of {self.limit}"
            )

    def _buffer_insert(self, key: str, size: int, kind: ObjectKind, volatile: bool) -> bool:
        """Buffer a small insert that fits by this process's count (see the module
        docstring); write the buffer if it is due. False: insert it now instead."""
        if size > BUFFERED_INSERT_BYTES or kind is not ObjectKind.REGULAR or self._batch <= 1:
            return False
        with self._touch_lock:
            self._inserts.pop(key, None)
            pending = sum(buffered[0] for buffered in self._inserts.values())
            # over the limit by this count, or flushes keep being skipped (a busy index):
            # the caller's transaction writes the buffer and this insert at once
            if (self._known_total + pending + size > self.limit
                    or pending + size > self.limit // BUFFERED_LIMIT_DIVISOR
                    or len(self._inserts) >= MAX_BUFFERED_INSERTS_FACTOR * self._batch):
                return False
            self._inserts[key] = (size, kind, volatile)
            due = self._due_locked()
        if due:
            self._try_flush()
        return True

    def _insert_locked(self, key: str, size: int, kind: ObjectKind, volatile: bool) -> bool:
        """Index one object, evicting down to the threshold first if it would not fit;
        False if even that leaves no room (pinned objects).

        The object was renamed into place before the lock was taken, and the same key may
        have been indexed by a neighbour that fetched it too; that neighbour's row lets any
        cleanup unlink the file we renamed. So the file is looked up here, under the lock
        (every unlink of an object runs under it): if it is gone there is nothing to index
        (and a stale row of it goes too) — like an object evicted right after its insert."""
        if not self._object_on_disk(key):
            log.debug("cache object %s was evicted before it was indexed", key)
            self._drop_row_locked(key)
            return True
        seq = self._next_seq_locked()
        acseq = seq - VOLATILE_BIT if volatile else seq
        old = self._conn.execute(
            "SELECT size FROM cache_catalog WHERE sha1 = ?", (key,)
        ).fetchone()
        old_size = 0 if old is None else int(old[0])
        fits = self._total_locked() - old_size + size <= self.limit
        if not fits:
            self._cleanup_locked(self.threshold, protect=key)
            fits = self._total_locked() - old_size + size <= self.limit
        if fits:
            self._conn.execute(
                "INSERT OR REPLACE INTO cache_catalog VALUES (?, ?, ?, '', ?, 0)",
                (key, size, acseq, int(kind)),
            )
            cachedb.add_total(self._conn, size - old_size)
        return fits

    def _object_on_disk(self, key: str) -> bool:
        """Whether the object's file is there (a regular file, not followed if a link)."""
        try:
            st = self.root.lstat(object_relpath(key))
        except NotADirectoryError:  # XX is not a directory: nothing of it is there
            return False
        return st is not None and stat.S_ISREG(st.st_mode)

    def _forget_locked(self, key: str) -> None:
        """Drop the object's row and buffered commands and delete its file, in the
        caller's transaction: row and file go together."""
        with self._touch_lock:
            self._touches.pop(key, None)
            self._inserts.pop(key, None)
        self._drop_row_locked(key)
        self._remove_object(key)

    def _drop_row_locked(self, key: str) -> None:
        row = self._conn.execute("SELECT size FROM cache_catalog WHERE sha1 = ?",
                                 (key,)).fetchone()
        if row is not None:
            self._conn.execute("DELETE FROM cache_catalog WHERE sha1 = ?", (key,))
            cachedb.add_total(self._conn, -int(row[0]))

    def _due_locked(self) -> bool:
        """Whether the buffers should be written (caller holds the buffer lock)."""
        return (len(self._touches) + len(self._inserts) >= self._batch
                or self._clock() - self._last_flush >= self._flush_seconds)

    def _try_flush(self) -> None:
        """Write the buffers unless another thread or process holds the index (then they
        stay buffered for the next command: a hit never queues behind a cleanup)."""
        if self._mutex.acquire(blocking=False):
            try:
                if self._lock.acquire_nowait():
                    try:
                        with self._transaction():
                            self._flush_buffers_locked()
                    finally:
                        self._lock.release()
            finally:
                self._mutex.release()

    def touch(self, key: Key) -> None:
        """Record a hit. Never waits: a due flush is skipped (the keys stay buffered)
        while another thread or process holds the index, so a cache hit never queues
        behind a cleanup. The buffer holds each key once, so it is bounded."""
        key = str(key)
        with self._touch_lock:
            self._touches[key] = None
            self._touches.move_to_end(key)
            due = self._due_locked()
        if due:
            self._try_flush()

    def flush(self) -> None:
        with self._mutex:
            if self._touches or self._inserts:
                with self._transaction():
                    self._flush_buffers_locked()

    def pin(self, key: Key, size: int) -> None:
        """Protect `key` from eviction until `unpin` (may precede the insert)."""
        key = str(key)
        with self._mutex:
            if self._pins[key] > 0:
                self._pins[key] += 1
                return
            with self._transaction():
                pinned = self._live_pins_locked()
                if key not in pinned and sum(pinned.values()) + size > self.threshold:
                    raise CacheFullError(
                        f"cannot pin {key} ({size} bytes): {sum(pinned.values())} bytes "
                        f"pinned, threshold {self.threshold}"
                    )
                self._conn.execute(
                    "INSERT OR REPLACE INTO pins VALUES (?, ?, ?)", (key, self.owner, size)
                )
            self._pins[key] = 1

    def unpin(self, key: Key) -> None:
        key = str(key)
        with self._mutex:
            if self._pins[key] <= 0:
                return
            self._pins[key] -= 1
            if self._pins[key] == 0:
                del self._pins[key]
                with self._transaction():
                    self._conn.execute(
                        "DELETE FROM pins WHERE sha1 = ? AND owner = ?", (key, self.owner)
                    )

    def open_ref(self, key: Key) -> None:
        with self._open_lock:  # not the index mutex: never waits for a transaction
            self._open[str(key)] += 1

    def close_ref(self, key: Key) -> None:
        with self._open_lock:
            key = str(key)
            self._open[key] -= 1
            if self._open[key] <= 0:
                del self._open[key]

    def remove(self, key: Key) -> None:
        """Forget `key` and delete its file (e.g. found corrupt)."""
        key = str(key)
        with self._transaction():
            self._forget_locked(key)

    def cleanup(self, target: int) -> int:
        """Evict unpinned objects, LRU first, until at most `target` bytes remain;
        returns the bytes freed."""
        with self._transaction():
            self._flush_buffers_locked()
            return self._cleanup_locked(target)

    def _cleanup_locked(self, target: int, protect: str | None = None) -> int:
        total = self._total_locked()
        if total <= target:
            return 0
        with self._open_lock:
            held_open = set(self._open)
        protected = set(self._live_pins_locked()) | held_open
        if protect is not None:
            protected.add(protect)
        rows = self._conn.execute("SELECT sha1, size, acseq FROM cache_catalog ORDER BY acseq")
        entries = [
            EvictionEntry(k, s, a, pinned=k in protected, volatile=a < 0) for k, s, a in rows
        ]
        sizes = {e.key: e.size for e in entries}
        freed = 0
        for key in plan_eviction(entries, total - target):
            self._remove_object(key)
            self._conn.execute("DELETE FROM cache_catalog WHERE sha1 = ?", (key,))
            freed += sizes[key]
            self._evicted = (self._evicted[0] + 1, self._evicted[1] + sizes[key])
        cachedb.add_total(self._conn, -freed)
        return freed

    def evictions(self) -> tuple[int, int]:
        """Objects and bytes this process evicted to keep the quota (a statistic)."""
        return self._evicted

    def _live_pins_locked(self) -> dict[str, int]:
        """Pinned key -> size over all live owners; pins of dead owners are dropped."""
        pinned, dead = self._read_pins()
        self._drop_pins_locked(dead)
        return pinned

    def _read_pins(self) -> tuple[dict[str, int], list[str]]:
        """(pinned key -> size over live owners, dead owners)."""
        rows = self._conn.execute("SELECT sha1, owner, size FROM pins").fetchall()
        alive: dict[str, bool] = {}
        pinned: dict[str, int] = {}
        for key, owner, size in rows:
            if owner not in alive:
                alive[owner] = owner == self.owner or owner_alive(owner)
            if alive[owner]:
                pinned[key] = max(pinned.get(key, 0), int(size))
        return pinned, [o for o, ok in alive.items() if not ok]

    def _total_locked(self) -> int:
        return cachedb.total(self._conn)

    # -- queries --------------------------------------------------------------------------

    def size(self) -> int:
        """Bytes in the cache, buffered inserts written first."""
        self.flush()
        with self._mutex:
            return self._total_locked()

    def pinned(self) -> dict[str, int]:
        """Pinned key -> size, over live processes."""
        with self._mutex:
            return self._read_pins()[0]

    def pinned_size(self) -> int:
        """Bytes pinned by live processes (each pinned object counted once)."""
        return sum(self.pinned().values())

    def pin_pressure(self) -> bool:
        """True when clients should release pinned catalogs (reference: > 75 % of the
        threshold pinned)."""
        return self.pinned_size() > PIN_PRESSURE_FRACTION * self.threshold

    def count(self) -> int:
        self.flush()
        with self._mutex:
            return int(self._conn.execute("SELECT COUNT(*) FROM cache_catalog").fetchone()[0])

    def entries(self) -> list[tuple[str, int, int, int]]:
        """(key, size, acseq, type) of every indexed object, LRU first (pending touches
        are flushed first)."""
        self.flush()
        with self._mutex:
            return [
                (k, int(s), int(a), int(t))
                for k, s, a, t in self._conn.execute(
                    "SELECT sha1, size, acseq, type FROM cache_catalog ORDER BY acseq"
                )
            ]

    def close(self) -> None:
        """Flush touches, release this process's pins and session, close files."""
        with self._mutex:
            if self._closed:
                return
            self._closed = True
            try:
                with self._transaction():
                    self._flush_buffers_locked()
                    self._drop_pins_locked([self.owner])
                    self._conn.execute("DELETE FROM sessions WHERE owner = ?", (self.owner,))
            finally:
                self._pins.clear()
                self._conn.close()
                self._lock.close()
                self._close_root()

    def __enter__(self) -> SqliteLruQuota:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
