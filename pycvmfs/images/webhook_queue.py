"""The webhook's durable event queue (SQLite) and its retry schedule.

`put` returns only once the events are on disk (WAL, synchronous=FULL), so an
acknowledged event survives a crash; a restart resumes what is pending.

Scheduling, so that failing items cannot starve the others:
- an item that fails is retried later, not in place: `attempt_failed(id, error, retry_in)`
  sets the time of its next attempt (`retry_delay`: first, 2·first, 4·first... at most
  `cap` seconds) and the worker goes on with the next due item; after the last attempt it
  is marked failed (kept with its error; `requeue_failed` makes failed items pending again);
- `next_due` is the pending item whose time came first (a new item's time is its
  arrival, a deferred one's the time of its retry; then by id), so a retried item queues
  behind what arrived before its retry was due; but events that touch the same image keep
  their order: an item waits while an older pending one names the same repository and the
  same tag, or names the repository by digest only (a digest delete may concern any tag) —
  a push retried after a later delete must not bring the image back;
- at most `max_pending` items wait at once (`put` raises QueueFullError beyond), so a
  caller cannot fill the disk.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pycvmfs.errors import ImageError
from pycvmfs.images.webhook_payload import ImageEvent

MAX_PENDING_ITEMS = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    event TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',   -- pending | done | failed
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    received REAL NOT NULL,
    finished REAL,
    subject TEXT,                             -- registry/repository
    tag TEXT,                                 -- NULL: by digest only
    next_attempt REAL NOT NULL DEFAULT 0      -- time.time() of the next attempt
);
CREATE INDEX IF NOT EXISTS items_state ON items(state, id);
"""
_INDEXES = "CREATE INDEX IF NOT EXISTS items_subject ON items(subject, state, id);"
_ADDED_COLUMNS = {"subject": "subject TEXT", "tag": "tag TEXT",
                  "next_attempt": "next_attempt REAL NOT NULL DEFAULT 0"}

# pending items no older pending item of the same image holds back
_HEADS = """
FROM items AS i WHERE i.state = 'pending' AND NOT EXISTS (
    SELECT 1 FROM items AS e
    WHERE e.state = 'pending' AND e.subject = i.subject AND e.id < i.id
      AND (e.tag IS NULL OR i.tag IS NULL OR e.tag = i.tag))
"""


class QueueFullError(ImageError):
    """The queue holds `max_pending` items already."""


def retry_delay(attempts: int, first: float, cap: float) -> float:
    """Seconds to wait after the `attempts`-th failed attempt: first, 2·first, 4·first, ...
    never more than `cap`."""
    if attempts < 1:
        return 0.0
    return min(cap, first * 2.0 ** min(attempts - 1, 64))


@dataclass(frozen=True, slots=True)
class QueueItem:
    id: int
    event: ImageEvent
    attempts: int


