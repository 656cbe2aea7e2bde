"""One cache directory shared by several processes (CVMFS_SHARED_CACHE=yes).

Real child processes insert, touch, pin and evict concurrently under a small quota; the
cache must end consistent: index == files, sizes add up, no object lost or corrupt, and
no process evicts another live process's pinned catalog. (The interleavings these races
produce, forced one by one: tests/unit/cache/test_cache_shared_races.py.)"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

from pycvmfs.cache import CacheConfig, CacheHost, ObjectStore, SqliteLruQuota
from pycvmfs.cache.admin import verify
from pycvmfs.cache.cachedb import CACHEDB_NAME, TOTAL_KEY
from pycvmfs.format.hashes import Algorithm, ContentHash

REPO_ROOT = Path(__file__).resolve().parents[2]
LIMIT_MB = 1
ENV = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}

INSERTER = r"""
import sys
from pathlib import Path
from pycvmfs.cache import CacheConfig, CacheHost, ObjectKind
from pycvmfs.format.hashes import Algorithm, ContentHash

directory, worker = Path(sys.argv[1]), int(sys.argv[2])
offset = int(sys.argv[3]) if len(sys.argv) > 3 else 3  # 0: all walk the same key order

def obj(n):
    size = 5000 if n >= 100000 else 2000 + 211 * n
    return ContentHash.of(Algorithm.SHA1, n.to_bytes(4, "big")), bytes([n % 251]) * size

with CacheHost(CacheConfig(directory, quota_limit_mb=1)) as host:
    catalog, data = obj(100000 + worker)
    host.pin(catalog, len(data))
    txn = host.begin(catalog)
    txn.write(data)
    host.commit(txn, kind=ObjectKind.CATALOG)
    for i in range(150):
        n = (i * 7 + worker * offset) % 120       # overlapping key sets between workers
        key, data = obj(n)
        fh = host.open(key)
        if fh is not None:
            with fh:
                assert fh.read() == data, f"corrupt {key}"
            continue
        txn = host.begin(key)
        txn.write(data)
        host.commit(txn, expected_size=len(data))
    assert host.store.contains(catalog), "own pinned catalog evicted"
print("ok", flush=True)
"""

PINNER = r"""
import sys
from pathlib import Path
from pycvmfs.cache import CacheConfig, CacheHost, ObjectKind
from pycvmfs.format.hashes import Algorithm, ContentHash

