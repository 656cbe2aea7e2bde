"""The unit tier: no network, no subprocess, well under a minute (see tests/unit_contract.py).

The guard wraps the setup and call phases of every test collected under this folder, so it
covers module- and session-scoped fixtures a unit test sets up as well as the test itself.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Generator

import pytest

from tests.unit_contract import Guard

# matplotlib (the optional `report` extra) builds its font cache here, while this folder is
# collected, outside the guard: on a machine where it never ran, its first import lists the
# system fonts with `fc-list`, a process the PNG test would otherwise be blamed for
if importlib.util.find_spec("matplotlib") is not None:
    import matplotlib.font_manager  # noqa: F401


def _guarded() -> Generator[None, None, None]:
    """Run one phase under the guard; fail it if it broke the contract, even if the code
    under test caught the exception."""
    guard = Guard()
    try:
        with guard.active():
            yield
    except BaseException:
        if guard.violations:
            raise guard.failure() from None
        raise
    if guard.violations:
        raise guard.failure()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    return (yield from _guarded())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    return (yield from _guarded())