class EventQueue:
    """Accepted events in an SQLite file (module docstring). Thread-safe; `wait_for_work`
    wakes the worker on `put` or when a deferred item becomes due."""

    def __init__(self, path: Path | str, *, max_pending: int = MAX_PENDING_ITEMS) -> None:
        path = Path(path)
        self.path = path
        self.max_pending = max_pending
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None,
                                   timeout=30)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            self._upgrade()
            self._db.executescript(_INDEXES)
        except BaseException:
            self._db.close()
            raise
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)

    def _upgrade(self) -> None:
        """Add the scheduling columns to a queue file an older version wrote."""
        columns = {str(row[1]) for row in self._db.execute("PRAGMA table_info(items)")}
        for name, definition in _ADDED_COLUMNS.items():
            if name not in columns:
                self._db.execute(f"ALTER TABLE items ADD COLUMN {definition}")
        rows = self._db.execute("SELECT id, event FROM items WHERE subject IS NULL").fetchall()
        for item_id, text in rows:
            event = ImageEvent.from_json(text)
            self._db.execute("UPDATE items SET subject = ?, tag = ? WHERE id = ?",
                             (event.subject, event.tag, item_id))

    def put(self, events: list[ImageEvent]) -> list[int]:
        """Append the events in one durable transaction; their ids in order."""
        ids: list[int] = []
        if not events:
            return ids
        now = time.time()
        with self._changed:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                pending = self._db.execute(
                    "SELECT COUNT(*) FROM items WHERE state = 'pending'").fetchone()[0]
                if pending + len(events) > self.max_pending:
                    raise QueueFullError(f"{self.path}: {pending} events are pending already "
                                         f"(at most {self.max_pending}); try again later")
                for event in events:
                    cursor = self._db.execute(
                        "INSERT INTO items (event, received, subject, tag, next_attempt) "
                        "VALUES (?, ?, ?, ?, ?)",
                        (event.to_json(), now, event.subject, event.tag, now))
                    ids.append(int(cursor.lastrowid or 0))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._changed.notify_all()
        return ids

    def next_due(self, now: float | None = None) -> QueueItem | None:
        """The pending item due first, if it is due at `now` (default: the current time),
        among those no older pending item of the same image holds back. It stays pending
        until `done`, `failed` or `attempt_failed`."""
        moment = time.time() if now is None else now
        with self._lock:
            row = self._db.execute(f"SELECT i.id, i.event, i.attempts {_HEADS} "
                                   "AND i.next_attempt <= ? "
                                   "ORDER BY i.next_attempt, i.id LIMIT 1", (moment,)).fetchone()
        if row is None:
            return None
        return QueueItem(int(row[0]), ImageEvent.from_json(row[1]), int(row[2]))

    def next_wakeup(self) -> float | None:
        """When the next item becomes due (time.time() scale), None when none is pending."""
        with self._lock:
            return self._next_wakeup()

    def _next_wakeup(self) -> float | None:
        row = self._db.execute(f"SELECT MIN(i.next_attempt) {_HEADS}").fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def pending(self) -> list[QueueItem]:
        with self._lock:
            rows = self._db.execute("SELECT id, event, attempts FROM items "
                                    "WHERE state = 'pending' ORDER BY id").fetchall()
        return [QueueItem(int(r[0]), ImageEvent.from_json(r[1]), int(r[2])) for r in rows]

    def done(self, item_id: int) -> None:
        self._finish(item_id, "done", None)

    def failed(self, item_id: int, error: str) -> None:
        self._finish(item_id, "failed", error)

    def attempt_failed(self, item_id: int, error: str, retry_in: float | None) -> int:
        """Count a failed attempt: the item is tried again `retry_in` seconds from now
        (it stays pending; the others go on meanwhile), or with None it is failed for
        good. The attempts so far."""
        with self._changed:
            now = time.time()
            if retry_in is None:
                self._db.execute("UPDATE items SET attempts = attempts + 1, error = ?, "
                                 "state = 'failed', finished = ? WHERE id = ?",
                                 (error, now, item_id))
            else:
                self._db.execute("UPDATE items SET attempts = attempts + 1, error = ?, "
                                 "next_attempt = ? WHERE id = ?",
                                 (error, now + retry_in, item_id))
            row = self._db.execute("SELECT attempts FROM items WHERE id = ?",
                                   (item_id,)).fetchone()
            self._changed.notify_all()
        return int(row[0]) if row else 0

    def requeue_failed(self) -> int:
        """Make every failed item pending again (attempts reset, due now); how many."""
        with self._changed:
            cursor = self._db.execute("UPDATE items SET state = 'pending', attempts = 0, "
                                      "next_attempt = 0, finished = NULL "
                                      "WHERE state = 'failed'")
            self._changed.notify_all()
            return int(cursor.rowcount)

    def _finish(self, item_id: int, state: str, error: str | None) -> None:
        with self._changed:
            self._db.execute("UPDATE items SET state = ?, error = ?, finished = ? "
                             "WHERE id = ?", (state, error, time.time(), item_id))
            self._changed.notify_all()

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM items GROUP BY state")
            return {str(state): int(count) for state, count in rows}

    def state(self, item_id: int) -> tuple[str, str | None] | None:
        with self._lock:
            row = self._db.execute("SELECT state, error FROM items WHERE id = ?",
                                   (item_id,)).fetchone()
        return None if row is None else (str(row[0]), row[1])

    def wait_for_work(self, timeout: float) -> None:
        """Block until something is put or an item becomes due (at most `timeout` s)."""
        with self._changed:
            wakeup = self._next_wakeup()
            delay = timeout if wakeup is None else min(timeout, wakeup - time.time())
            if delay > 0:
                self._changed.wait(delay)

    def notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def close(self) -> None:
        with self._lock:
            self._db.close()
