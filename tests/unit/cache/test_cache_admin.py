"""cache_status / clean / verify, and the CacheHost wiring."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pycvmfs.cache import CacheConfig, CacheFullError, CacheHost, ObjectKind
from pycvmfs.cache.admin import ProblemKind, cache_status, clean, verify
from pycvmfs.cache.breadcrumb import Breadcrumb, write_breadcrumb
from pycvmfs.cache.quota_protocol import MEGABYTE, NoopQuota
from pycvmfs.cache.store import SENTINEL_NAME
from pycvmfs.errors import ConfigError, NotFoundError
from pycvmfs.format.hashes import Algorithm, ContentHash


def h(n: int) -> ContentHash:
    return ContentHash.of(Algorithm.SHA1, n.to_bytes(4, "big"))


def add(host: CacheHost, n: int, data: bytes, **kw: object) -> ContentHash:
    key = h(n)
    txn = host.begin(key)
    txn.write(data)
    host.commit(txn, **kw)  # type: ignore[arg-type]
    return key


def test_host_round_trip_and_status(tmp_path: Path) -> None:
    with CacheHost(CacheConfig(tmp_path, quota_limit_mb=1)) as host:
        a = add(host, 1, b"alpha", expected_size=5)
        cat = add(host, 2, b"catalog bytes", kind=ObjectKind.CATALOG)
        host.pin(cat, 13)
        fh = host.open(a)
        assert fh is not None
        with fh:
            assert fh.read() == b"alpha"
        assert host.open(h(3)) is None
        assert host.usage() == (18, MEGABYTE)
        write_breadcrumb(tmp_path, "x.cern.ch", Breadcrumb(h(2), 5, 6))
        status = cache_status(tmp_path)
        assert status["objects"] == 2 and status["bytes"] == 18
        assert status["managed"] and status["catalogs"] == 1 and status["pinned_bytes"] == 13
        assert status["breadcrumbs"] == {"x.cern.ch": f"{h(2)}T5R6"}
        assert verify(tmp_path) == []
        assert clean(tmp_path) == 5  # the pinned catalog stays
        assert host.store.contains(cat) and not host.store.contains(a)
    assert clean(tmp_path) == 13  # unpinned at close


def test_host_rejects_oversized_objects(tmp_path: Path) -> None:
    with CacheHost(CacheConfig(tmp_path, quota_limit_mb=1)) as host:
        with pytest.raises(CacheFullError):
            add(host, 1, b"x" * (MEGABYTE // 2 + 1))
        assert not host.store.contains(h(1))
        assert os.listdir(tmp_path / "txn") == []


def test_verify_reports_structure_problems(tmp_path: Path) -> None:
    with CacheHost(CacheConfig(tmp_path, quota_limit_mb=1)) as host:
        gone = add(host, 1, b"one")
        resized = add(host, 2, b"two")
        host.quota.flush()  # a live mount indexes small objects in batches
        host.store.remove(gone)
        host.store.path_of(resized).write_bytes(b"three")
        orphan = h(3)
        host.store.path_of(orphan).write_bytes(b"unindexed")
        (tmp_path / "ab" / "not-a-hash").write_bytes(b"?")
        (tmp_path / SENTINEL_NAME).unlink()
        kinds = {(p.kind, p.key) for p in verify(tmp_path)}
    assert kinds == {
        (ProblemKind.NO_SENTINEL, ""),
        (ProblemKind.MISSING, str(gone)),
        (ProblemKind.SIZE, str(resized)),
        (ProblemKind.ORPHAN, str(orphan)),
        (ProblemKind.BAD_NAME, "abnot-a-hash"),
    }


def test_alien_host_is_unmanaged(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        CacheConfig(tmp_path, quota_limit_mb=100, alien=True, shared=False)
    with pytest.raises(ConfigError):
        CacheConfig(tmp_path, quota_limit_mb=0)
    config = CacheConfig(tmp_path, quota_limit_mb=-1, alien=True, shared=False)
    with CacheHost(config) as host:
        assert isinstance(host.quota, NoopQuota)
        add(host, 1, b"x" * 100)
        assert host.usage() == (0, -1)
    assert not (tmp_path / "cachedb").exists()
    status = cache_status(tmp_path, alien=True)  # group-shared objects (mode 0660)
    assert status["managed"] is False and status["objects"] == 1
    assert verify(tmp_path, alien=True) == []
    assert clean(tmp_path, alien=True) == 100
    assert cache_status(tmp_path, alien=True)["objects"] == 0


def test_missing_directory(tmp_path: Path) -> None:
    for fn in (cache_status, clean, verify):
        with pytest.raises(NotFoundError):
            fn(tmp_path / "nope")


def test_begin_with_size_hint(tmp_path: Path) -> None:
    with CacheHost(CacheConfig(tmp_path, quota_limit_mb=100)) as host:
        with pytest.raises(CacheFullError):
            host.begin(h(1), size_hint=50 * MEGABYTE + 1)
        small = [add(host, n, b"s" * (MEGABYTE * 8)) for n in range(10)]  # 80 MB
        txn = host.begin(h(99), size_hint=30 * MEGABYTE)  # big: cleanup to 50 MB first
        txn.abort()
        assert host.usage()[0] <= 50 * MEGABYTE
        assert host.store.contains(small[-1]) and not host.store.contains(small[0])
