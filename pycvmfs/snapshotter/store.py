"""The snapshotter's metadata: one SQLite database under `--state DIR`, so snapshots survive
a restart of the snapshotter and of containerd (containerd keeps only its own names for
them and asks again after a restart).

One row per snapshot: its key (containerd's backend key: the active or view key, or the
committed name), its parent's key (committed, or empty), its kind, its labels (JSON), its
creation and update times, and where its files are: `remote` is a layer tree on the
pycvmfs mount (a committed remote layer, never written), otherwise the snapshot's files are
local under `snapshots/<id>/` (see pycvmfs/snapshotter/snapshots.py). `size` and `inodes`
are the usage measured when a local snapshot was committed.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from pycvmfs.snapshotter.errors import (
    SnapshotExistsError,
    SnapshotNotFoundError,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    parent TEXT NOT NULL DEFAULT '',
    kind TEXT NOT NULL CHECK (kind IN ('active', 'view', 'committed')),
    labels TEXT NOT NULL DEFAULT '{}',
    created REAL NOT NULL,
    updated REAL NOT NULL,
    remote TEXT,
    size INTEGER NOT NULL DEFAULT 0,
    inodes INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS snapshots_parent ON snapshots (parent);
"""
_COLUMNS = "id, key, parent, kind, labels, created, updated, remote, size, inodes"


class Kind(Enum):
    """containerd's snapshot kinds (the values are the API's enum names, lower case)."""

    ACTIVE = "active"
    VIEW = "view"
    COMMITTED = "committed"


@dataclass(frozen=True)
class Snapshot:
    """One stored snapshot."""

    id: int
    key: str
    parent: str
    kind: Kind
    labels: dict[str, str]
    created: float
    updated: float
    remote: str | None
    size: int
    inodes: int


def _row(row: tuple[int, str, str, str, str, float, float, str | None, int, int]) -> Snapshot:
    ident, key, parent, kind, labels, created, updated, remote, size, inodes = row
    return Snapshot(ident, key, parent, Kind(kind), json.loads(labels), created, updated,
                    remote, size, inodes)


class MetadataStore:
    """Snapshots by key in `PATH` (created on first use). Every method is one transaction
    under one lock: gRPC calls arrive on several threads."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def get(self, key: str) -> Snapshot:
        """The snapshot `key` (SnapshotNotFoundError when there is none)."""
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM snapshots WHERE key = ?",
                                   (key,)).fetchone()
        if row is None:
            raise SnapshotNotFoundError(f"snapshot {key!r} does not exist")
        return _row(row)

    def find(self, key: str) -> Snapshot | None:
        """The snapshot `key`, or None."""
        try:
            return self.get(key)
        except SnapshotNotFoundError:
            return None

    def create(self, key: str, parent: str, kind: Kind, labels: dict[str, str],
               remote: str | None = None) -> Snapshot:
        """A new snapshot (SnapshotExistsError when `key` is taken)."""
        now = time.time()
        with self._lock:
            try:
                cursor = self._db.execute(
                    "INSERT INTO snapshots (key, parent, kind, labels, created, updated, remote)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (key, parent, kind.value, json.dumps(labels, sort_keys=True), now, now,
                     remote))
            except sqlite3.IntegrityError:
                raise SnapshotExistsError(f"snapshot {key!r} already exists") from None
            ident = cursor.lastrowid
        assert ident is not None
        return Snapshot(ident, key, parent, kind, dict(labels), now, now, remote, 0, 0)

    def commit(self, key: str, name: str, labels: dict[str, str], size: int,
               inodes: int) -> Snapshot:
        """Turn active snapshot `key` into committed `name` (same row, same files)."""
        now = time.time()
        with self._lock:
            try:
                self._db.execute(
                    "UPDATE snapshots SET key = ?, kind = 'committed', labels = ?, updated = ?,"
                    " size = ?, inodes = ? WHERE key = ?",
                    (name, json.dumps(labels, sort_keys=True), now, size, inodes, key))
            except sqlite3.IntegrityError:
                raise SnapshotExistsError(f"snapshot {name!r} already exists") from None
        return self.get(name)

    def set_labels(self, key: str, labels: dict[str, str]) -> Snapshot:
        """Replace the labels of `key`."""
        with self._lock:
            self._db.execute("UPDATE snapshots SET labels = ?, updated = ? WHERE key = ?",
                             (json.dumps(labels, sort_keys=True), time.time(), key))
        return self.get(key)

    def delete(self, key: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM snapshots WHERE key = ?", (key,))

    def children(self, key: str) -> int:
        """How many snapshots have `key` as their parent."""
        with self._lock:
            (count,) = self._db.execute("SELECT COUNT(*) FROM snapshots WHERE parent = ?",
                                        (key,)).fetchone()
        return int(count)

    def all(self) -> list[Snapshot]:
        """Every snapshot, oldest first."""
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM snapshots ORDER BY id").fetchall()
        return [_row(row) for row in rows]

    def chain(self, key: str) -> list[Snapshot]:
        """`key` and its ancestors, nearest first."""
        found = [self.get(key)]
        while found[-1].parent:
            found.append(self.get(found[-1].parent))
        return found
