"""Latency histograms of FUSE requests, by operation, cheap enough for the hot path.

An adapter wraps each request callback once (`OpTimings.timed`); a call then costs two
`time.perf_counter_ns` reads, one `bisect` over fixed bounds and two list increments.
No lock: two workers finishing the same operation at the same instant may lose one
increment (a statistic, never a correctness matter). What is timed is how long the
callback held the FUSE worker; a request handed to a thread that waits for a download
is answered later, and that wait shows in the download counters instead.

Stdlib only: the mount imports it, and `pycvmfs status`/`metrics` read the snapshot
through the stats xattr (`magic_xattrs`).
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections.abc import Callable
from typing import Any

# upper bounds (inclusive) of the buckets, in nanoseconds: 50 us .. 5 s; one more for +Inf
BOUNDS_NS: tuple[int, ...] = (
    50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000, 25_000_000, 50_000_000,
    100_000_000, 250_000_000, 500_000_000, 1_000_000_000, 2_500_000_000, 5_000_000_000,
)
ROW = len(BOUNDS_NS) + 2  # per-bucket counts (the last is +Inf), then the sum in ns


class OpTimings:
    """Per operation: counts per bucket (not cumulative) and the total nanoseconds."""

    def __init__(self) -> None:
        self._rows: dict[str, list[int]] = {}
        self._lock = threading.Lock()  # only for adding an operation (at wrapping time)

    def row(self, name: str) -> list[int]:
        with self._lock:
            return self._rows.setdefault(name, [0] * ROW)

    def timed(self, name: str, func: Callable[..., None]) -> Callable[..., None]:
        """`func` with each call's duration counted under `name`."""
        row = self.row(name)
        now, where, bounds, total = time.perf_counter_ns, bisect_left, BOUNDS_NS, ROW - 1

        def timed(*args: Any) -> None:
            start = now()
            try:
                func(*args)
            finally:
                elapsed = now() - start
                row[where(bounds, elapsed)] += 1
                row[total] += elapsed

        return timed

    def record(self, name: str, elapsed_ns: int) -> None:
        """Count one call of `name` that took `elapsed_ns` (tests, other callers)."""
        row = self.row(name)
        row[bisect_left(BOUNDS_NS, elapsed_ns)] += 1
        row[ROW - 1] += elapsed_ns

    def snapshot(self) -> dict[str, list[int]]:
        """Operation -> [count per bucket..., count over the last bound, sum in ns], for
        the operations called at least once."""
        with self._lock:
            rows = list(self._rows.items())
        return {name: list(row) for name, row in rows if any(row[:-1])}
