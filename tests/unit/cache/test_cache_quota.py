"""SqliteLruQuota with real files: limits, LRU order, pins, batching, rebuilds (what other
processes do to it: tests/integration/test_cache_quota_processes.py)."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from pycvmfs.cache.cachedb import CACHEDB_NAME, TOTAL_KEY, VOLATILE_BIT
from pycvmfs.cache.errors import CacheFullError
from pycvmfs.cache.quota import BUFFERED_INSERT_BYTES, SqliteLruQuota
from pycvmfs.cache.quota_protocol import MEGABYTE, NoopQuota, ObjectKind, Quota
from pycvmfs.cache.store import ObjectStore
from pycvmfs.format.hashes import Algorithm, ContentHash

LIMIT = 1000


def h(n: int) -> str:
    return str(ContentHash.of(Algorithm.SHA1, n.to_bytes(4, "big")))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ObjectStore]:
    store = ObjectStore(tmp_path)
    yield store
    store.close()


@pytest.fixture
def quota(store: ObjectStore) -> Iterator[SqliteLruQuota]:
    with SqliteLruQuota(store.directory, LIMIT, clock=Clock()) as q:
        yield q


def put(store: ObjectStore, quota: Quota, n: int, size: int, **kw: object) -> str:
    key = h(n)
    with store.begin(ContentHash.parse(key)) as txn:
        txn.write(b"x" * size)
        txn.commit()
    quota.insert(key, size, **kw)  # type: ignore[arg-type]
    return key


def on_disk(store: ObjectStore) -> dict[str, int]:
    return {k: s for k, s, _ in store.iter_objects()}


def test_protocol_conformance() -> None:
    noop: Quota = NoopQuota()
    noop.insert("k", 1)
    assert noop.cleanup(0) == 0 and noop.size() == 0 and noop.capacity() == -1


def test_insert_beyond_limit_cleans_to_half_lru_first(
    store: ObjectStore, quota: SqliteLruQuota
) -> None:
    keys = [put(store, quota, i, 100) for i in range(10)]  # exactly at the limit
    assert quota.size() == 1000
    quota.touch(keys[0])  # now the most recently used
    quota.flush()
    new = put(store, quota, 100, 100)
    # cleanup to threshold (500), then the new 100 bytes
    assert quota.size() == 600 <= LIMIT
    remaining = set(on_disk(store))
    assert remaining == {keys[0], *keys[6:], new}
    assert sum(on_disk(store).values()) == quota.size()


def test_usage_stays_under_limit(store: ObjectStore, quota: SqliteLruQuota) -> None:
    for i in range(60):
        put(store, quota, i, 37 + (i * 53) % 400)
        assert quota.size() <= LIMIT
        assert sum(on_disk(store).values()) == quota.size()


def test_max_object_size(store: ObjectStore, quota: SqliteLruQuota) -> None:
    assert quota.max_object_size() == 500
    put(store, quota, 1, 500)
    with pytest.raises(CacheFullError):
        quota.insert(h(2), 501)


def test_pinned_and_open_objects_survive(store: ObjectStore, quota: SqliteLruQuota) -> None:
    catalog = put(store, quota, 1, 200, kind=ObjectKind.CATALOG)
    quota.pin(catalog, 200)
    opened = put(store, quota, 2, 200)
    quota.open_ref(opened)
    others = [put(store, quota, i, 100) for i in range(3, 9)]
    assert quota.size() == 1000
    put(store, quota, 50, 100)
    assert {catalog, opened} <= set(on_disk(store))
    assert not set(others[:3]) & set(on_disk(store))
    quota.close_ref(opened)
    quota.unpin(catalog)
    left = sum(on_disk(store).values())
    assert quota.cleanup(0) == left
    assert on_disk(store) == {} and quota.size() == 0


def test_pin_limit_and_counts(store: ObjectStore, quota: SqliteLruQuota) -> None:
    quota.pin(h(1), 300)
    quota.pin(h(1), 300)  # counted; no second row
    assert quota.pinned_size() == 300
    with pytest.raises(CacheFullError):
        quota.pin(h(2), 201)  # 300 + 201 > threshold 500
    quota.pin(h(2), 200)
    assert quota.pinned_size() == 500
    assert quota.pin_pressure()
    quota.unpin(h(1))
    assert quota.pinned_size() == 500
    quota.unpin(h(1))
    quota.unpin(h(1))  # extra unpin is harmless
    assert quota.pinned_size() == 200


def test_insert_fails_when_nothing_can_go(store: ObjectStore, quota: SqliteLruQuota) -> None:
    # pins are capped at the threshold and objects at limit/2, so only open objects
    # (not capped) can leave no room
    held = [put(store, quota, i, 300) for i in range(3)]
    for key in held:
        quota.open_ref(key)
    with pytest.raises(CacheFullError):
        put(store, quota, 4, 200)  # 900 held + 200 > 1000: its file is removed again
    assert set(held) == set(on_disk(store))
    assert quota.size() == 900


def test_touches_are_batched(store: ObjectStore, tmp_path: Path) -> None:
    clock = Clock()
    with SqliteLruQuota(tmp_path, LIMIT, clock=clock, touch_batch_size=4,
                        touch_flush_seconds=10) as quota:
        keys = [put(store, quota, i, 10) for i in range(6)]
        quota.flush()  # the inserts are buffered too (test_small_inserts_are_batched)
        writes = quota.write_transactions
        for key in keys[:3]:
            quota.touch(key)
        assert quota.write_transactions == writes  # no SQLite write per hit
        assert _acseq_order(tmp_path) == keys  # the touches are still in memory
        quota.touch(keys[3])  # batch full
        assert quota.write_transactions == writes + 1
        assert _acseq_order(tmp_path) == keys[4:] + keys[:4]
        quota.touch(keys[4])
        assert quota.write_transactions == writes + 1
        clock.now += 11  # time-based flush at the next touch
        quota.touch(keys[5])
        assert quota.write_transactions == writes + 2
        assert _acseq_order(tmp_path) == keys[:6]


def test_small_inserts_are_batched(store: ObjectStore, tmp_path: Path,
                                   caplog: pytest.LogCaptureFixture) -> None:
    """Small regular objects are indexed 4 (the batch) at a time; a catalog, an object over
    BUFFERED_INSERT_BYTES and one that would not fit by this process's count at once; a
    buffered one that no longer fits when written (a neighbour filled the cache) goes."""
    with SqliteLruQuota(tmp_path, 10 * MEGABYTE, clock=Clock(), touch_batch_size=4,
                        touch_flush_seconds=10) as quota:
        writes = quota.write_transactions
        keys = [put(store, quota, i, 10) for i in range(3)]
        assert quota.write_transactions == writes and _acseq_order(tmp_path) == []
        quota.remove(keys.pop())  # a buffered key is forgotten (and its file removed)
        assert quota.write_transactions == writes + 1 and _acseq_order(tmp_path) == []
        keys.append(put(store, quota, 3, 10))
        assert quota.write_transactions == writes + 1
        keys.append(put(store, quota, 4, 10))  # 4 commands: one transaction
        assert quota.write_transactions == writes + 2
        assert _acseq_order(tmp_path) == keys
        catalog = put(store, quota, 6, 10, kind=ObjectKind.CATALOG)
        big = put(store, quota, 7, BUFFERED_INSERT_BYTES + 1)
        assert quota.write_transactions == writes + 4
        assert _acseq_order(tmp_path) == [*keys, catalog, big]
        assert quota.size() == 50 + BUFFERED_INSERT_BYTES + 1

        buffered = put(store, quota, 8, 1000)
        with sqlite3.connect(tmp_path / CACHEDB_NAME) as neighbour:  # fills the cache
            neighbour.execute("UPDATE properties SET value = ? WHERE key = ?",
                              (str(10 * MEGABYTE), TOTAL_KEY))
        for key in on_disk(store):
            quota.pin(key, 1)  # nothing may go: the buffered object cannot be indexed
        quota.flush()
        assert buffered not in on_disk(store) and len(on_disk(store)) == 6
        assert f"cache object {buffered} (1000 bytes) evicted at once" in caplog.text


def _acseq_order(directory: Path) -> list[str]:
    conn = sqlite3.connect(directory / CACHEDB_NAME)
    try:
        return [r[0] for r in conn.execute("SELECT sha1 FROM cache_catalog ORDER BY acseq")]
    finally:
        conn.close()


def test_volatile_evicted_first_and_stays_volatile(
    store: ObjectStore, quota: SqliteLruQuota
) -> None:
    regular = [put(store, quota, i, 100) for i in range(5)]
    volatile = put(store, quota, 10, 100, volatile=True)
    quota.touch(volatile)
    quota.flush()
    entries = {k: a for k, _, a, _ in quota.entries()}
    assert entries[volatile] < 0 and entries[volatile] + VOLATILE_BIT > max(
        entries[k] for k in regular
    )
    assert quota.cleanup(500) == 100
    assert volatile not in on_disk(store)


def test_rebuild_after_deleting_cachedb(store: ObjectStore, tmp_path: Path) -> None:
    with SqliteLruQuota(tmp_path, LIMIT) as quota:
        keys = [put(store, quota, i, 10 * (i + 1)) for i in range(5)]
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / f"{CACHEDB_NAME}{suffix}").unlink(missing_ok=True)
    for i, key in enumerate(keys):  # mtime order defines the rebuilt LRU order
        os.utime(store.path_of(key), (1000 + i, 1000 + i))
    with SqliteLruQuota(tmp_path, LIMIT) as quota:
        assert quota.rebuilt
        assert [k for k, *_ in quota.entries()] == keys
        assert quota.size() == 150


def test_rebuild_after_corruption(store: ObjectStore, tmp_path: Path) -> None:
    with SqliteLruQuota(tmp_path, LIMIT) as quota:
        put(store, quota, 1, 10)
    (tmp_path / CACHEDB_NAME).write_bytes(b"this is not an sqlite database" * 100)
    with SqliteLruQuota(tmp_path, LIMIT) as quota:
        assert quota.rebuilt and quota.size() == 10 and quota.count() == 1


def test_crashed_session_triggers_reconcile(store: ObjectStore, tmp_path: Path) -> None:
    with SqliteLruQuota(tmp_path, LIMIT) as quota:
        put(store, quota, 1, 10)
        conn = sqlite3.connect(tmp_path / CACHEDB_NAME)
        with conn:
            conn.execute("INSERT INTO sessions VALUES ('999999999:1')")
        conn.close()
    # an object renamed into place by the crashed process but never indexed
    orphan = h(2)
    with store.begin(ContentHash.parse(orphan)) as txn:
        txn.write(b"y" * 20)
        txn.commit()
    with SqliteLruQuota(tmp_path, LIMIT) as quota:
        assert quota.rebuilt and quota.size() == 30
    with SqliteLruQuota(tmp_path, LIMIT) as quota:
        assert not quota.rebuilt  # clean shutdown last time


def test_crash_reconcile_keeps_the_limit(store: ObjectStore, tmp_path: Path) -> None:
    """A crashed process's buffered inserts are objects on disk the index never saw; the
    reconcile that indexes them cleans up to the threshold when they overflow the limit."""
    with SqliteLruQuota(tmp_path, LIMIT) as quota:
        for n in range(5):
            put(store, quota, n, 150)
        quota.flush()
        with sqlite3.connect(tmp_path / CACHEDB_NAME) as conn:
            conn.execute("INSERT INTO sessions VALUES ('999999999:1')")
        conn.close()
    for n in range(5, 8):  # renamed into place, still in the dead process's buffer
        with store.begin(ContentHash.parse(h(n))) as txn:
            txn.write(b"y" * 150)
            txn.commit()
    with SqliteLruQuota(tmp_path, LIMIT) as quota:
        assert quota.rebuilt and quota.size() <= LIMIT // 2
        assert sum(on_disk(store).values()) == quota.size()


def test_reinsert_same_object_counts_once(store: ObjectStore, quota: SqliteLruQuota) -> None:
    put(store, quota, 1, 100)
    put(store, quota, 1, 100)
    assert quota.size() == 100 and quota.count() == 1
    quota.remove(h(1))
    assert quota.size() == 0 and on_disk(store) == {}


def test_live_process_recovers_crashed_neighbour(store: ObjectStore, tmp_path: Path) -> None:
    with SqliteLruQuota(tmp_path, LIMIT) as quota:
        put(store, quota, 1, 10)
        assert not quota.recover_crashed()
        conn = sqlite3.connect(tmp_path / CACHEDB_NAME)
        with conn:
            conn.execute("INSERT INTO sessions VALUES ('999999999:1')")
            conn.execute("INSERT INTO pins VALUES (?, '999999999:1', 10)", (h(1),))
        conn.close()
        orphan = h(2)  # the neighbour renamed it into place, then died before indexing
        with store.begin(ContentHash.parse(orphan)) as txn:
            txn.write(b"y" * 20)
            txn.commit()
        assert quota.pinned_size() == 0  # a dead owner's pin is released at once
        assert quota.size() == 10
        assert quota.recover_crashed()
        assert quota.size() == 30 and quota.count() == 2
        assert not quota.recover_crashed()
