"""The eviction counters a mount reports (`pycvmfs status`, `pycvmfs_cache_evictions_total`)."""

from __future__ import annotations

from pathlib import Path

from pycvmfs.cache.quota import SqliteLruQuota
from pycvmfs.cache.quota_protocol import NoopQuota
from pycvmfs.cache.store import ObjectStore
from pycvmfs.format.hashes import Algorithm, ContentHash


def test_evictions_are_counted(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path)
    try:
        with SqliteLruQuota(store.directory, 1000) as quota:
            assert quota.evictions() == (0, 0)
            for n in range(11):  # the 11th crosses the limit: cleaned to half (500)
                key = ContentHash.of(Algorithm.SHA1, n.to_bytes(4, "big"))
                with store.begin(key) as txn:
                    txn.write(b"x" * 100)
                    txn.commit()
                quota.insert(str(key), 100)
            assert quota.evictions() == (5, 500)
            assert quota.cleanup(0) == 600 and quota.evictions() == (11, 1100)
    finally:
        store.close()
    assert NoopQuota().evictions() == (0, 0)
