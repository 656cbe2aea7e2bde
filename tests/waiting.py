"""Waiting for a condition in tests: poll it against a deadline instead of sleeping a fixed
time (a fixed sleep is too short on a loaded machine and wasted time on an idle one).

    wait_until(lambda: server.active == 3, 5, "the three requests to be served")
    if not poll_until(lambda: mounted(mnt), 20): ...   # the caller decides what failing means

A sleep that is the point of a test (time must pass for a TTL, a server trickles bytes,
nothing may happen for a while) stays a `time.sleep` with a comment saying so.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import pytest

T = TypeVar("T")
INTERVAL_S = 0.02


def poll_until(predicate: Callable[[], T], timeout_s: float,
               interval_s: float = INTERVAL_S) -> T | None:
    """The first truthy value of `predicate()` within `timeout_s`; None if it never came
    (the predicate is asked once more at the deadline)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        time.sleep(min(interval_s, remaining))


def wait_until(predicate: Callable[[], T], timeout_s: float, what: str,
               interval_s: float = INTERVAL_S) -> T:
    """Like `poll_until`, but fail the test naming `what` when the deadline passes."""
    value = poll_until(predicate, timeout_s, interval_s)
    if not value:
        pytest.fail(f"timed out after {timeout_s:g} s waiting for {what}")
    return value
