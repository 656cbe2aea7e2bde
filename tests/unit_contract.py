"""The unit tier's contract: no network, no subprocess (enforced while a unit test runs).

A unit test must pass inside a fresh network namespace (`make test-unit` runs the tier under
`unshare --net`), so while one sets up and runs, these fail loudly with a message naming the
contract:

- a socket of any family but AF_UNIX (creating it, whatever it would be used for): network
  sockets, loopback included, belong in `tests/integration`. AF_UNIX stays allowed because it
  never leaves the process's own machine and a network namespace does not change it: asyncio
  and trio wake their event loops through `socket.socketpair()`.
- starting a process: `subprocess.Popen` (and so `run`, `check_output`, `os.popen`),
  `os.fork`, `os.forkpty`, `os.posix_spawn[p]`, `os.system`, `os.spawn*`, `os.exec*` and the
  `_posixsubprocess.fork_exec` that multiprocessing uses.

Each violation is recorded as well as raised, so a test whose code swallows the exception
still fails. Teardown is not guarded: session-scoped fixtures of other tiers may be
finalized after the last unit test.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

CONTRACT = ("unit-tier contract (tests/unit/conftest.py): a unit test opens no network socket "
            "and starts no process; move this test to tests/integration")


class UnitContractError(RuntimeError):
    """Raised when a unit test reaches for the network or a new process."""


_OS_SPAWNERS = ("fork", "forkpty", "posix_spawn", "posix_spawnp", "system",
                "spawnv", "spawnve", "spawnvp", "spawnvpe",
                "execv", "execve", "execvp", "execvpe", "execl", "execle", "execlp", "execlpe")


class Guard:
    """Patches the process-starting and socket-creating entry points for one test phase."""

    def __init__(self) -> None:
        self.violations: list[str] = []

    def _refuse(self, what: str) -> UnitContractError:
        message = f"{what}: {CONTRACT}"
        self.violations.append(message)
        return UnitContractError(message)

    def failure(self) -> BaseException:
        """The test failure that reports every violation once."""
        return pytest.fail.Exception("\n".join(dict.fromkeys(self.violations)), pytrace=False)

    def _socket_init(self, original: Callable[..., None]) -> Callable[..., None]:
        guard = self

        def init(sock: socket.socket, family: Any = -1, type: Any = -1,  # noqa: A002
                 proto: Any = -1, fileno: Any = None) -> None:
            effective = socket.AF_INET if family == -1 else family
            if fileno is None and effective != socket.AF_UNIX:
                raise guard._refuse(f"socket.socket(family={effective!r})")
            original(sock, family, type, proto, fileno)

        return init

    def _refusing(self, what: str, shown: int = 0) -> Callable[..., Any]:
        """A stand-in that refuses; the message shows positional argument `shown`."""
        def refuse(*args: Any, **kwargs: Any) -> Any:
            detail = repr(args[shown])[:200] if len(args) > shown else ""
            raise self._refuse(f"{what}({detail})")

        return refuse

    @contextmanager
    def active(self) -> Iterator[Guard]:
        import _posixsubprocess

        patches: list[tuple[Any, str, Any]] = [
            (socket.socket, "__init__", self._socket_init(socket.socket.__init__)),
            (subprocess.Popen, "_execute_child",
             self._refusing("subprocess.Popen", shown=1)),
            (_posixsubprocess, "fork_exec", self._refusing("_posixsubprocess.fork_exec")),
        ]
        patches += [(os, name, self._refusing(f"os.{name}"))
                    for name in _OS_SPAWNERS if hasattr(os, name)]
        saved = [(target, name, target.__dict__[name] if isinstance(target, type)
                  else getattr(target, name)) for target, name, _ in patches]
        try:
            for target, name, replacement in patches:
                setattr(target, name, replacement)
            yield self
        finally:
            for target, name, original in saved:
                setattr(target, name, original)
