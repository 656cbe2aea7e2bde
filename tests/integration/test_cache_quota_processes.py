"""SqliteLruQuota against other processes: a dead process's pins, and a lock held by another
process never makes a cache hit wait."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pycvmfs.cache.cachedb import CACHEDB_NAME
from pycvmfs.cache.quota import SqliteLruQuota
from pycvmfs.cache.quota_protocol import Quota
from pycvmfs.cache.shared import owner_token
from pycvmfs.cache.store import ObjectStore
from pycvmfs.format.hashes import Algorithm, ContentHash

LIMIT = 1000


def h(n: int) -> str:
    return str(ContentHash.of(Algorithm.SHA1, n.to_bytes(4, "big")))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ObjectStore]:
    store = ObjectStore(tmp_path)
    yield store
    store.close()


def put(store: ObjectStore, quota: Quota, n: int, size: int) -> str:
    key = h(n)
    with store.begin(ContentHash.parse(key)) as txn:
        txn.write(b"x" * size)
        txn.commit()
    quota.insert(key, size)
    return key


def test_pins_of_dead_processes_are_released(store: ObjectStore, tmp_path: Path) -> None:
    with SqliteLruQuota(tmp_path, LIMIT) as quota:
        key = put(store, quota, 1, 300)
        child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                               capture_output=True, text=True, check=True)
        dead_owner = f"{child.stdout.strip()}:1"
        conn = sqlite3.connect(tmp_path / CACHEDB_NAME)
        with conn:
            conn.execute("INSERT INTO pins VALUES (?, ?, 300)", (key, dead_owner))
            conn.execute("INSERT INTO pins VALUES (?, ?, 300)", (h(99), owner_token(1)))
        conn.close()
        assert quota.pinned_size() == 300  # pid 1 (init) is alive
        assert quota.cleanup(0) == 300  # the dead owner's pin does not protect


HOLDER = r"""
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.readline()
os.close(fd)
"""


def test_touch_never_waits_for_another_process(store: ObjectStore, tmp_path: Path) -> None:
    with SqliteLruQuota(tmp_path, LIMIT, touch_batch_size=2) as quota:
        keys = [put(store, quota, i, 10) for i in range(3)]
        writes = quota.write_transactions
        with subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "lock_cachedb")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as holder:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
            quota.touch(keys[0])
            quota.touch(keys[1])  # batch due, index locked elsewhere: stays buffered
            assert quota.write_transactions == writes
            holder.communicate("\n", timeout=60)
        quota.touch(keys[0])  # the lock is free again: the buffered hits are written
        assert quota.write_transactions == writes + 1
        assert [k for k, *_ in quota.entries()] == [keys[2], keys[1], keys[0]]
