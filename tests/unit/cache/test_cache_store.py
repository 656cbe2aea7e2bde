"""ObjectStore: layout, transactions, quarantine, crash leftovers, alien modes."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from pycvmfs.cache.store import (
    QUARANTINE_DIR_NAME,
    SENTINEL_NAME,
    STALE_TXN_SECONDS,
    TXN_DIR_NAME,
    ObjectStore,
)
from pycvmfs.errors import SizeMismatchError
from pycvmfs.format.hashes import Algorithm, ContentHash


def h(data: bytes) -> ContentHash:
    return ContentHash.of(Algorithm.SHA1, data)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_layout(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path / "c")
    dirs = sorted(p.name for p in store.directory.iterdir() if p.is_dir())
    assert len(dirs) == 256 + 2 and {TXN_DIR_NAME, QUARANTINE_DIR_NAME} <= set(dirs)
    assert mode(store.directory / "ab") == 0o700
    assert (store.directory / SENTINEL_NAME).is_file()
    ObjectStore(tmp_path / "c")  # idempotent


def test_commit_makes_object_visible_only_then(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path)
    key = h(b"compressed")
    txn = store.begin(key)
    txn.write(b"hello ")
    txn.write(memoryview(b"world"))
    assert not store.contains(key) and store.open(key) is None
    assert txn.temp_path.parent == tmp_path / TXN_DIR_NAME
    assert txn.temp_path.name.startswith(f"fetch{os.getpid()}.")
    path = txn.commit(expected_size=11)
    assert path == tmp_path / key.cache_path()
    assert store.contains(key) and store.size_of(key) == 11
    fh = store.open(key)
    assert fh is not None
    with fh:
        assert fh.read() == b"hello world"
    assert os.listdir(tmp_path / TXN_DIR_NAME) == []
    with pytest.raises(ValueError):
        txn.write(b"more")


def test_reset_and_abort(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path)
    key = h(b"x")
    with store.begin(key) as txn:
        txn.write(b"garbage from a failed attempt")
        txn.reset()
        assert txn.size == 0
        txn.write(b"good")
        txn.commit()
    with open(store.path_of(key), "rb") as fh:
        assert fh.read() == b"good"
    fd = store.open_fd(key)
    assert fd is not None
    try:
        assert os.pread(fd, 3, 1) == b"ood"
    finally:
        os.close(fd)
    assert store.open_fd(h(b"absent")) is None
    other = h(b"y")
    with store.begin(other) as txn2:
        txn2.write(b"abandoned")
    assert not store.contains(other)  # context manager aborted
    assert os.listdir(tmp_path / TXN_DIR_NAME) == []
    txn3 = store.begin(other)
    txn3.abort()
    txn3.abort()  # idempotent
    assert os.listdir(tmp_path / TXN_DIR_NAME) == []


def test_size_mismatch_goes_to_quarantine(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path)
    key = h(b"z")
    txn = store.begin(key)
    txn.write(b"12345")
    with pytest.raises(SizeMismatchError):
        txn.commit(expected_size=4)
    assert not store.contains(key)
    assert (tmp_path / QUARANTINE_DIR_NAME / str(key)).read_bytes() == b"12345"


def test_remove_and_quarantine(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path)
    key = h(b"r")
    with store.begin(key) as txn:
        txn.write(b"data")
        txn.commit()
    reader = store.open(key)
    assert reader is not None
    with reader:
        assert store.remove(key)
        assert not store.remove(key)
        assert reader.read() == b"data"  # an open reader keeps its bytes
    with store.begin(key) as txn:
        txn.write(b"data")
        txn.commit()
    assert store.quarantine(key) == tmp_path / QUARANTINE_DIR_NAME / str(key)
    assert store.quarantine(key) is None
    assert store.size_of(key) is None


def test_recover_removes_dead_and_stale_txns(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path)
    txn_dir = tmp_path / TXN_DIR_NAME
    (txn_dir / "fetch999999999.abc").write_bytes(b"dead writer")  # no such pid
    (txn_dir / "fetchAb3xYz").write_bytes(b"not ours: age decides")
    live = txn_dir / f"fetch{os.getpid()}.live"
    live.write_bytes(b"in flight")
    old = txn_dir / f"fetch{os.getpid()}.old"
    old.write_bytes(b"ancient")
    past = time.time() - STALE_TXN_SECONDS - 10
    os.utime(old, (past, past))
    removed = store.recover()
    assert sorted(removed) == sorted(["fetch999999999.abc", old.name])
    assert sorted(os.listdir(txn_dir)) == sorted([live.name, "fetchAb3xYz"])
    assert store.recover(now=time.time() + STALE_TXN_SECONDS + 10) != []
    assert os.listdir(txn_dir) == []


def test_alien_modes(tmp_path: Path) -> None:
    old_umask = os.umask(0o022)
    try:
        store = ObjectStore(tmp_path / "alien", alien=True)
    finally:
        os.umask(old_umask)
    assert mode(store.directory) == 0o770
    assert mode(store.directory / "00") == 0o770
    assert mode(store.directory / TXN_DIR_NAME) == 0o770
    key = h(b"alien")
    for _ in range(2):  # the second commit finds the object present (another host's)
        with store.begin(key) as txn:
            txn.write(b"payload")
            txn.commit()
    assert mode(store.path_of(key)) == 0o660
    assert store.path_of(key).stat().st_nlink == 1
    assert os.listdir(store.directory / TXN_DIR_NAME) == []


def test_alien_recover_uses_age_only(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path, alien=True)
    other_host = tmp_path / TXN_DIR_NAME / "fetch999999999.abc"
    other_host.write_bytes(b"another host is writing")
    assert store.recover() == []
    assert store.recover(now=time.time() + STALE_TXN_SECONDS + 10) == [other_host.name]


def test_iter_objects(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path)
    keys = [h(bytes([i])) for i in range(5)]
    for i, key in enumerate(keys):
        with store.begin(key) as txn:
            txn.write(b"x" * i)
            txn.commit()
    found = {k: s for k, s, _ in store.iter_objects()}
    assert found == {str(k): i for i, k in enumerate(keys)}
