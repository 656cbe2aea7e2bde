"""The cross-process primitives: flock exclusion and owner tokens."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pycvmfs.cache.shared import LOCK_FILE_NAME, CacheLock, owner_alive, owner_token

PROBE = r"""
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    print("free")
except BlockingIOError:
    print("held")
finally:
    os.close(fd)
"""


def probe(path: Path) -> str:
    out = subprocess.run([sys.executable, "-c", PROBE, str(path)], capture_output=True,
                         text=True, check=True)
    return out.stdout.strip()


def test_lock_excludes_other_processes_and_is_reentrant(tmp_path: Path) -> None:
    lock = CacheLock(tmp_path)
    try:
        assert probe(tmp_path / LOCK_FILE_NAME) == "free"
        with lock:
            with lock:  # re-entrant in one thread
                assert probe(tmp_path / LOCK_FILE_NAME) == "held"
            assert probe(tmp_path / LOCK_FILE_NAME) == "held"
        assert probe(tmp_path / LOCK_FILE_NAME) == "free"
    finally:
        lock.close()
    lock.close()  # idempotent


def test_owner_tokens() -> None:
    me = owner_token()
    assert me.startswith(f"{os.getpid()}") and owner_alive(me)
    pid, _, start = me.partition(":")
    if start:  # /proc present: a reused pid with another start time is not us
        assert not owner_alive(f"{pid}:{int(start) + 1}")
    assert owner_alive(owner_token(1))  # init
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    assert not owner_alive(child.stdout.strip())
    for garbage in ("", "x", "-5", "0:1", "abc:def"):
        assert not owner_alive(garbage)


def test_a_killed_process_not_yet_reaped_is_not_an_owner() -> None:
    import subprocess
    import sys
    import time

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    token = owner_token(child.pid)
    deadline = time.monotonic() + 10
    while owner_alive(token) and time.monotonic() < deadline:  # exits, stays a zombie
        time.sleep(0.01)
    try:
        assert not owner_alive(token)
        assert os.path.exists(f"/proc/{child.pid}")  # still there, unreaped
    finally:
        child.wait()
