"""The pure parts of `pycvmfs exec`: arguments, exit statuses, signals passed on, uid maps,
and the sysctls that refuse user namespaces."""

from __future__ import annotations

import errno
import signal
from pathlib import Path

import click
import pytest

from pycvmfs.cli.exec_command import (
    SI_KERNEL,
    exit_status,
    forwards,
    split_command,
    start_failure_status,
)
from pycvmfs.fs.userns import explain, id_map_line, refusal


def test_split_command_at_the_first_double_dash() -> None:
    assert split_command(["a.cern.ch", "b.cern.ch", "--", "ls", "--", "-l"]) == (
        ["a.cern.ch", "b.cern.ch"], ["ls", "--", "-l"])


@pytest.mark.parametrize(("words", "says"), [
    (["a.cern.ch", "ls"], "expected REPO"),
    (["--", "ls"], "no repository"),
    (["a.cern.ch", "--"], "no command"),
    (["../etc", "--", "ls"], "not a repository name"),
    (["a.cern.ch", "a.cern.ch", "--", "ls"], "named twice"),
])
def test_split_command_refuses(words: list[str], says: str) -> None:
    with pytest.raises(click.UsageError, match=says):
        split_command(words)


def test_exit_status_as_a_shell() -> None:
    assert exit_status(0) == 0
    assert exit_status(3) == 3
    assert exit_status(-signal.SIGTERM) == 128 + signal.SIGTERM
    assert exit_status(-signal.SIGKILL) == 137


def test_start_failures_as_a_shell() -> None:
    assert start_failure_status(FileNotFoundError(errno.ENOENT, "x")) == 127
    assert start_failure_status(PermissionError(errno.EACCES, "x")) == 126
    assert start_failure_status(OSError(errno.ENOEXEC, "x")) == 126


def test_signals_from_a_terminal_are_not_sent_twice() -> None:
    assert forwards(signal.SIGTERM, 0)  # kill(1): SI_USER
    assert forwards(signal.SIGINT, 0)
    assert forwards(signal.SIGHUP, -1)  # sigqueue
    assert not forwards(signal.SIGINT, SI_KERNEL)  # Ctrl-C reached CMD already
    assert not forwards(signal.SIGCHLD, 0)


def test_id_map_line_maps_the_user_to_itself() -> None:
    assert id_map_line(1000, 1000) == "1000 1000 1\n"
    assert id_map_line(0, 65534) == "0 65534 1\n"


def _sysctl(root: Path, name: str, value: str) -> None:
    path = root / name.replace(".", "/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(value + "\n")


def test_refusal_names_the_sysctl_to_ask_for(tmp_path: Path) -> None:
    assert refusal(tmp_path) is None  # none of the settings: nothing says no
    _sysctl(tmp_path, "kernel.unprivileged_userns_clone", "1")
    _sysctl(tmp_path, "user.max_user_namespaces", "0")
    said = refusal(tmp_path)
    assert said is not None
    assert "user.max_user_namespaces=0" in said
    assert "sysctl user.max_user_namespaces=15000" in said
    _sysctl(tmp_path, "user.max_user_namespaces", "63000")
    _sysctl(tmp_path, "kernel.apparmor_restrict_unprivileged_userns", "1")
    said = refusal(tmp_path)
    assert said is not None and "kernel.apparmor_restrict_unprivileged_userns=0" in said


def test_refusal_after_the_fact_is_one_line() -> None:
    said = explain(PermissionError(errno.EPERM, "Operation not permitted"))
    assert "\n" not in said and "user.max_user_namespaces" in said
