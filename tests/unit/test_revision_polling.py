"""Revision polling cannot be driven by the repository: the TTL has a floor, and failed
checks back off (a hostile or broken repository cannot make clients hammer Stratum-1s)."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pytest

from pycvmfs.errors import FetchError
from pycvmfs.repository.revisions import MIN_TTL_S, OFFLINE_RETRY_S, RevisionWatcher


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _repository(ttl: int) -> Any:
    root = SimpleNamespace(ttl=ttl)
    return SimpleNamespace(fixed=False, trusted=object(), tree=SimpleNamespace(root=root),
                           fqrn="hostile.example.org", revision=7, close=lambda: None)


@pytest.mark.parametrize("ttl", [0, 1, 59])
def test_a_tiny_ttl_is_raised_to_the_floor(ttl: int) -> None:
    clock = Clock()
    checks: list[float] = []
    watcher = RevisionWatcher(_repository(ttl), lambda current: checks.append(clock()),
                              clock=clock)
    assert watcher.ttl_s(watcher.current) == MIN_TTL_S
    assert watcher.deadline == clock.now + MIN_TTL_S
    watcher.check_now()
    assert watcher.deadline == clock.now + MIN_TTL_S and len(checks) == 1


def test_the_floor_is_configurable_and_max_ttl_still_caps() -> None:
    watcher = RevisionWatcher(_repository(0), lambda current: None, min_ttl_s=1.0)
    assert watcher.ttl_s(watcher.current) == 1.0
    capped = RevisionWatcher(_repository(3600), lambda current: None, max_ttl_s=120.0)
    assert capped.ttl_s(capped.current) == 120.0


def test_failed_checks_back_off_up_to_the_short_term_ttl() -> None:
    clock = Clock()

    def failing(current: Any) -> None:
        raise FetchError("all Stratum-1s refused")

    watcher = RevisionWatcher(_repository(0), failing, clock=clock)
    waits = []
    for _ in range(5):
        watcher.check_now()
        waits.append(watcher.deadline - clock.now)
        clock.now = watcher.deadline
    assert waits == [60.0, 120.0, OFFLINE_RETRY_S, OFFLINE_RETRY_S, OFFLINE_RETRY_S]
    assert watcher.offline and watcher.failures == 5


def test_an_unexpected_error_does_not_end_the_watcher() -> None:
    clock = Clock()

    def broken(current: Any) -> None:
        raise OSError(24, "Too many open files")

    watcher = RevisionWatcher(_repository(0), broken, clock=clock)
    assert watcher.check_now() is False
    assert watcher.offline and "Too many open files" in watcher.last_error


def test_a_ttl_zero_repository_is_not_polled_in_a_loop() -> None:
    calls: list[float] = []
    watcher = RevisionWatcher(_repository(0), lambda current: calls.append(time.monotonic()))
    watcher.start()
    try:
        time.sleep(0.5)  # the point: half a second of a started watcher makes no call
    finally:
        watcher.stop()
    assert calls == []  # the first check is a minute away
