"""The test harness's own checks fail loudly: the unit tier's contract (no network socket, no
process) and the leak checks (threads, descriptors, environment)."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from tests import leak_checks
from tests.leak_checks import LeakChecker, Snapshot
from tests.unit_contract import CONTRACT, Guard, UnitContractError


def test_the_guard_refuses_network_sockets_and_processes_and_remembers() -> None:
    guard = Guard()
    outer = subprocess.Popen.__dict__["_execute_child"]  # this tier's own guard, or the real one
    with guard.active():
        for attempt in (lambda: socket.socket(), lambda: socket.create_connection(("::1", 9)),
                        lambda: subprocess.run(["true"]), lambda: os.system("true")):
            with pytest.raises(UnitContractError, match="unit-tier contract"):
                attempt()
        left, right = socket.socketpair()  # AF_UNIX, in-process: allowed
        left.close()
        right.close()
    assert len(guard.violations) == 4 and all(CONTRACT in v for v in guard.violations)
    assert "subprocess.Popen(['true'])" in guard.violations[2]
    assert subprocess.Popen.__dict__["_execute_child"] is outer  # restored once left


def test_leaked_threads_descriptors_and_environment_are_named(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(leak_checks, "GRACE_S", 0.1)
    checker = LeakChecker()
    before = Snapshot.take()
    release = threading.Event()
    thread = threading.Thread(target=release.wait, name="left-running", daemon=True)
    thread.start()
    handle = open(tmp_path / "left-open", "w")  # noqa: SIM115 - the leak under test
    os.environ["PYCVMFS_LEFT_BEHIND"] = "1"
    try:
        problems = checker._leaks(before)
    finally:
        release.set()
        thread.join()
        handle.close()
        checker._restore_env(before.env)
    assert "PYCVMFS_LEFT_BEHIND" not in os.environ
    text = "\n".join(problems)
    assert "thread 'left-running' (daemon" in text
    assert f"-> {tmp_path / 'left-open'} still open" in text
    assert "environment variable PYCVMFS_LEFT_BEHIND: None -> '1' not restored" in text
    assert checker._leaks(before) == []  # once given back, nothing is reported


def test_a_thread_that_is_finishing_gets_its_grace() -> None:
    checker = LeakChecker()
    before = Snapshot.take()
    finishing = threading.Timer(0.2, lambda: None)  # ends well within GRACE_S
    finishing.start()
    assert checker._leaks(before) == []
    assert not finishing.is_alive()
