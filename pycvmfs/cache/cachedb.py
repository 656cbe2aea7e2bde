"""The `<cache>/cachedb` index as SQL: schema, connection, sequence numbers, running
total, and reconciliation with the directory tree (fact sheet 9.3).

The reference schema (`cache_catalog`, `properties` with schema '1.0') plus two tables of
our own for the shared-cache protocol described in `quota.py`: `pins(sha1, owner, size)`
and `sessions(owner)`. The total of `cache_catalog.size` is kept in the `properties` row
`TOTAL_KEY` so an insert does not cost a table scan. `cache_catalog.pinned` is kept for
schema compatibility and always 0: pins, with their owners, live in `pins`; `path` is ''.

Files: the index is opened through the checked cache directory (`safe_dir`); its files
are regular files of the cache owner or are removed before SQLite opens them by name.

Policy-free and lock-free: every function that writes expects the caller
(`SqliteLruQuota`) to hold the cross-process lock inside an open transaction.
Thread-safety: a connection is used by one thread at a time (the caller's mutex).
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

from pycvmfs.cache.safe_dir import SafeDir, file_problem
from pycvmfs.cache.store import iter_object_files
from pycvmfs.format.hashes import ContentHash

log = logging.getLogger(__name__)

CACHEDB_NAME = "cachedb"
VOLATILE_BIT = 1 << 63  # reference: volatile acseq has bit 63 set (negative as int64)
TOTAL_KEY = "pycvmfs_total_bytes"  # properties row: running sum of cache_catalog.size
BUSY_TIMEOUT_SECONDS = 60.0  # writers are serialised by flock; this only covers readers
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS cache_catalog (sha1 TEXT, size INTEGER, acseq INTEGER,"
    " path TEXT, type INTEGER, pinned INTEGER, CONSTRAINT pk_cache_catalog PRIMARY KEY (sha1));"
    "CREATE UNIQUE INDEX IF NOT EXISTS idx_cache_catalog_acseq ON cache_catalog (acseq);"
    "CREATE TABLE IF NOT EXISTS properties (key TEXT, value TEXT,"
    " CONSTRAINT pk_properties PRIMARY KEY (key));"
    "CREATE TABLE IF NOT EXISTS pins (sha1 TEXT, owner TEXT, size INTEGER,"
    " CONSTRAINT pk_pins PRIMARY KEY (sha1, owner));"
    "CREATE TABLE IF NOT EXISTS sessions (owner TEXT, CONSTRAINT pk_sessions PRIMARY KEY (owner));"
    "INSERT OR REPLACE INTO properties VALUES ('schema', '1.0');"
)
REGULAR_TYPE = 0  # cache_catalog.type of objects found on disk (kind unknown)


def is_hash_text(key: str) -> bool:
    try:
        ContentHash.parse(key)
    except ValueError:
        return False
    return True


def connect(path: Path | str) -> sqlite3.Connection:
    """Open (creating) the index, WAL mode, schema ensured, integrity quick-checked;
    raises `sqlite3.DatabaseError` on a corrupt file."""
    conn = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=False
    )
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(SCHEMA)
        row = conn.execute("PRAGMA quick_check").fetchone()
        if row is None or row[0] != "ok":
            raise sqlite3.DatabaseError(f"quick_check: {row}")
    except BaseException:
        conn.close()
        raise
    return conn


def index_files(name: str = CACHEDB_NAME) -> list[str]:
    """The index and its SQLite side files."""
    return [name + suffix for suffix in ("", "-wal", "-shm", "-journal")]


def discard(directory: SafeDir) -> None:
    """Delete a (corrupt) index with its WAL side files."""
    for name in index_files():
        directory.unlink(name)


def _remove_foreign(directory: SafeDir) -> None:
    """SQLite opens the index by name and would follow a link: any of its files that is
    not a regular file of the cache owner with one link goes first (only the owner and
    root can put anything into the checked directory, so nothing can race this)."""
    for name in index_files():
        st = directory.lstat(name)
        if st is not None and file_problem(st, directory.trust) is not None:
            log.warning("%s %s: removed", directory.path / name,
                        file_problem(st, directory.trust))
            directory.unlink(name)


def open_index(directory: SafeDir) -> tuple[sqlite3.Connection, bool]:
    """(connection, fresh): a missing or corrupt index is (re)created empty and reported
    fresh, so the caller rebuilds it from the tree. Opened through the directory's
    descriptor (`SafeDir.proc_path`)."""
    _remove_foreign(directory)
    fresh = directory.lstat(CACHEDB_NAME) is None
    path = directory.proc_path(CACHEDB_NAME)
    try:
        conn = connect(path)
    except sqlite3.DatabaseError:
        discard(directory)
        conn = connect(path)
        fresh = True
    return conn, fresh


def next_seq(conn: sqlite3.Connection) -> int:
    """The next free access sequence number (volatile rows count without bit 63)."""
    plain = conn.execute("SELECT MAX(acseq) FROM cache_catalog WHERE acseq >= 0").fetchone()[0]
    volatile = conn.execute("SELECT MAX(acseq) FROM cache_catalog WHERE acseq < 0").fetchone()[0]
    candidates = [-1]
    if plain is not None:
        candidates.append(plain)
    if volatile is not None:
        candidates.append(volatile + VOLATILE_BIT)
    return max(candidates) + 1


def total(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT value FROM properties WHERE key = ?", (TOTAL_KEY,)).fetchone()
    return int(row[0]) if row is not None else 0


def add_total(conn: sqlite3.Connection, delta: int) -> None:
    if delta:
        conn.execute(
            "UPDATE properties SET value = CAST(value AS INTEGER) + ? WHERE key = ?",
            (delta, TOTAL_KEY),
        )


def recompute_total(conn: sqlite3.Connection) -> None:
    (value,) = conn.execute("SELECT COALESCE(SUM(size), 0) FROM cache_catalog").fetchone()
    conn.execute("INSERT OR REPLACE INTO properties VALUES (?, ?)", (TOTAL_KEY, value))


def reconcile(conn: sqlite3.Connection, directory: SafeDir) -> None:
    """Make the index match the files: drop rows without files, take on-disk sizes,
    index unknown files in mtime order (oldest = least recently used)."""
    on_disk = {k: (s, m) for k, s, m in iter_object_files(directory) if is_hash_text(k)}
    rows = dict(conn.execute("SELECT sha1, size FROM cache_catalog").fetchall())
    for key in rows.keys() - on_disk.keys():
        conn.execute("DELETE FROM cache_catalog WHERE sha1 = ?", (key,))
    for key in rows.keys() & on_disk.keys():
        if rows[key] != on_disk[key][0]:
            conn.execute("UPDATE cache_catalog SET size = ? WHERE sha1 = ?", (on_disk[key][0], key))
    new = sorted(on_disk.keys() - rows.keys(), key=lambda k: (on_disk[k][1], k))
    seq = next_seq(conn)
    conn.executemany(
        "INSERT INTO cache_catalog VALUES (?, ?, ?, '', ?, 0)",
        [(k, on_disk[k][0], seq + i, REGULAR_TYPE) for i, k in enumerate(new)],
    )
    recompute_total(conn)
