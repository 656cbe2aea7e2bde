"""Which CPUs the serving threads run on, decided by how parallel the requests are
(`PYCVMFS_CPU_POLICY=adaptive`, the default on the lowlevel backend).

Python runs one thread at a time. When requests come in parallel (8 readers of an image),
the serving threads hand the interpreter lock to each other all the time, and every
hand-over to a thread on another CPU is a cross-CPU wake-up (an inter-processor interrupt;
a VM exit in a virtual machine): with every serving thread kept on one CPU, 8 readers of
an image's 6,651 files took 10.5-11.6 s instead of 18.3 s with an empty cache, and 3.3 s
instead of 4.6 s with a filled one (2 cores). When requests come one at a time (`ls -lR`,
`find`, most of a container start), the threads hardly compete for the lock; what costs
is waking the caller and the serving thread, and a serving thread held on one CPU must
wake a caller on another CPU for every request, where the scheduler would otherwise keep
them together (`ls -lR` of the image took 3.1 s instead of 2.3 s). Work done in C with the
lock released gains from more CPUs as well: the adapter does not count a READ past a
file's start (a 1 GiB read of an empty cache took 8.5 s on one CPU, 4.0 s on two).

So `AdaptiveCpus` counts the requests that arrive while another one is being served
(`enter`/`leave` around each request's Python code; `resume`/`leave` where the blocking
pool goes on with it) from another caller than the last one (FUSE names the thread that
sent each request). One caller's next request can arrive before the callback that
answered its last one has returned, when that thread lost the CPU after its reply (on a
loaded machine, all the time); that is not parallel. Every REVIEW_S: more than PIN_SHARE
of the arrivals crowded, every thread goes to the CPU the reviewing thread runs on;
fewer than UNPIN_SHARE, or fewer than MIN_ARRIVALS requests in all, back to all the CPUs
the process may use (few requests gain nothing from one CPU, and a big read, whose READs
past the start are not counted, gains from all); fewer than MIN_ARRIVALS while not
pinned changes nothing. The counters are plain attributes updated under the GIL without
a lock: a lost update skews one interval's statistic, and `active` is clamped at every
review.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from pycvmfs.fs.limits import allowed_cpus, confine_to_cpus, current_cpu, move_threads

log = logging.getLogger(__name__)

REVIEW_S = 0.5
MIN_ARRIVALS = 50  # requests in an interval before it may bring the threads to one CPU
PIN_SHARE = 0.25  # of the arrivals found another request being served: one CPU
UNPIN_SHARE = 0.05  # at most this share: all the CPUs again


class AdaptiveCpus:
    """See the module docstring. `start` runs the reviews on a thread of its own until
    `stop`; `review` is also callable directly (tests)."""

    __slots__ = ("active", "arrivals", "crowded", "pinned", "_allowed", "_move", "_here",
                 "_last_caller", "_stop", "_thread")

    def __init__(self, allowed: frozenset[int], *,
                 move: Callable[[frozenset[int]], str | None] = move_threads,
                 here: Callable[[frozenset[int]], int] = current_cpu) -> None:
        self.active = 0  # request code running now
        self.arrivals = 0  # requests since the last review
        self.crowded = 0  # ... that found another one running
        self.pinned = False
        self._allowed = allowed
        self._move, self._here = move, here
        self._last_caller = 0  # the thread that sent the last request counted
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def enter(self, caller: int) -> None:
        self.arrivals += 1
        if self.active and caller != self._last_caller:
            self.crowded += 1
        self._last_caller = caller
        self.active += 1

    def resume(self) -> None:
        """A request counted by `enter` goes on in another thread (the blocking pool)."""
        self.active += 1

    def leave(self) -> None:
        self.active -= 1

    def review(self) -> None:
        arrivals, crowded = self.arrivals, self.crowded
        self.arrivals = self.crowded = 0
        self.active = max(0, self.active)
        if len(self._allowed) < 2:
            return
        share = crowded / arrivals if arrivals >= MIN_ARRIVALS else 0.0
        if not self.pinned and share > PIN_SHARE:
            cpus = frozenset({self._here(self._allowed)})
        elif self.pinned and share < UNPIN_SHARE:
            cpus = self._allowed
        else:
            return
        problem = self._move(cpus)
        if problem is not None:
            log.warning("%s; the serving threads stay where they are", problem)
            self._stop.set()  # it will not work better next time
            return
        self.pinned = not self.pinned
        log.debug("%.0f %% of %d requests came while another was served: serving threads "
                  "on CPUs %s", 100 * share, arrivals, ",".join(map(str, sorted(cpus))))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="cpu-policy", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(REVIEW_S):
            self.review()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None


def serving_cpus(listed: frozenset[int] | None, policy: str
                 ) -> tuple[AdaptiveCpus | None, str | None]:
    """Place this process's threads as CVMFS_CPU_AFFINITY (`listed`) and
    PYCVMFS_CPU_POLICY (`policy`) say, before it serves: the `AdaptiveCpus` that moves
    them from then on (no list, `adaptive`, more than one CPU allowed), and a warning
    when the list cannot be applied (`limits.confine_to_cpus`)."""
    problem = confine_to_cpus(listed, single=policy == "one")
    allowed = allowed_cpus()
    adaptive = listed is None and policy == "adaptive" and len(allowed) > 1
    return (AdaptiveCpus(allowed) if adaptive else None), problem