directory = Path(sys.argv[1])
host = CacheHost(CacheConfig(directory, quota_limit_mb=1))
key = ContentHash.of(Algorithm.SHA1, b"catalog")
host.pin(key, 1000)
txn = host.begin(key)
txn.write(b"c" * 1000)
host.commit(txn, kind=ObjectKind.CATALOG)
print("pinned", flush=True)
sys.stdin.readline()
host.close()
print("closed", flush=True)
"""


def obj(n: int) -> tuple[str, bytes]:
    key = ContentHash.of(Algorithm.SHA1, n.to_bytes(4, "big"))
    size = 5000 if n >= 100000 else 2000 + 211 * n
    return str(key), bytes([n % 251]) * size


def assert_consistent(directory: Path) -> None:
    expected = dict(obj(n) for n in range(120))
    expected.update(obj(100000 + w) for w in range(8))
    conn = sqlite3.connect(directory / CACHEDB_NAME)
    try:  # the running total kept by concurrent writers (start-up would recompute it)
        query = "SELECT value FROM properties WHERE key = ?"
        (total,) = conn.execute(query, (TOTAL_KEY,)).fetchone()
        assert int(total) == conn.execute("SELECT SUM(size) FROM cache_catalog").fetchone()[0]
    finally:
        conn.close()
    with SqliteLruQuota.from_megabytes(directory, LIMIT_MB) as quota:
        assert not quota.rebuilt  # consistent without any repair
        index = {k: s for k, s, _, _ in quota.entries()}
    files = {}
    for key, size, _ in CacheHost(CacheConfig(directory, quota_limit_mb=-1)).store.iter_objects():
        files[key] = size
        assert (directory / key[:2] / key[2:]).read_bytes() == expected[key], key
    assert index == files
    assert len(files) < len(expected)  # cleanups did run
    assert sum(files.values()) <= LIMIT_MB << 20
    assert verify(directory) == []
    assert os.listdir(directory / "txn") == []


def run_inserters(directory: Path, workers: int, offset: int = 3) -> None:
    """Run `workers` INSERTER processes at once on `directory`; all must succeed."""
    children = [
        subprocess.Popen([sys.executable, "-c", INSERTER, str(directory), str(w), str(offset)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
        for w in range(workers)
    ]
    results = []
    try:
        for child in children:
            out, err = child.communicate(timeout=120)
            results.append((child.returncode, out.strip(), err))
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
            child.communicate()
    assert results == [(0, "ok", "")] * workers


def test_concurrent_inserters_end_consistent(tmp_path: Path) -> None:
    run_inserters(tmp_path, 4)
    assert_consistent(tmp_path)


SAME_ORDER_ROUNDS = 8


def test_inserters_fetching_the_same_objects_end_consistent(tmp_path: Path) -> None:
    """Stress: six workers walk one key order, so two often fetch an object at once and
    both rename it into place; a cleanup that evicts it (by one's row) between the
    other's rename and its insert must not leave that insert a row without a file. Before
    the file check of `SqliteLruQuota._insert_locked`, ~15 % of rounds ended so."""
    for round_ in range(SAME_ORDER_ROUNDS):
        directory = tmp_path / str(round_)
        directory.mkdir()
        run_inserters(directory, 6, offset=0)
        assert_consistent(directory)


def _start_pinner(directory: Path) -> subprocess.Popen[str]:
    child = subprocess.Popen([sys.executable, "-c", PINNER, str(directory)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=ENV)
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "pinned"
    return child


def test_other_process_pins_are_honoured(tmp_path: Path) -> None:
    catalog = str(ContentHash.of(Algorithm.SHA1, b"catalog"))
    with _start_pinner(tmp_path) as child, SqliteLruQuota.from_megabytes(tmp_path, 1) as quota:
        assert quota.pinned_size() == 1000
        assert quota.cleanup(0) == 0
        assert (tmp_path / catalog[:2] / catalog[2:]).exists()
        out, _ = child.communicate("\n", timeout=60)  # the mount unpins at exit
        assert out.strip() == "closed"
        assert quota.pinned_size() == 0
        assert quota.cleanup(0) == 1000


def test_pins_of_a_killed_process_are_released(tmp_path: Path) -> None:
    with _start_pinner(tmp_path) as child:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        assert child.stdin is not None
    with SqliteLruQuota.from_megabytes(tmp_path, 1) as quota:
        assert quota.rebuilt  # a crashed session was found
        assert quota.pinned_size() == 0
        assert quota.cleanup(0) == 1000


EVICTOR = r"""
import sys
from pycvmfs.cache import SqliteLruQuota
with SqliteLruQuota.from_megabytes(sys.argv[1], 1) as quota:
    print(quota.cleanup(0), flush=True)
"""


def test_reader_keeps_bytes_when_another_process_evicts(tmp_path: Path) -> None:
    with CacheHost(CacheConfig(tmp_path, quota_limit_mb=LIMIT_MB)) as host:
        key, data = obj(7)
        txn = host.begin(ContentHash.parse(key))
        txn.write(data)
        host.commit(txn)
        host.quota.flush()  # small objects are indexed in batches; this one must be now
        fh = host.open(ContentHash.parse(key))
        assert fh is not None
        with fh:
            out = subprocess.run([sys.executable, "-c", EVICTOR, str(tmp_path)], env=ENV,
                                 capture_output=True, text=True, check=True).stdout
            assert int(out) == len(data)  # the other process evicted it ...
            assert not host.store.contains(ContentHash.parse(key))
            assert fh.read() == data  # ... and this reader still gets every byte


def test_kill_one_of_several_mounts(tmp_path: Path) -> None:
    victim = subprocess.Popen([sys.executable, "-c", INSERTER, str(tmp_path), "7"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    survivors = [
        subprocess.Popen([sys.executable, "-c", INSERTER, str(tmp_path), str(w)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
        for w in range(2)
    ]
    try:
        while not list(tmp_path.glob("??/*")):  # the victim is under way
            if victim.poll() is not None:
                break
        victim.kill()
        victim.communicate()
        results = [child.communicate(timeout=120) for child in survivors]
        assert [(c.returncode, out.strip()) for c, (out, _) in zip(survivors, results,
                                                                    strict=True)] == [(0, "ok")] * 2
    finally:
        for child in [victim, *survivors]:
            if child.poll() is None:
                child.kill()
            child.communicate()
    with SqliteLruQuota.from_megabytes(tmp_path, LIMIT_MB) as quota:
        index = {k: s for k, s, _, _ in quota.entries()}
    files = {k: s for k, s, _ in ObjectStore(tmp_path).iter_objects()}
    assert index == files and sum(files.values()) <= LIMIT_MB << 20
    assert verify(tmp_path) == []
    expected = dict(obj(n) for n in range(120))
    expected.update(obj(100000 + w) for w in range(8))
    for key in files:
        assert (tmp_path / key[:2] / key[2:]).read_bytes() == expected[key]
