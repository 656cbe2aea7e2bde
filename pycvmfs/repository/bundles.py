"""File bundle prefetching: opening a bundle trigger fetches the files its spec lists.

A catalog entry flagged `BUNDLE_TRIGGER` has a spec `.cvmfsbundle-<name>` beside it
(`format.bundles`). `BundlePrefetcher.triggered(path)` only queues the trigger and
returns: the open that called it never waits. Worker threads (`pool_size`, started on
first use) read the spec through the same verified object path as every read, then fetch
each listed file's objects into the cache, a chunked file chunk by chunk. One bounded
queue holds triggers and files alike; what does not fit is dropped and counted, never
waited for. Everything is best effort: a missing file, an unusable spec or a failed
download is counted and logged (debug; a spec's first failure once at warning), never
raised. A trigger opened again within `REPEAT_S` is not processed again (an interpreter
opened by every process of a job would otherwise rescan its bundle each time).
`close` drops what is queued and stops the workers (a download in flight finishes).

This is not the read-ahead `repository.reader.Prefetcher`: that one follows one reader
through one file; this one is bounded, counted and sized by `CVMFS_BUNDLE_POOL_SIZE`.
"""

from __future__ import annotations

import logging
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
    objects: int = 0  # objects fetched or found in the cache
    failures: int = 0  # unusable specs, missing files, failed downloads
    dropped: int = 0  # triggers or files not queued: the queue was full


@dataclass(frozen=True, slots=True)
class _Trigger:
    path: str


@dataclass(frozen=True, slots=True)
class _File:
    path: str
    spec: str


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
        self._queue: queue.Queue[_Trigger | _File | None] = queue.Queue(queue_size)
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
        self._put(_Trigger(path))

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

    def _put(self, item: _Trigger | _File) -> bool:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            with self._lock:
                self.counters.dropped += 1
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
        """Read the trigger's spec and queue its files."""
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
            if not self._put(_File(path, spec)):  # full: the rest is dropped with it
                with self._lock:
                    self.counters.dropped += len(paths) - index - 1
                return

    def _fetch(self, item: _File) -> None:
        try:
            entry, pieces = self._resolve(item.path)
            for piece in pieces:
                if self._closed:
                    return
                self._prefetch(piece.hash, piece.suffix,
                               what=f"{item.path} (bundle {item.spec})",
                               compression=entry.compression, expected_size=piece.size)
                with self._lock:
                    self.counters.objects += 1
        except Exception as exc:
            self._fail(item.path, f"bundle file {item.path} (listed in {item.spec}) not "
                       f"prefetched: {exc}")
            return
        with self._lock:
            self.counters.files += 1

    def _fail(self, key: str, message: str, *, warn: bool = False) -> None:
        with self._lock:
            self.counters.failures += 1
            first = warn and key not in self._warned
            if first:
                self._warned[key] = None
                while len(self._warned) > WARNED_SPECS:
                    self._warned.popitem(last=False)
        log.log(logging.WARNING if first else logging.DEBUG, "%s", message)
