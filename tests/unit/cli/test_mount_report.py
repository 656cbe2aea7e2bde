"""What a forked serving process tells `pycvmfs mount` on its pipe (`cli.mount`): its pid
at start, its degraded states, its pid once ready, or an error line and EOF. Read with a
deadline."""

from __future__ import annotations

import os
import sys
import time

import pytest

import pycvmfs.client  # noqa: F401 - imported at collection: urllib3 probes IPv6 with a socket
from pycvmfs.cli import mount


def _said(*chunks: bytes, close: bool = True, wait_s: float = 5.0) -> bytes:
    reader, writer = os.pipe()
    try:
        for chunk in chunks:
            os.write(writer, chunk)
        if close:
            os.close(writer)
            writer = -1
        return mount._read_until_ready(reader, time.monotonic() + wait_s)
    finally:
        os.close(reader)
        if writer >= 0:
            os.close(writer)


def test_ready_reports_the_serving_pid() -> None:
    said = _said(mount.STARTED_MARK + b"41\n", mount.READY_MARK + b"42\n", close=False)
    assert mount._reported(said, mount.READY_MARK) == 42
    assert mount._reported(said, mount.STARTED_MARK) == 41


def test_a_failure_is_what_it_printed_before_eof() -> None:
    said = _said(mount.STARTED_MARK + b"41\n", b"pycvmfs: error: no key for x.org\n")
    assert mount._reported(said, mount.READY_MARK) is None
    assert said.endswith(b"no key for x.org\n")


def test_silence_ends_at_the_deadline() -> None:
    said = _said(mount.STARTED_MARK + b"41\n", close=False, wait_s=0.05)
    assert said.endswith(b"\0timeout")
    assert mount._reported(said, mount.STARTED_MARK) == 41


def test_a_garbled_pid_is_no_pid() -> None:
    assert mount._reported(mount.READY_MARK + b"4x\n", mount.READY_MARK) is None


def test_degraded_states_before_ready_are_kept_in_order() -> None:
    said = _said(mount.STARTED_MARK + b"41\n", mount.NOTICE_MARK + b"serving offline\n",
                 b"some library noise\n", mount.NOTICE_MARK + b"proxy p failed\n",
                 mount.READY_MARK + b"41\n", close=False)
    assert mount._reported(said, mount.READY_MARK) == 41
    assert mount.notices_in(said) == ["serving offline", "proxy p failed"]


def test_a_degraded_state_is_one_line_on_stderr_when_detached(
        capfd: pytest.CaptureFixture[str]) -> None:
    mount.say_degraded("offline:\nfrom the cache", detached=True)
    mount.say_degraded("not detached: logged only", detached=False)
    err = capfd.readouterr().err
    assert err.encode().count(mount.NOTICE_MARK) == 1
    assert mount.notices_in(err.encode()) == ["offline: from the cache"]


def test_the_serving_code_is_imported_before_the_fork(monkeypatch: pytest.MonkeyPatch) -> None:
    """The client and the FUSE backend are imported by the forking command (their pages
    stay out of the serving process's RSS); a backend that cannot load is left to the
    serving process, which names the reason as before."""
    from pycvmfs.errors import ConfigError
    from pycvmfs.fs import mount as fs_mount

    monkeypatch.delitem(sys.modules, "pycvmfs.client")
    asked: list[str | None] = []

    def unloadable(preference: str | None = None) -> None:
        asked.append(preference)
        raise ConfigError("no FUSE binding")

    monkeypatch.setattr(fs_mount, "load_backend", unloadable)
    mount._preload_serving_code("lowlevel")
    assert asked == ["lowlevel"] and "pycvmfs.client" in sys.modules
