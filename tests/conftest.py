"""Fixtures shared by all tests, and the leak checks every test runs under
(tests/leak_checks.py)."""

from __future__ import annotations

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
