"""File bundle prefetching: opening a bundle trigger fetches the files its spec lists.

A catalog entry flagged `BUNDLE_TRIGGER` has a spec `.cvmfsbundle-<name>` beside it
(`format.bundles`). `BundlePrefetcher.triggered(path)` only queues the trigger and
returns: the open that called it never waits. A worker (`pool_size` threads, started on
first use) expands the trigger: first the trigger's own chunks after the first (the opener
reads the first, and an interpreter or binary needs the rest right after), then, read
through the same verified object path as every read, the spec's files in listed order,
each file's objects (a chunked file chunk by chunk) queued one by one, so that the
workers fetch a big file's chunks side by side and never wait for the expansion to end.
One bounded queue holds triggers and objects alike; what does not fit is dropped and
counted, never waited for. Everything is best effort: a missing file, an unusable spec or
a failed download is counted and logged (debug; a spec's first failure once at warning),
never raised. A trigger opened again within `REPEAT_S` is not processed again (an
interpreter opened by every process of a job would otherwise rescan its bundle each time).
`close` drops what is queued and stops the workers (a download in flight finishes).

This is not the read-ahead `repository.reader.Prefetcher`: that one follows one reader
through one file; this one is bounded, counted and sized by `CVMFS_BUNDLE_POOL_SIZE`.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from pycvmfs.format.bundles import MAX_SPEC_BYTES, BundleSpecError, parse_spec, spec_name
from pycvmfs.format.catalog import DirEntry
from pycvmfs.format.compression import Compression
from pycvmfs.format.hashes import ContentHash, Suffix
from pycvmfs.repository.reader import Piece

log = logging.getLogger(__name__)
DEFAULT_POOL_SIZE = 8  # the reference's kDefaultBundlePoolSize (bundle_mgr.cc)
DEFAULT_QUEUE_SIZE = 4096  # triggers and files waiting; more are dropped
REPEAT_S = 60.0  # a trigger opened again sooner is not processed again
REMEMBERED_TRIGGERS = 1024  # triggers remembered for REPEAT_S (oldest forgotten first)
WARNED_SPECS = 256  # specs whose failure was logged at warning level
STOP_WAIT_S = 5.0  # close waits this long for a worker busy with a download

Resolve = Callable[[str], tuple[DirEntry, list[Piece]]]


def default_pool_size() -> int:
    """The reference's 8 workers, at most one per CPU this process may use: a download's
    inflating, hashing and writing hold the interpreter lock in turns, and workers beyond
    the CPUs only queue for it (a container start with a start set, 2 CPUs, loopback
    server: 0.17 s with 1 or 2 workers, 0.21 s with 4, 0.23 s with 8, as without the set)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(DEFAULT_POOL_SIZE, cpus))


class ObjectPrefetch(Protocol):
    """`ObjectLoader.prefetch`: fetch one object into the cache, verified."""

    def __call__(self, content_hash: ContentHash, suffix: Suffix, *, what: str,
                 compression: Compression, expected_size: int) -> None: ...


@dataclass(slots=True)
class BundleCounters:
    """What the prefetcher did since the mount (read by tests, benchmarks, xattrs)."""

    triggered: int = 0  # triggers processed (spec read and its files queued)
    repeated: int = 0  # triggers skipped: processed less than REPEAT_S ago
    files: int = 0  # listed files whose objects are all in the cache now
    objects: int = 0  # objects fetched or found in the cache (triggers' chunks included)
    failures: int = 0  # unusable specs, missing files, failed downloads (once per file)
    dropped: int = 0  # triggers or files not (wholly) queued: the queue was full


@dataclass(frozen=True, slots=True)
class _Trigger:
    path: str


@dataclass(slots=True)
class _File:
    """A file whose objects are queued: counted once all are in, or failed once."""

    path: str
    spec: str  # "" for a trigger's own chunks (not a listed file)
    compression: Compression
    waiting: int  # its queued objects not fetched yet
    failed: bool = False


@dataclass(frozen=True, slots=True)
class _Object:
    file: _File
    piece: Piece

    @property
    def path(self) -> str:
        return self.file.path


