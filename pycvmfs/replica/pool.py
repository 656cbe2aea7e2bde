"""A bounded pool of object copies, grouped so a catalog can wait for exactly what it needs.

Each catalog gets a `Batch`: every object it references is either copied by a job of this
batch, or already underway for another batch (then this batch waits for that same job),
or was stored earlier in this run. `Batch.wait()` returns once all of them are stored and
raises the first failure, so a catalog is committed only after every object it names is
in the replica, whichever catalog asked first. At most `workers * QUEUED_PER_WORKER` jobs
wait (the submitting thread blocks), so memory stays bounded for catalogs of any size; the
objects stored in this run are remembered up to `REMEMBERED_OBJECTS` (then forgotten: a
forgotten one is only looked up in the storage again).

Thread-safety: `submit` from one thread (the catalog walk); jobs run on the pool's threads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from pycvmfs.replica.plan import ObjectRef

QUEUED_PER_WORKER = 4
REMEMBERED_OBJECTS = 1 << 18  # about 40 MB of keys
ObjectKey = tuple[bytes, str]


class Batch:
    """The jobs one catalog waits for."""

    def __init__(self) -> None:
        self._pending = 0
        self._failure: BaseException | None = None
        self._done = threading.Condition()

    def track(self, future: Future[bool]) -> None:
        with self._done:
            self._pending += 1
        future.add_done_callback(self._finished)

    def _finished(self, future: Future[bool]) -> None:
        failure = future.exception() if not future.cancelled() else \
            RuntimeError("object copy cancelled")
        with self._done:
            self._pending -= 1
            if failure is not None and self._failure is None:
                self._failure = failure
            self._done.notify_all()

    def wait(self) -> None:
        """Until every tracked job ended; the first failure is raised."""
        with self._done:
            self._done.wait_for(lambda: self._pending == 0)
            if self._failure is not None:
                raise self._failure


class CopyPool:
    """`copy(ref)` on `workers` threads, each object once per run (module docstring)."""

    def __init__(self, copy: Callable[[ObjectRef], bool], workers: int) -> None:
        self._copy = copy
        self._executor = ThreadPoolExecutor(max(1, workers), thread_name_prefix="snapshot")
        self._slots = threading.BoundedSemaphore(max(1, workers) * QUEUED_PER_WORKER)
        self._lock = threading.Lock()
        self._underway: dict[ObjectKey, Future[bool]] = {}
        self._stored: set[ObjectKey] = set()
        self._failure: BaseException | None = None

    def submit(self, batch: Batch, ref: ObjectRef) -> None:
        """Make `batch` wait for `ref` (copying it unless stored or underway); raises the
        first failure of any job, so the walk stops early."""
        key = ref.key
        with self._lock:
            if self._failure is not None:
                raise self._failure
            if key in self._stored:
                return
            future = self._underway.get(key)
        if future is None:
            self._slots.acquire()
            try:
                future = self._executor.submit(self._copy, ref)
            except BaseException:
                self._slots.release()
                raise
            with self._lock:
                self._underway[key] = future
            future.add_done_callback(lambda done: self._finished(key, done))
        batch.track(future)

    def _finished(self, key: ObjectKey, future: Future[bool]) -> None:
        self._slots.release()
        failure = future.exception() if not future.cancelled() else None
        with self._lock:
            self._underway.pop(key, None)
            if failure is not None:
                self._failure = self._failure or failure
            elif not future.cancelled():
                if len(self._stored) >= REMEMBERED_OBJECTS:
                    self._stored.clear()
                self._stored.add(key)

    def close(self) -> None:
        """Stop: queued jobs are cancelled, running ones finish."""
        self._executor.shutdown(wait=True, cancel_futures=True)
