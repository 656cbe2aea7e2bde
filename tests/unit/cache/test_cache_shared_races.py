"""Interleavings of processes sharing one cache directory, forced deterministically: two
`SqliteLruQuota` objects on one directory stand for two mounts (each has its own lock
file description, so they exclude each other as processes do). The rule under test: the
index and the files end consistent — no row for a file another process's cleanup
deleted, no file deleted while a row for it stays."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from pycvmfs.cache import CacheConfig, CacheHost
from pycvmfs.cache.cachedb import CACHEDB_NAME, TOTAL_KEY
from pycvmfs.cache.errors import CacheFullError
from pycvmfs.cache.quota import SqliteLruQuota
from pycvmfs.cache.quota_protocol import MEGABYTE, Key, ObjectKind
from pycvmfs.cache.store import ObjectStore
from pycvmfs.format.hashes import Algorithm, ContentHash

LIMIT = 16_000  # small objects are buffered (a 16th of the limit: 1000 bytes)
SIZE = 100
KEY = str(ContentHash.of(Algorithm.SHA1, b"shared object"))


class Clock:
    """Frozen: no time-based flush happens behind the test's back."""

    def __call__(self) -> float:
        return 0.0


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ObjectStore]:
    store = ObjectStore(tmp_path)
    yield store
    store.close()


def publish(store: ObjectStore, key: str = KEY, size: int = SIZE) -> None:
    """What a mount's commit does before it indexes: rename the object into place."""
    with store.begin(ContentHash.parse(key)) as txn:
        txn.write(b"s" * size)
        txn.commit()


def state(directory: Path, store: ObjectStore) -> tuple[dict[str, int], dict[str, int], int]:
    """(index rows, files, the index's running total), read as a third party would."""
    conn = sqlite3.connect(directory / CACHEDB_NAME)
    try:
        index = dict(conn.execute("SELECT sha1, size FROM cache_catalog").fetchall())
        (total,) = conn.execute("SELECT value FROM properties WHERE key = ?",
                                (TOTAL_KEY,)).fetchone()
    finally:
        conn.close()
    return index, {k: s for k, s, _ in store.iter_objects()}, int(total)


def assert_consistent(directory: Path, store: ObjectStore) -> dict[str, int]:
    index, files, total = state(directory, store)
    assert index == files
    assert total == sum(index.values())
    return files


def test_buffered_insert_of_an_object_a_neighbour_evicted(
    tmp_path: Path, store: ObjectStore
) -> None:
    """A and B both miss and fetch the object; A renames it into place and buffers its
    insert, B renames it again and indexes it; a cleanup evicts it (row and file); then
    A writes its buffer. The file is gone: A must not index it."""
    with (SqliteLruQuota(tmp_path, LIMIT, clock=Clock()) as a,
          SqliteLruQuota(tmp_path, LIMIT, clock=Clock(), touch_batch_size=1) as b):
        publish(store)
        writes = a.write_transactions
        a.insert(KEY, SIZE)
        assert a.write_transactions == writes  # buffered: not in the index yet
        publish(store)
        b.insert(KEY, SIZE)  # indexed at once
        assert b.cleanup(0) == SIZE  # removes the row and the file A renamed
        a.flush()
        assert assert_consistent(tmp_path, store) == {}
        assert a.size() == b.size() == 0


def test_insert_after_a_neighbour_evicted_the_renamed_file(
    tmp_path: Path, store: ObjectStore
) -> None:
    """The same without buffering: A renames the object into place, B's cleanup evicts
    the key (indexed by B) before A's insert takes the lock."""
    with (SqliteLruQuota(tmp_path, LIMIT, touch_batch_size=1) as a,
          SqliteLruQuota(tmp_path, LIMIT, touch_batch_size=1) as b):
        publish(store)
        b.insert(KEY, SIZE)
        publish(store)  # A's rename replaces B's file (same bytes)
        assert b.cleanup(0) == SIZE
        a.insert(KEY, SIZE)
        assert assert_consistent(tmp_path, store) == {}
        assert a.size() == 0


def test_object_renamed_after_the_eviction_is_indexed(
    tmp_path: Path, store: ObjectStore
) -> None:
    """The file check drops only what is gone: an object renamed into place after a
    neighbour's cleanup evicted the key is indexed when the buffer is written."""
    with (SqliteLruQuota(tmp_path, LIMIT, clock=Clock()) as a,
          SqliteLruQuota(tmp_path, LIMIT, touch_batch_size=1) as b):
        publish(store)
        b.insert(KEY, SIZE)
        assert b.cleanup(0) == SIZE
        publish(store)
        a.insert(KEY, SIZE)
        a.flush()
        assert assert_consistent(tmp_path, store) == {KEY: SIZE}


def test_a_row_whose_file_is_gone_is_dropped_by_the_next_insert(
    tmp_path: Path, store: ObjectStore
) -> None:
    """A file removed without the lock (a corrupt entry the store dropped) leaves a row;
    an insert of that key that finds no file removes the row instead of keeping it."""
    with SqliteLruQuota(tmp_path, LIMIT, touch_batch_size=1) as a:
        publish(store)
        a.insert(KEY, SIZE)
        assert store.remove(ContentHash.parse(KEY))
        a.insert(KEY, SIZE)
        assert assert_consistent(tmp_path, store) == {} and a.size() == 0


def test_failed_insert_removes_the_file_under_the_lock(
    tmp_path: Path, store: ObjectStore
) -> None:
    """An insert with no room removes its file (and any row) in its own transaction, so
    the caller has nothing left to delete outside the lock."""
    with SqliteLruQuota(tmp_path, 1000, touch_batch_size=1) as a:
        held = []
        for n in range(3):
            key = str(ContentHash.of(Algorithm.SHA1, bytes([n])))
            publish(store, key, 300)
            a.insert(key, 300)
            a.open_ref(key)
            held.append(key)
        publish(store, KEY, 200)
        with pytest.raises(CacheFullError):
            a.insert(KEY, 200)  # 900 held open + 200 > 1000
        assert set(assert_consistent(tmp_path, store)) == set(held)


def test_failed_commit_leaves_a_neighbours_object_alone(
    tmp_path: Path, store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """This mount's insert finds no room; right after its transaction a neighbour
    renames the same object into place and indexes it. The commit must not delete the
    neighbour's file afterwards (an unlink outside the lock would leave its row behind)."""
    with (CacheHost(CacheConfig(tmp_path, quota_limit_mb=1)) as host,
          SqliteLruQuota(tmp_path, MEGABYTE, touch_batch_size=1) as neighbour):
        quota = host.quota
        assert isinstance(quota, SqliteLruQuota)
        for n in range(3):  # held open: nothing can be evicted for the new object
            key = str(ContentHash.of(Algorithm.SHA1, bytes([n])))
            publish(store, key, 300_000)
            quota.insert(key, 300_000)
            quota.open_ref(key)
        real_insert = quota.insert

        def insert_then_neighbour(key: Key, size: int, *, kind: ObjectKind = ObjectKind.REGULAR,
                                  volatile: bool = False) -> None:
            try:
                real_insert(key, size, kind=kind, volatile=volatile)
            finally:  # the neighbour's commit, between our transaction and our return
                publish(store, str(key), size)
                neighbour.insert(str(key), size)

        monkeypatch.setattr(quota, "insert", insert_then_neighbour)
        txn = host.begin(ContentHash.parse(KEY))
        txn.write(b"s" * 200_000)
        with pytest.raises(CacheFullError):
            host.commit(txn)
        files = assert_consistent(tmp_path, store)
        assert files[KEY] == 200_000  # the neighbour's object stayed, with its row