class BundlePrefetcher:
    """Background prefetch of file bundles; see the module docstring."""

    def __init__(self, resolve: Resolve, prefetch: ObjectPrefetch, read: Callable[[str], bytes],
                 *, pool_size: int = DEFAULT_POOL_SIZE,
                 queue_size: int = DEFAULT_QUEUE_SIZE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """`resolve(path)`: entry and pieces of a regular file in the revision served now;
        `read(path)`: a whole file's bytes through the verified path; `prefetch`: the
        object loader's."""
        if pool_size < 1 or queue_size < 1:
            raise ValueError("pool_size and queue_size must be positive")
        self._resolve = resolve
        self._prefetch = prefetch
        self._read = read
        self._pool_size = pool_size
        self._queue: queue.Queue[_Trigger | _Object | None] = queue.Queue(queue_size)
        self._clock = clock
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._recent: OrderedDict[str, float] = OrderedDict()
        self._warned: OrderedDict[str, None] = OrderedDict()
        self.counters = BundleCounters()

    def triggered(self, path: str) -> None:
        """Trigger `path` (a repository path) was opened: queue it and return at once."""
        with self._lock:
            if self._closed:
                return
            now = self._clock()
            seen = self._recent.get(path)
            if seen is not None and now - seen < REPEAT_S:
                self.counters.repeated += 1
                return
            self._recent[path] = now
            self._recent.move_to_end(path)
            while len(self._recent) > REMEMBERED_TRIGGERS:
                self._recent.popitem(last=False)
            self._start_locked()
        if not self._put(_Trigger(path)):
            with self._lock:
                self.counters.dropped += 1

    def close(self) -> None:
        """Drop what is queued and stop the workers (each finishes the object it fetches,
        waited for at most `STOP_WAIT_S` in all)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            threads, self._threads = self._threads, []
        self._drain()
        stops = len(threads)
        while stops:  # one stop per worker; a worker that was queueing files may refill
            try:
                self._queue.put_nowait(None)
                stops -= 1
            except queue.Full:
                stops += self._drain()
        deadline = time.monotonic() + STOP_WAIT_S
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _drain(self) -> int:
        """Empty the queue; how many stops it held."""
        stops = 0
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return stops
            stops += item is None
            self._queue.task_done()

    def idle(self) -> bool:
        """Nothing queued (a worker may still be fetching the last object)."""
        return self._queue.unfinished_tasks == 0

    # --- workers ---------------------------------------------------------------------
    def _start_locked(self) -> None:
        while len(self._threads) < self._pool_size:
            thread = threading.Thread(target=self._work, daemon=True,
                                      name=f"bundle-prefetch-{len(self._threads)}")
            self._threads.append(thread)
            thread.start()

    def _put(self, item: _Trigger | _Object) -> bool:
        """Queue `item`; False if the queue is full (the caller counts the drop)."""
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            log.debug("bundle prefetch queue full, dropped %s", item.path)
            return False
        return True

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None or self._closed:
                    return
                if isinstance(item, _Trigger):
                    self._expand(item.path)
                else:
                    self._fetch(item)
            except Exception as exc:  # never let a worker die: count it and go on
                self._fail(getattr(item, "path", "?"), f"unexpected error: {exc!r}")
            finally:
                self._queue.task_done()

    def _expand(self, trigger: str) -> None:
        """Queue the trigger's chunks after the first, then read its spec and queue the
        listed files' objects."""
        try:
            entry, pieces = self._resolve(trigger)
        except Exception:  # gone since it was opened: its spec's failure will say so
            pass
        else:
            if len(pieces) > 1 and not self._queue_file(trigger, "", entry, pieces[1:]):
                return
        parent, _, name = trigger.rpartition("/")
        spec = f"{parent}/{spec_name(name)}"
        try:
            entry, _ = self._resolve(spec)
            if entry.size > MAX_SPEC_BYTES:
                raise BundleSpecError(f"the spec is {entry.size} bytes, over the "
                                      f"{MAX_SPEC_BYTES}-byte limit")
            paths = parse_spec(self._read(spec), parent)
        except Exception as exc:
            self._fail(spec, f"bundle spec of {trigger} unusable: {exc}", warn=True)
            return
        with self._lock:
            self.counters.triggered += 1
        for index, path in enumerate(paths):
            if self._closed:
                return
            try:
                entry, pieces = self._resolve(path)
            except Exception as exc:
                self._fail(path, self._not_prefetched(path, spec, exc))
                continue
            if not self._queue_file(path, spec, entry, pieces):  # full: drop the rest too
                with self._lock:
                    self.counters.dropped += len(paths) - index - 1
                return

    def _queue_file(self, path: str, spec: str, entry: DirEntry, pieces: list[Piece]) -> bool:
        """Queue `pieces` of `path`; False (the file counted as dropped) if one did not
        fit. A file with no pieces (empty) is in the cache already."""
        file = _File(path, spec, entry.compression, len(pieces))
        if not pieces:
            self._fetched(file)
        for piece in pieces:
            if not self._put(_Object(file, piece)):
                with self._lock:
                    self.counters.dropped += 1
                return False
        return True

    def _fetch(self, item: _Object) -> None:
        file, piece = item.file, item.piece
        if self._closed or file.failed:
            return
        what = f"{file.path} (bundle {file.spec})" if file.spec else f"{file.path} (trigger)"
        try:
            self._prefetch(piece.hash, piece.suffix, what=what, compression=file.compression,
                           expected_size=piece.size)
        except Exception as exc:
            with self._lock:
                first, file.failed = not file.failed, True
            if first:
                self._fail(file.path, self._not_prefetched(file.path, file.spec, exc))
            return
        with self._lock:
            self.counters.objects += 1
            file.waiting -= 1
            done = file.waiting == 0
        if done:
            self._fetched(file)

    def _fetched(self, file: _File) -> None:
        if file.spec:  # a listed file, not a trigger's own chunks
            with self._lock:
                self.counters.files += 1

    @staticmethod
    def _not_prefetched(path: str, spec: str, exc: Exception) -> str:
        if not spec:
            return f"bundle trigger {path}: a chunk not prefetched: {exc}"
        return f"bundle file {path} (listed in {spec}) not prefetched: {exc}"

    def _fail(self, key: str, message: str, *, warn: bool = False) -> None:
        with self._lock:
            self.counters.failures += 1
            first = warn and key not in self._warned
            if first:
                self._warned[key] = None
                while len(self._warned) > WARNED_SPECS:
                    self._warned.popitem(last=False)
        log.log(logging.WARNING if first else logging.DEBUG, "%s", message)
