"""kill -9 of a cache writer: no partial object is ever visible, restart recovers.

The writer is a real child process (SIGKILL cannot be simulated in-process)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from pycvmfs.cache import CacheConfig, CacheHost
from pycvmfs.cache.admin import verify
from pycvmfs.format.hashes import Algorithm, ContentHash

REPO_ROOT = Path(__file__).resolve().parents[2]
CHUNK = 4096
CHUNKS = 16

WRITER = r"""
import sys, time
from pathlib import Path
from pycvmfs.cache import CacheConfig, CacheHost
from pycvmfs.format.hashes import Algorithm, ContentHash

directory, stall_at = Path(sys.argv[1]), int(sys.argv[2])
host = CacheHost(CacheConfig(directory, quota_limit_mb=1))
n = 0
while True:
    key = ContentHash.of(Algorithm.SHA1, n.to_bytes(4, "big"))
    txn = host.begin(key)
    for i in range(16):
        txn.write(bytes([n % 251]) * 4096)
        if n == stall_at and i == 7:
            print("mid", flush=True)
            time.sleep(60)  # the point: stalled mid-write until the test kills it
    host.commit(txn, expected_size=16 * 4096)
    print(n, flush=True)
    n += 1
"""


def expected(n: int) -> tuple[str, bytes]:
    key = ContentHash.of(Algorithm.SHA1, n.to_bytes(4, "big"))
    return str(key), bytes([n % 251]) * (CHUNK * CHUNKS)


def run_and_kill(directory: Path, stall_at: int, kill_after_lines: int) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    with subprocess.Popen(
        [sys.executable, "-c", WRITER, str(directory), str(stall_at)],
        stdout=subprocess.PIPE, text=True, env=env,
    ) as child:
        assert child.stdout is not None
        for _ in range(kill_after_lines):
            line = child.stdout.readline()
            assert line, "writer died early"
            if line.strip() == "mid":
                break
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL


def check_recovered(directory: Path) -> int:
    with CacheHost(CacheConfig(directory, quota_limit_mb=1)) as host:
        assert os.listdir(directory / "txn") == []  # the dead writer's temp file is gone
        by_key = dict(expected(n) for n in range(1000))
        objects = list(host.store.iter_objects())
        for key, size, _ in objects:
            assert size == CHUNK * CHUNKS, f"partial object {key}"
            assert host.store.path_of(key).read_bytes() == by_key[key]
        assert host.quota.size() == sum(s for _, s, _ in objects) <= 1 << 20
    assert verify(directory) == []
    return len(objects)


def test_kill_mid_write_leaves_no_partial_object(tmp_path: Path) -> None:
    run_and_kill(tmp_path, stall_at=5, kill_after_lines=100)
    assert len(os.listdir(tmp_path / "txn")) == 1  # the half-written temp file
    assert check_recovered(tmp_path) == 5


def test_kill_while_busy_then_restart(tmp_path: Path) -> None:
    # no stall: the kill lands anywhere (write, rename, index transaction, cleanup)
    run_and_kill(tmp_path, stall_at=-1, kill_after_lines=40)
    assert check_recovered(tmp_path) > 0
    run_and_kill(tmp_path, stall_at=-1, kill_after_lines=25)  # again, on the recovered cache
    assert check_recovered(tmp_path) > 0
