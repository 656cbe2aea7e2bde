"""Fixtures shared by all tests, and the leak checks every test runs under
(tests/leak_checks.py)."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.leak_checks import LeakChecker
from tests.publish_helpers import FQRN, Keys

_LEAKS = LeakChecker()
_undo: list[Callable[[], None]] = []


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(_LEAKS, "pycvmfs-leak-checks")
    _undo.append(_LEAKS.track_mkdtemp())
    _undo.append(_deliver_sigint_to_children())


def _deliver_sigint_to_children() -> Callable[[], None]:
    """A suite started in the background of a non-interactive shell inherits SIGINT
    ignored, and so would every process a test starts (exec keeps an ignored signal):
    tests that stop a service or a publish with SIGINT would wait for nothing. A handled
    SIGINT here becomes the default one in children."""
    if signal.getsignal(signal.SIGINT) != signal.SIG_IGN:
        return lambda: None
    signal.signal(signal.SIGINT, signal.default_int_handler)
    return lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)


def pytest_unconfigure(config: pytest.Config) -> None:
    while _undo:
        _undo.pop()()


@pytest.fixture(scope="session", autouse=True)
def _leak_checked_tmp_root(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Mounts left under this session's basetemp are leaks."""
    _LEAKS.add_tmp_root(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    """One repository key set per test session (RSA key generation is slow-ish)."""
    from pycvmfs.publisher.keys import create_keys

    keys_dir: Path = tmp_path_factory.mktemp("keys")
    create_keys(FQRN, keys_dir)
    return Keys(FQRN, keys_dir)
